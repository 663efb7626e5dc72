"""Audio loading and frame features: f0 + periodicity (torchcrepe) and A-weighted loudness.

This module is the only implementation of these ideas; preprocess, transfer, evaluate and train import it.

Frame rule (used by every feature in this project)
--------------------------------------------------
Audio of T samples at 16 kHz has ``F = n_frames(T) = ceil(T / HOP)`` control frames (HOP = 64 samples,
250 frames/s). Frame ``i`` is centred on sample ``i * HOP``. Concretely: the signal is zero-padded at
the end to ``F * HOP`` samples, a centred STFT is taken (``n_fft/2`` zeros on both sides, hop HOP),
which gives ``F + 1`` frames, and the first ``F`` are kept. A synthesiser that renders ``F * HOP``
samples from ``F`` frames therefore covers the whole input.

Loudness (DDSP v2 definition)
-----------------------------
STFT with n_fft 512, hop 64, periodic Hann window, centred (zero padding); power ``|X|^2`` (no
normalisation of the window) multiplied by librosa's A-weighting (`a_weighting_db`) converted to a power gain
(``10 ** (dB / 10)``), mean over the 257 frequency bins, ``10 * log10(max(p, 1e-20))``, reference 0 dB,
floored at -80 dB (``LOUDNESS_RANGE_DB`` below the reference). On this scale a full-scale 1 kHz sine
reads about +19.8 dB, digital silence -80 dB, white noise at -60 dBFS rms -37 dB; halving the
amplitude lowers it by 6.02 dB.

f0 and periodicity
------------------
torchcrepe (``full`` by default, ``tiny`` by flag) on 1024-sample windows centred like the control frames
(torchcrepe.preprocess + torchcrepe.infer), search range 50-2000 Hz, Viterbi decoding, periodicity =
network output at the decoded bin. Five things differ from ``torchcrepe.predict``, deliberately (all
measured with CREPE tiny unless noted, on this 2-core CPU; the behaviours are checked in tests/test_features.py):

* Emission: CREPE's own definition (network output normalised to sum 1 per frame) instead of
  torchcrepe's softmax over the [0, 1] outputs, which is nearly flat (max/min ratio <= e), so the
  transition prior dominates: on a melody with large jumps ``torchcrepe.predict`` stays stuck far below
  the notes, this decoder is off only around the note changes (measurements: README).
* Slew limit scaled with the hop: torchcrepe allows 11 bins (220 cents) per frame; here
  ``viterbi_width(hop)`` keeps that rate per 4 ms (55 semitones/s), i.e. 28 bins at the 10 ms hop, so a
  guitar's instantaneous note change is not turned into a 100 ms glide. Frames off by > 50 cents per
  note change on that melody: 23 ms (4 ms hop) vs 28 ms (10 ms hop), 24 vs 28 ms with ``full``.
* Sub-bin refinement instead of dither: torchcrepe turns the Viterbi bin (20 cents wide) into Hz by
  adding random triangular noise of +-20 cents, which makes features non-reproducible (a resumed
  preprocessing run would not equal an uninterrupted one). Here the pitch is the probability-weighted
  mean of the bins within +-4 of the Viterbi bin (CREPE's "local average"): deterministic and finer.
* CREPE hop: the network runs every ``CREPE_HOP`` = 160 samples (10 ms) and f0 is interpolated linearly
  in log-frequency (periodicity linearly) onto the 250 Hz grid. Measured cost on sines with 6 Hz,
  +-50 cent vibrato (3 s each at 110/220/440 Hz, error against the analytic f0 on the 250 Hz grid):
  tiny: 4 ms hop median 4.51 / 95th pct 14.56 cents, 10 ms hop 4.52 / 14.43; the two tracks differ by
  median 0.64 / 95th pct 3.74 cents. full (220 Hz): 4 ms 6.65 / 11.22, 10 ms 6.86 / 11.48, tracks differ
  by 0.63 / 2.26 cents. That is far below audibility, for 2.5x fewer network evaluations (CREPE full
  runs at ~30 frames/s on 2 CPU cores). Pass ``hop=HOP`` (preprocess ``--crepe_hop 64``) to evaluate
  every control frame.
* Silence skip: CREPE windows that are entirely silent are not evaluated. A window is silent when every
  loudness frame centred within +-512 samples of its centre is below
  ``max(SILENCE_DB, peak_loudness - SILENCE_REL_DB)`` (-70 dB absolute, or 50 dB below the file's
  loudest frame; a -60 dBFS white-noise floor reads -37 dB, so quiet room noise well below the music
  counts as silence). Silent frames get periodicity 0 and a flat probability row for Viterbi (so the
  path simply continues through them); their f0 is then held from the last voiced frame (periodicity
  >= VOICED_THRESHOLD) before them (leading silence takes the first voiced value after it), so the f0
  track stays on the last note through a pause instead of following noise. A file that is silent
  throughout gets f0 = F0_MIN_HZ and periodicity 0. The share of skipped windows, and so the saving,
  grows with the share of pauses (a window needs half a window of margin from the notes; measured
  gains: docs/experiments.md).
"""
from __future__ import annotations

import math
import os
from typing import Union

import numpy as np
import torch

from utils import UserError

SAMPLE_RATE = 16000
HOP = 64
FRAME_RATE = SAMPLE_RATE // HOP  # 250
LOUDNESS_N_FFT = 512
LOUDNESS_RANGE_DB = 80.0
F0_MIN_HZ = 50.0
F0_MAX_HZ = 2000.0
FEATURE_VERSION = 1

CREPE_HOP = 160  # samples between CREPE evaluations (10 ms); see module docstring for the cost
CREPE_WINDOW = 1024  # torchcrepe.WINDOW_SIZE
CREPE_BATCH_SIZE = 256  # CREPE frames per forward pass
SILENCE_DB = -70.0  # absolute loudness (dB) below which a frame is silent
SILENCE_REL_DB = 50.0  # ... or this far below the file's loudest frame
VOICED_THRESHOLD = 0.5  # periodicity at or above which a frame counts as voiced (plots, f0 hold)

# The audio files every script reads (soundfile/libsndfile; mp3 needs libsndfile >= 1.1, which the pinned
# soundfile wheel bundles). One list: preprocess and evaluate search folders for it, transfer accepts it.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MIN_SECONDS = 0.25  # shortest input the product accepts (CREPE needs a few 64 ms windows)
SEGMENT_FRAMES = 15000  # extract_features_bounded: frames of pitch analysis per segment (60 s; memory bound)

ArrayLike = Union[np.ndarray, torch.Tensor]


def n_frames(n_samples: int) -> int:
    """Number of control frames for `n_samples` samples: ceil(n_samples / HOP); frame i is centred on
    sample i * HOP."""
    return -(-int(n_samples) // HOP)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file soundfile can read (any rate, channel count, bit depth), mix to mono, resample.

    Returns float32 ``[T]`` at `sample_rate` (soxr, HQ). Raises UserError with one line naming the file
    when it does not exist, is a folder, cannot be decoded, has no samples or contains NaN/Inf. A WAV
    file shorter than its header says (cut off while copying or recording) is read as far as it goes,
    with a one-line warning on stderr.
    """
    import soundfile as sf
    import soxr

    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, not an audio file; pass the files in it "
                        f"(e.g. {os.path.join(path, '*.wav')})")
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError for junk input
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{path}: not a readable audio file ({msg})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: not a readable audio file (it has no samples)")
    if not np.isfinite(data).all():
        raise UserError(f"{path}: not a readable audio file (contains NaN or Inf samples)")
    declared = wav_header_frames(path)
    if declared is not None and declared > data.shape[0]:
        _warn(f"{path}: shorter than its header says ({data.shape[0] / sr:.2f} s of {declared / sr:.2f} s); "
              f"the file looks cut off, only the part that is there is used")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def wav_header_frames(path: str | os.PathLike) -> int | None:
    """Frames a RIFF WAV file's header declares (its `data` chunk size / block align), read from the
    header itself (libsndfile silently clamps it to what the file holds). None for other formats, for
    an unknown length (size 0 or 0xFFFFFFFF, as streaming writers leave it) or an unreadable header."""
    import struct

    try:
        with open(path, "rb") as f:
            if f.read(12)[:4] != b"RIFF":
                return None
            block_align = None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                cid, size = head[:4], struct.unpack("<I", head[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
                elif cid == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


def _warn(message: str) -> None:
    """One line `warning: ...` on stderr (through tqdm, so a progress bar is not broken)."""
    import sys

    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def check_audio(audio: np.ndarray, name: str, loudness_db: np.ndarray | None = None) -> np.ndarray:
    """UserError (naming `name`) for audio [T] (16 kHz) shorter than MIN_SECONDS or silent (no frame at or
    above SILENCE_DB); returns its loudness [F] dB (`compute_loudness`, or `loudness_db` if given)."""
    seconds = audio.size / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise UserError(f"{name}: too short ({seconds:.2f} s); give at least {MIN_SECONDS} s of humming or singing")
    loud = compute_loudness(audio) if loudness_db is None else loudness_db
    if float(np.max(loud)) < SILENCE_DB:
        raise UserError(f"{name}: silent (loudest frame {float(np.max(loud)):.0f} dB, below {SILENCE_DB:g} dB); "
                        f"record closer to the microphone or check the file")
    return loud


# --------------------------------------------------------------------------------------------------
# Loudness
# --------------------------------------------------------------------------------------------------

_A_WEIGHT_CACHE: dict = {}


def a_weighting_db(freqs_hz: np.ndarray, min_db: float = -80.0) -> np.ndarray:
    """A-weighting in dB of frequencies [n] Hz (IEC 61672-1 poles, normalised to 0 dB at 1 kHz), floored
    at `min_db`: the formula and floor of librosa.A_weighting, written out so that loading audio features
    does not import librosa (its numba costs live.py ~120 MB of memory); tests compare the two."""
    f_sq = np.asarray(freqs_hz, np.float64) ** 2
    c = np.array([12194.217, 20.598997, 107.65265, 737.86223]) ** 2
    with np.errstate(divide="ignore"):   # 0 Hz: -inf before the floor
        db = 2.0 + 20.0 * (np.log10(c[0]) + 2 * np.log10(f_sq) - np.log10(f_sq + c[0]) - np.log10(f_sq + c[1])
                           - 0.5 * np.log10(f_sq + c[2]) - 0.5 * np.log10(f_sq + c[3]))
    return np.maximum(min_db, db)


def _a_weighting_power(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The A-weighting of the rfft bins of LOUDNESS_N_FFT at 16 kHz as a power gain, [n_fft//2+1]."""
    key = (str(device), dtype)
    if key not in _A_WEIGHT_CACHE:
        gain = 10.0 ** (a_weighting_db(np.fft.rfftfreq(LOUDNESS_N_FFT, 1.0 / SAMPLE_RATE)) / 10.0)
        _A_WEIGHT_CACHE[key] = torch.as_tensor(gain, dtype=dtype, device=device)
    return _A_WEIGHT_CACHE[key]


def compute_loudness(audio: ArrayLike, chunk_frames: int = 8192) -> ArrayLike:
    """A-weighted loudness in dB (DDSP v2 definition, see module docstring), one value per control frame.

    audio: numpy array or torch tensor ``[..., T]`` at 16 kHz, any device. Returns the same type
    ``[..., F]`` (F = ceil(T / 64)), float32, on the input's device; values in [-80, ~+20] dB.
    Long inputs are processed in chunks of `chunk_frames` frames (same result, bounded memory).
    """
    is_numpy = not isinstance(audio, torch.Tensor)
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)) if is_numpy else audio
    if not x.is_floating_point() or x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        x = x.float()
    lead, T = x.shape[:-1], x.shape[-1]
    F = n_frames(T)
    x = x.reshape(math.prod(lead), T)
    half = LOUDNESS_N_FFT // 2
    # zero-pad to F*HOP, then n_fft/2 on both sides: frame i covers padded[i*HOP : i*HOP + n_fft]
    x = torch.nn.functional.pad(x, (half, F * HOP - T + half))
    window = torch.hann_window(LOUDNESS_N_FFT, periodic=True, dtype=x.dtype, device=x.device)
    weight = _a_weighting_power(x.device, x.dtype)
    floor_db = -LOUDNESS_RANGE_DB
    out = []
    for a in range(0, F, chunk_frames):
        b = min(F, a + chunk_frames)
        seg = x[:, a * HOP: (b - 1) * HOP + LOUDNESS_N_FFT]
        spec = torch.stft(seg, LOUDNESS_N_FFT, hop_length=HOP, window=window, center=False,
                          return_complex=True)  # [B, n_fft/2+1, b-a]
        power = spec.real.square() + spec.imag.square()
        power = (power * weight[:, None]).mean(dim=-2)
        db = 10.0 * torch.log10(torch.clamp(power, min=1e-20))
        out.append(torch.clamp(db, min=floor_db))
    loud = torch.cat(out, dim=-1) if out else x.new_zeros(x.shape[0], 0)
    loud = loud.reshape(*lead, F).float()
    return loud.cpu().numpy() if is_numpy else loud


# --------------------------------------------------------------------------------------------------
# f0 (torchcrepe)
# --------------------------------------------------------------------------------------------------

_PITCH_BINS = 360
_CENTS_PER_BIN = 20.0
_CENTS_OFFSET = 1997.3794084376191  # torchcrepe: cents of bin 0 (relative to 10 Hz)
_VITERBI_WIDTH = 11  # torchcrepe's transition matrix: weight max(12 - |i - j|, 0)


def _bins_to_hz(bins: np.ndarray) -> np.ndarray:
    return 10.0 * 2.0 ** ((_CENTS_PER_BIN * bins + _CENTS_OFFSET) / 1200.0)


def _hz_to_bin(hz: float) -> float:
    return (1200.0 * math.log2(hz / 10.0) - _CENTS_OFFSET) / _CENTS_PER_BIN


def _allowed_bins() -> tuple[int, int]:
    """[lo, hi) bins inside F0_MIN_HZ..F0_MAX_HZ, as torchcrepe.postprocess computes them."""
    return int(math.floor(_hz_to_bin(F0_MIN_HZ))), int(math.ceil(_hz_to_bin(F0_MAX_HZ)))


def viterbi_width(hop: int) -> int:
    """Largest pitch step (bins of 20 cents) the HMM allows between CREPE frames `hop` samples apart:
    torchcrepe's 11 bins scaled so the slew limit is the same in time (11 bins per 4 ms = 55 semitones/s)."""
    return max(1, int(round(_VITERBI_WIDTH * hop / HOP)))


def _viterbi(log_emission: np.ndarray, first_bin: int = 0, width: int = _VITERBI_WIDTH) -> np.ndarray:
    """Most likely bin path under a CREPE-style HMM.

    log_emission: [N, S] log probabilities of bins first_bin .. first_bin+S-1 (rows may be flat; bins
    outside have probability 0). The transition from bin i to j has weight max(width + 1 - |i - j|, 0)
    (torchcrepe's matrix for width 11), each row normalised over all 360 bins (normalising over the S
    allowed bins only would favour the edge bins), uniform start. Banded: O(N * S * (2 * width + 1)).
    Returns int64 [N] (0 .. S-1).
    """
    N, S = log_emission.shape
    w = int(width)
    offsets = np.arange(-w, w + 1)
    log_w = np.log(w + 1.0 - np.abs(offsets))  # [2w+1]
    ii, jj = np.arange(S) + first_bin, np.arange(_PITCH_BINS)
    log_row = np.log(np.maximum(w + 1.0 - np.abs(ii[:, None] - jj[None, :]), 0.0).sum(axis=1))
    back = np.empty((N, S), dtype=np.int16)
    delta = log_emission[0].astype(np.float64)
    idx = np.arange(S)[:, None] + offsets[None, :]  # source bin for (dest j, offset)
    valid = (idx >= 0) & (idx < S)
    idx_c = np.clip(idx, 0, S - 1)
    trans = np.where(valid, log_w[None, :] - log_row[idx_c], -np.inf)  # [S, 2w+1]: log tr[src -> j]
    rows = np.arange(S)
    for t in range(1, N):
        cand = delta[idx_c] + trans  # [S, 2w+1]
        k = cand.argmax(axis=1)
        back[t] = idx_c[rows, k]
        delta = cand[rows, k] + log_emission[t]
    path = np.empty(N, dtype=np.int64)
    path[-1] = int(delta.argmax())
    for t in range(N - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def _local_average_cents(probs: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Probability-weighted mean of bin cents within +-4 bins of `path` (deterministic sub-bin pitch).

    probs: [N, 360] network outputs (sigmoid), path: [N] -> cents relative to 10 Hz [N]."""
    N = probs.shape[0]
    offs = np.arange(-4, 5)
    b = np.clip(path[:, None] + offs[None, :], 0, _PITCH_BINS - 1)
    p = probs[np.arange(N)[:, None], b]
    cents = _CENTS_PER_BIN * b + _CENTS_OFFSET
    s = p.sum(axis=1)
    ok = s > 0
    out = _CENTS_PER_BIN * path.astype(np.float64) + _CENTS_OFFSET
    out[ok] = (p[ok] * cents[ok]).sum(axis=1) / s[ok]
    return out


def _resolve_device(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def silent_crepe_frames(loudness_db: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Which CREPE windows (centred on sample `centers` [N]) are silent, from 250 Hz loudness [F].

    Silent = every loudness frame centred within +-CREPE_WINDOW/2 samples is below
    max(SILENCE_DB, max(loudness) - SILENCE_REL_DB). Returns bool [N].
    """
    from scipy.ndimage import maximum_filter1d

    loud = np.asarray(loudness_db, dtype=np.float32)
    if loud.size == 0:
        return np.ones(len(centers), dtype=bool)
    thresh = max(SILENCE_DB, float(loud.max()) - SILENCE_REL_DB)
    half = CREPE_WINDOW // 2 // HOP  # 8 frames each side
    mx = maximum_filter1d(loud, size=2 * half + 1, mode="nearest")
    lo = np.clip(np.floor(centers / HOP).astype(np.int64), 0, len(loud) - 1)
    hi = np.clip(np.ceil(centers / HOP).astype(np.int64), 0, len(loud) - 1)
    return np.maximum(mx[lo], mx[hi]) < thresh


def _crepe_probabilities(x: torch.Tensor, n_crepe: int, hop: int, active: np.ndarray, model: str,
                         device: torch.device, batch_size: int) -> np.ndarray:
    """CREPE network outputs (sigmoid, [n_crepe, 360] float32) of the windows centred on samples j*hop,
    evaluated only for the window indices in `active` (the other rows stay 0). x: mono [T] CPU tensor."""
    import torchcrepe

    probs = np.zeros((n_crepe, _PITCH_BINS), dtype=np.float32)
    if not active.size:
        return probs
    # torchcrepe.preprocess centres frame j on sample j*hop (pads WINDOW/2 zeros each side) and
    # normalises each frame; pad the end so it yields at least n_crepe frames.
    need = (n_crepe - 1) * hop + 1
    xin = torch.nn.functional.pad(x, (0, max(0, need - x.shape[0])))[None]
    done = 0
    for frames in torchcrepe.preprocess(xin, SAMPLE_RATE, hop, batch_size, "cpu", True):
        start, stop = done, min(done + frames.shape[0], n_crepe)
        done += frames.shape[0]
        sel = active[(active >= start) & (active < stop)]
        if sel.size:
            out = torchcrepe.infer(frames[sel - start].to(device), model, device)
            probs[sel] = out.float().cpu().numpy()
        if done >= n_crepe:
            break
    return probs


def _decode_pitch(probs: np.ndarray, silent: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """CREPE outputs [N, 360] -> (pitch in cents re 10 Hz [N], periodicity [N]), both float64.

    Viterbi over the bins inside F0_MIN_HZ..F0_MAX_HZ; emission = network output normalised to sum 1
    (CREPE's definition; see module docstring for why not torchcrepe's softmax), flat for `silent` frames
    (bool [N]), whose periodicity is 0. Pitch: `_local_average_cents` around the path.
    """
    lo_bin, hi_bin = _allowed_bins()
    sal = np.maximum(probs[:, lo_bin:hi_bin].astype(np.float64), 1e-12)
    log_em = np.log(sal) - np.log(sal.sum(axis=1, keepdims=True))
    log_em[silent] = -math.log(hi_bin - lo_bin)
    path = _viterbi(log_em, lo_bin, viterbi_width(hop)) + lo_bin
    masked = probs.copy()
    masked[:, :lo_bin] = 0.0
    masked[:, hi_bin:] = 0.0
    cents = _local_average_cents(masked, path)
    period = probs[np.arange(probs.shape[0]), path].astype(np.float64)
    period[silent] = 0.0
    return cents, period


def _hold_through_silence(cents: np.ndarray, period: np.ndarray, silent: np.ndarray) -> None:
    """In place on CREPE-grid pitch `cents` [N]: silent frames take the pitch of the last voiced frame
    (periodicity `period` >= VOICED_THRESHOLD) before them, else the first one after them; without any
    voiced frame, the nearest non-silent one; all silent: F0_MIN_HZ."""
    if silent.all():
        cents[:] = 1200.0 * math.log2(F0_MIN_HZ / 10.0)
    elif silent.any():
        anchor = ~silent & (period >= VOICED_THRESHOLD)
        if not anchor.any():
            anchor = ~silent
        idx = np.maximum.accumulate(np.where(anchor, np.arange(cents.size), -1))
        idx[idx < 0] = np.flatnonzero(anchor)[0]
        cents[silent] = cents[idx[silent]]


@torch.inference_mode()
def compute_f0(audio: ArrayLike, model: str = "full", device="cpu", batch_size: int = CREPE_BATCH_SIZE,
               *, hop: int = CREPE_HOP, loudness_db: ArrayLike | None = None,
               skip_silence: bool = True, return_stats: bool = False):
    """f0 and periodicity on the 250 Hz control grid with torchcrepe (see module docstring).

    audio: mono ``[T]`` at 16 kHz (numpy or torch). model: "full" or "tiny". device: "cpu", "cuda",
    "auto" or a torch.device. batch_size: CREPE frames per forward pass. hop: samples between CREPE
    evaluations (64 = every control frame, 160 = 10 ms default). loudness_db: precomputed
    compute_loudness(audio) ``[F]`` (saves recomputing it). skip_silence: do not run CREPE on silent
    windows.
    Returns ``(f0_hz, periodicity)``: np.float32 ``[F]`` each, F = ceil(T / 64); f0 in Hz within
    50-2000, periodicity in [0, 1] (network confidence at the decoded bin; 0 in skipped silence).
    With return_stats=True a third item, dict(crepe_frames, evaluated_frames), is returned.
    """
    if model not in ("full", "tiny"):
        raise ValueError(f"model must be 'full' or 'tiny', got {model!r}")
    if hop <= 0:
        raise ValueError("hop must be positive")
    x = audio.detach().float().cpu() if isinstance(audio, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(audio, dtype=np.float32))
    x = x.reshape(-1)
    T = x.shape[0]
    F = n_frames(T)
    dev = _resolve_device(device)
    if F == 0:
        empty = np.zeros(0, dtype=np.float32)
        return (empty, empty.copy(), {"crepe_frames": 0, "evaluated_frames": 0}) if return_stats \
            else (empty, empty.copy())

    # CREPE grid: frame j centred on sample j*hop; enough frames to cover the last control frame.
    n_crepe = (F - 1) * HOP // hop + (1 if ((F - 1) * HOP) % hop == 0 else 2)
    centers = np.arange(n_crepe, dtype=np.int64) * hop
    if loudness_db is None:
        loudness_db = compute_loudness(x.numpy())
    loud = loudness_db.detach().cpu().numpy() if isinstance(loudness_db, torch.Tensor) else np.asarray(
        loudness_db)
    silent = silent_crepe_frames(loud, centers) if skip_silence else np.zeros(n_crepe, dtype=bool)

    active = np.flatnonzero(~silent)
    probs = _crepe_probabilities(x, n_crepe, hop, active, model, dev, batch_size)
    cents, period = _decode_pitch(probs, silent, hop)
    _hold_through_silence(cents, period, silent)

    # Interpolate onto the control grid (log-frequency for f0).
    grid = np.arange(F, dtype=np.float64) * HOP
    if hop == HOP:
        cents_f, period_f = cents[:F], period[:F]
    else:
        cents_f = np.interp(grid, centers, cents)
        period_f = np.interp(grid, centers, period)
    f0 = 10.0 * 2.0 ** (cents_f / 1200.0)
    f0 = np.clip(f0, F0_MIN_HZ, F0_MAX_HZ).astype(np.float32)
    period_f = np.clip(period_f, 0.0, 1.0).astype(np.float32)
    if return_stats:
        return f0, period_f, {"crepe_frames": int(n_crepe), "evaluated_frames": int(active.size)}
    return f0, period_f


def extract_features(audio: ArrayLike, model: str = "full", device="cpu",
                     batch_size: int = CREPE_BATCH_SIZE, *, hop: int = CREPE_HOP,
                     loudness_db: ArrayLike | None = None) -> dict:
    """All frame features of mono 16 kHz audio ``[T]``.

    Returns dict(f0_hz, periodicity, loudness_db): float32 CPU torch tensors ``[F]``, F = ceil(T / 64).
    """
    if loudness_db is None:
        x = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        loudness_db = compute_loudness(np.asarray(x, dtype=np.float32).reshape(-1))
    loud = loudness_db.detach().cpu().numpy() if isinstance(loudness_db, torch.Tensor) else np.asarray(
        loudness_db, dtype=np.float32)
    f0, period = compute_f0(audio, model, device, batch_size, hop=hop, loudness_db=loud)
    return {
        "f0_hz": torch.from_numpy(f0),
        "periodicity": torch.from_numpy(period),
        "loudness_db": torch.from_numpy(np.ascontiguousarray(loud, dtype=np.float32)),
    }


def extract_features_bounded(audio: np.ndarray, crepe: str = "tiny", device="cpu",
                             segment_frames: int = SEGMENT_FRAMES, context_frames: int = 500,
                             progress: bool | None = None, loudness_db: np.ndarray | None = None) -> dict:
    """extract_features on long audio in overlapping segments (memory O(segment)).

    Loudness is computed once for the whole file (compute_loudness is already chunked).
    f0/periodicity: each segment of `segment_frames` control frames is analysed with `context_frames`
    extra frames on both sides and only its core is kept. Boundaries sit on multiples of 5 frames
    (320 samples = 2 CREPE hops), so every CREPE window is the one a whole-file run would see; the
    only differences from one whole-file call are Viterbi decisions within the context of a seam and
    the relative silence threshold, which is taken per segment. Audio of at most
    segment_frames + 2*context_frames frames is passed through in one call.

    loudness_db: compute_loudness(audio) [F] if already computed.
    Returns dict(f0_hz, periodicity, loudness_db): float32 CPU tensors [F].
    """
    from tqdm import tqdm

    audio = np.ascontiguousarray(audio, np.float32).reshape(-1)
    F = n_frames(audio.size)
    loud = compute_loudness(audio) if loudness_db is None else np.asarray(loudness_db, np.float32)
    align = 5
    segment_frames = max(align, segment_frames // align * align)
    context_frames = context_frames // align * align
    if F <= segment_frames + 2 * context_frames:
        return extract_features(audio, crepe, device, loudness_db=loud)
    f0 = np.empty(F, np.float32)
    per = np.empty(F, np.float32)
    starts = range(0, F, segment_frames)
    bar = tqdm(starts, desc=f"pitch (CREPE {crepe})", unit="seg", leave=False,
               disable=None if progress is None else not progress)
    for a in bar:
        b = min(F, a + segment_frames)
        lo, hi = max(0, a - context_frames), min(F, b + context_frames)
        seg = audio[lo * HOP: hi * HOP]
        f, p = compute_f0(seg, crepe, device, loudness_db=loud[lo: lo + n_frames(seg.size)])
        f0[a:b], per[a:b] = f[a - lo: b - lo], p[a - lo: b - lo]
    return {"f0_hz": torch.from_numpy(f0), "periodicity": torch.from_numpy(per),
            "loudness_db": torch.from_numpy(np.ascontiguousarray(loud, np.float32))}


# --------------------------------------------------------------------------------------------------
# Pitch helpers
# --------------------------------------------------------------------------------------------------

_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def hz_to_midi(hz: ArrayLike) -> ArrayLike:
    """Frequency in Hz -> MIDI note number (A4 = 440 Hz = 69), float; works on numpy or torch."""
    if isinstance(hz, torch.Tensor):
        return 69.0 + 12.0 * torch.log2(hz / 440.0)
    return 69.0 + 12.0 * np.log2(np.asarray(hz, dtype=np.float64) / 440.0)


def midi_to_hz(midi: ArrayLike) -> ArrayLike:
    """MIDI note number -> frequency in Hz (the inverse of `hz_to_midi`); numpy, torch or a float."""
    if isinstance(midi, torch.Tensor):
        return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def midi_to_note_name(midi: float, cents: bool = True) -> str:
    """MIDI number -> nearest note name with octave, and the cents offset unless `cents` is False:
    69.2 -> 'A4+20c', 40 -> 'E2' (low E string), 60 -> 'C4'."""
    m = float(midi)
    n = int(round(m))
    off = int(round((m - n) * 100))
    name = f"{_NOTE_NAMES[n % 12]}{n // 12 - 1}"
    return name if off == 0 or not cents else f"{name}{off:+d}c"


# --------------------------------------------------------------------------------------------------
# Live (causal) pitch: one definition for streaming.py and its measurements
# --------------------------------------------------------------------------------------------------

LIVE_PITCH_LOOKAHEAD = 256   # samples: how far past a frame's centre a live tracker's window may reach


class CrepeLivePitch:
    """Causal CREPE for live input: one evaluation per window that ENDS `lookahead` samples after the
    frame's centre (the window's own centre lags the frame by CREPE_WINDOW/2 - lookahead samples).

    Decoding is per window (no Viterbi, which would need the future): the most probable bin inside
    F0_MIN_HZ..F0_MAX_HZ refined by `_local_average_cents`; periodicity = the network's output there.
    Frames are normalised like torchcrepe.preprocess (zero mean, unit std).
    """

    window = CREPE_WINDOW

    def __init__(self, model: str = "tiny", lookahead: int = LIVE_PITCH_LOOKAHEAD, device="cpu"):
        self.model, self.lookahead, self.device = model, int(lookahead), _resolve_device(device)
        self.name = f"crepe-{model}"

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """windows: [n, CREPE_WINDOW] float32 at 16 kHz -> (f0_hz [n], periodicity [n]) float32 numpy."""
        import torchcrepe

        x = windows.float().to(self.device)
        x = x - x.mean(dim=1, keepdim=True)
        x = x / x.std(dim=1, keepdim=True).clamp_min(1e-10)
        if getattr(torchcrepe.infer, "capacity", None) != self.model:
            torchcrepe.infer(x[:1], self.model, self.device)   # loads the weights once
        probs = torchcrepe.infer.model(x).float().cpu().numpy()  # [n, 360]
        lo, hi = _allowed_bins()
        masked = np.zeros_like(probs)
        masked[:, lo:hi] = probs[:, lo:hi]
        path = masked.argmax(axis=1)
        f0 = 10.0 * 2.0 ** (_local_average_cents(masked, path) / 1200.0)
        period = probs[np.arange(probs.shape[0]), path]
        return np.clip(f0, F0_MIN_HZ, F0_MAX_HZ).astype(np.float32), np.clip(period, 0, 1).astype(np.float32)


def period_nccf(windows: np.ndarray, f0_hz: np.ndarray) -> np.ndarray:
    """Periodicity of each window at its f0: the largest normalised cross-correlation <a, b> / (|a| |b|) of the
    window with itself shifted by one period (round(SAMPLE_RATE / f0) samples, +-1), clipped to 0..1.
    windows: [n, W] (W > SAMPLE_RATE / F0_MIN_HZ + 1), f0_hz: [n] Hz -> [n]. ~1 for a steady tone, ~0 for noise."""
    out = np.zeros(len(windows))
    for k, (x, f) in enumerate(zip(windows, f0_hz)):
        x = x - x.mean()
        best = 0.0
        for lag in range(int(round(SAMPLE_RATE / f)) - 1, int(round(SAMPLE_RATE / f)) + 2):
            a, b = x[:-lag], x[lag:]
            den = math.sqrt(float(a @ a) * float(b @ b))
            best = max(best, float(a @ b) / den if den > 0 else 0.0)
        out[k] = best
    return np.clip(out, 0.0, 1.0)


class PestoLivePitch:
    """Causal PESTO (pesto-pitch, model `mir-1k_g7`): one CQT frame per evaluation, its 4096-sample kernels
    centred CQT_HALF - lookahead samples before the window's end, the unknown future half zero-filled
    beyond the window's end (PESTO's own streaming mode pads the same way); f0 = its argmax-weighted-average
    reduction. Periodicity = `period_nccf` of the window's last CREPE_WINDOW samples at that f0: PESTO's own
    confidence stayed at 0.1-0.4 through sustained sung notes (it rises at onsets only), useless for gating."""

    def __init__(self, lookahead: int = LIVE_PITCH_LOOKAHEAD, device="cpu"):
        import pesto

        self.model = pesto.load_model("mir-1k_g7", step_size=1000.0 * HOP / SAMPLE_RATE,
                                      sampling_rate=SAMPLE_RATE).to(_resolve_device(device))
        conv = self.model.preprocessor.hcqt_kernels.cqt_kernels[0].conv
        conv.padding, conv._reversed_padding_repeated_twice = (0,), [0, 0]   # one frame per window
        self.kernel = conv.kernel_size[0]                                      # 4096
        self.lookahead, self.device, self.name = int(lookahead), _resolve_device(device), "pesto"
        self.window = self.kernel // 2 + self.lookahead

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """windows: [n, kernel/2 + lookahead] -> (f0_hz [n], periodicity [n]) float32 numpy."""
        x = torch.nn.functional.pad(windows.float().to(self.device), (0, self.kernel - windows.shape[1]))
        f0, conf, _, _ = self.model(x, sr=SAMPLE_RATE, convert_to_freq=True, return_activations=True)
        f0 = np.clip(f0.reshape(-1).cpu().numpy(), F0_MIN_HZ, F0_MAX_HZ)
        return f0.astype(np.float32), period_nccf(windows[:, -CREPE_WINDOW:].double().numpy(), f0).astype(np.float32)


class FcpeLivePitch:
    """Causal FCPE (torchfcpe, bundled model): the network over a window of `context` mel frames (hop 160,
    window 1024) whose last frame ends exactly at the window's end, so the frame used is centred 512 samples
    before it (lookahead past the frame's centre, like CrepeLivePitch). Periodicity = the network's largest
    bin output; f0 = its local-argmax decoder without a voicing threshold."""

    def __init__(self, lookahead: int = LIVE_PITCH_LOOKAHEAD, device="cpu", context: int = 8):
        from torchfcpe import spawn_bundled_infer_model

        self.device = _resolve_device(device)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):   # torchfcpe prints [INFO]/[WARN] lines on loading
            self.infer = spawn_bundled_infer_model(str(self.device))
        mel = self.infer.get_mel_config()
        self.hop, self.n_fft = int(mel["hop_size"]), int(mel["win_size"])
        pad_left = (self.n_fft - self.hop) // 2
        self.window = (context - 1) * self.hop + self.n_fft - pad_left  # frame context-1 ends at the window's end
        self.lookahead, self.name = int(lookahead), "fcpe"

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = windows.float().to(self.device)[..., None]
        mel = self.infer.wav2mel(x, SAMPLE_RATE)
        latent = self.infer.model.forward(mel)[:, -1:]          # [n, 1, 360]: the last (complete) frame
        cents = self.infer.model.latent2cents_local_decoder(latent, threshold=0.0)
        f0 = self.infer.model.cent_to_f0(cents).reshape(-1).cpu().numpy()
        period = latent.amax(-1).reshape(-1).cpu().numpy()
        return np.clip(f0, F0_MIN_HZ, F0_MAX_HZ).astype(np.float32), np.clip(period, 0, 1).astype(np.float32)


LIVE_PITCH_TRACKERS = {"crepe-tiny": lambda **kw: CrepeLivePitch("tiny", **kw),
                       "crepe-full": lambda **kw: CrepeLivePitch("full", **kw),
                       "pesto": PestoLivePitch, "fcpe": FcpeLivePitch}
DEFAULT_LIVE_PITCH = "pesto"   # chosen on sung pairs: README "Play it live" (RPA, octave errors, CPU cost)


def live_pitch_tracker(name: str = DEFAULT_LIVE_PITCH, lookahead: int = LIVE_PITCH_LOOKAHEAD, device="cpu"):
    """The live (causal) pitch tracker `name` (one of LIVE_PITCH_TRACKERS): an object with `window`
    (input samples it reads per evaluation), `lookahead` (samples past the frame centre its window ends)
    and `__call__(windows [n, window] float32 tensor) -> (f0_hz [n], periodicity [n])` numpy float32.
    Window k for frame i is input[i*HOP + lookahead - window : i*HOP + lookahead]."""
    if name not in LIVE_PITCH_TRACKERS:
        raise UserError(f"unknown live pitch tracker {name!r}: use one of {', '.join(LIVE_PITCH_TRACKERS)}")
    return LIVE_PITCH_TRACKERS[name](lookahead=lookahead, device=device)
