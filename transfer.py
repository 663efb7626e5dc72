"""Turn humming or singing into electric guitar.

    python transfer.py voice.wav -o outputs/voice_guitar.wav
    python transfer.py takes/*.wav -o outputs/              # -> outputs/<stem>_guitar.wav each
    python transfer.py voice.wav -o out.wav --checkpoint checkpoints/latest.pth --plot

Pipeline, per input:
 1. features.load_audio (any format soundfile reads, mono, 16 kHz), then features.extract_features
    (CREPE `tiny` by default here, for speed; `--crepe full` is more accurate and ~10x slower).
    Inputs longer than --segment_seconds are analysed in overlapping segments (see
    `extract_features_bounded`), so memory stays bounded whatever the length.
 2. Auto-adjust (DDSP timbre-transfer style), from the statistics in the checkpoint's config:
    * note frames: CREPE periodicity (median-smoothed over 7 frames) >= --note_threshold and loudness
      >= a floor (--floor_db, default: 40 dB below the file's 99th-percentile loudness, never below
      -70 dB); gaps shorter than 20 ms are closed, notes shorter than 48 ms are dropped;
    * pitch: shifted by whole octaves toward the training set's mean pitch,
      octave = round((mean_midi_train - mean_midi_input) / 12) over note frames (--octave auto), or
      --octave N; plus --semitones;
    * loudness of note frames: quantile matching, the input's note-frame quantiles (0..100 %) mapped
      piecewise-linearly onto the training set's `loudness_quantiles` (mean/std matching when the
      checkpoint has none). Design note: pure quantile matching stretches a steady hum (a loudness
      range of ~1 dB) over the training set's ~50 dB, turning vibrato into tremolo; so the map's slope
      is capped at --max_expand (2 dB per dB, rebuilt around the median, which still lands on the
      training median). --max_expand 0 gives pure quantile matching;
    * non-note frames (breath, room noise, silence) are pushed 30 dB (--quiet_db) below the training
      set's softest note loudness (floored at -80 dB), with 20 ms ramps at note edges, so they render
      as silence rather than guitar noise;
    * pitch (--pitch note, the default): after the shift, each note is held at its own pitch (the median
      of its frames, notes.hold_note_pitch), as a fretted string holds it; --pitch voice keeps the
      singer's vibrato, scoops and drift;
    * envelope (--envelope pluck, the default): each note (a run of note frames, split where the
      pitch moves to a new semitone and stays there 32 ms) becomes a plucked note (notes.pluck_envelope):
      a note after a rest starts where the sung loudness rose to within 20 dB of its onset level (at
      most 100 ms before the periodicity-based start, which is late on a slow sung attack); its onset
      level (its maximum over its first 52 ms) is offset, one offset per file, so that the file's median
      onset is the training notes' median onset level (config `pluck_envelope["onset_db_median"]`); it
      then follows the training set's plucked-note curve for its pitch band (config `pluck_envelope`,
      data.pluck_envelope_statistic: the median guitar note's loudness relative to its onset level,
      frame by frame since the onset, attack included), and from the sung onset peak on it never
      exceeds the running minimum of the (mapped) sung loudness since that peak, dips shorter than
      200 ms ignored, so the guitar note stops or fades when the singer does, never swells back, and
      rings on through a breath; the onset may exceed that cap by at most 6 dB, an accent that decays
      with a 40 ms time constant. A checkpoint without the statistic
      (made before it existed; add it with `train.py --update_stats`) uses a straight decay of 20 dB/s
      from the sung onset level instead, and so does an explicit --pluck_decay DB (that many dB/s); the
      cap applies either way. A hummed note swells and sustains, which rendered as-is sounds bowed;
      --envelope voice keeps the voice's envelope.
      On the held-out voice->guitar pairs (README) the output comes 30.5 % closer to the real guitar
      than the voice input (26.0 % with the previous envelope, capped by the voice itself, and the
      sung pitch; 14.3 % with --envelope voice; 10.1 % with --envelope voice --pitch voice);
    * --loudness_db adds an offset to every frame at the end. --no_adjust turns off everything
      automatic (note gating, auto octave, quantile matching); explicit --octave N, --semitones and
      --loudness_db still apply.
 3. model.render_chunked (decoder state, oscillator phases and reverb tail carried across chunks;
    memory bounded by --chunk_frames). Noise is drawn once from --seed, so the result does not depend
    on the chunk size.
 4. Trimmed to the input's length, resampled with soxr if --sample_rate is not 16000, peak-normalised
    to -1 dBFS (or --gain DB, then pulled back to -1 dBFS with a warning if it would exceed it), and
    written atomically as 16-bit WAV. A bad input writes nothing.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import features
from notes import (ABS_FLOOR_DB, MIN_NOTE_FRAMES, PLUCK_DECAY_DB_PER_S, detect_notes, hold_note_pitch,
                   loudness_quantiles, mean_midi, pluck_envelope)
from utils import (HelpFormatter, UserError, add_device_arguments, apply_threads, atomic_path, atomic_write_wav,
                   pick_device, run_main)

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "pretrained" / "guitar_demo.pth"
MIN_SECONDS = 0.25            # shortest input accepted (CREPE needs a few 64 ms windows)
PEAK_DBFS = -1.0              # output ceiling
EDGE_RAMP_FRAMES = 5          # 20 ms ramps between note and non-note loudness



# ------------------------------------------------------------------------------------------------
# Auto-adjust: pure functions on frame features (numpy, [F] arrays, dB / Hz)
# ------------------------------------------------------------------------------------------------

def auto_octave_shift(train_mean_midi: float, input_mean_midi: float) -> int:
    """Whole octaves that bring the input's mean pitch nearest the training set's:
    round((train - input) / 12), halves rounded up (toward higher pitch)."""
    return int(math.floor((train_mean_midi - input_mean_midi) / 12.0 + 0.5))


def quantile_map(x: np.ndarray, input_quantiles, target_quantiles, max_slope: float | None = None) -> np.ndarray:
    """Map values through the piecewise-linear curve input_quantiles[i] -> target_quantiles[i].

    The i-th input quantile lands exactly on the i-th target quantile; between them the map is linear,
    outside the input range it is held at the end values. Tied input quantiles (a loudness shared by
    many frames) map to the mean of their targets.
    max_slope: if given, each segment's slope (dB out per dB in) is capped at this value and the curve is
    rebuilt from its middle knot (which keeps its target), so an input with a narrow loudness range
    (a steady hum) is not stretched over the whole training range; segments within the cap are unchanged.
    Returns float64 array shaped like `x`.
    """
    xq = np.asarray(input_quantiles, np.float64)
    yq = np.asarray(target_quantiles, np.float64)
    if xq.shape != yq.shape or xq.ndim != 1 or xq.size == 0:
        raise ValueError(f"quantile arrays must be equal-length 1-D, got {xq.shape} and {yq.shape}")
    order = np.argsort(xq, kind="stable")
    xq, yq = xq[order], yq[order]
    ux, inv = np.unique(xq, return_inverse=True)
    uy = np.bincount(inv, weights=yq) / np.bincount(inv)
    if ux.size == 1:
        return np.full(np.shape(x), uy[0])
    if max_slope is not None:
        dy = np.minimum(np.diff(uy), max_slope * np.diff(ux))
        y = np.concatenate([[0.0], np.cumsum(dy)])
        mid = ux.size // 2
        uy = y - y[mid] + uy[mid]
    return np.interp(np.asarray(x, np.float64), ux, uy)


def note_weight(note: np.ndarray, ramp_frames: int = EDGE_RAMP_FRAMES) -> np.ndarray:
    """1 on note frames, falling linearly to 0 over `ramp_frames` frames outside them; float64 [F]."""
    from scipy.ndimage import distance_transform_edt

    note = np.asarray(note, bool)
    if note.all() or not note.any():
        return note.astype(np.float64)
    dist = distance_transform_edt(~note)
    return np.clip(1.0 - dist / (ramp_frames + 1.0), 0.0, 1.0)


@dataclass
class AdjustSettings:
    """Options of the auto-adjust (see the module docstring). octave None = auto."""
    auto: bool = True
    octave: int | None = None
    semitones: float = 0.0
    loudness_db: float = 0.0
    note_threshold: float = 0.5
    floor_db: float | None = None
    quiet_db: float = 30.0
    max_slope: float | None = 2.0
    envelope: str = "pluck"
    pitch: str = "note"                         # note: each note held at its median pitch; voice: as sung
    pluck_decay_db_per_s: float | None = None   # None: the config's learned curve, else PLUCK_DECAY_DB_PER_S


def adjust_features(f0_hz: np.ndarray, loudness_db: np.ndarray, periodicity: np.ndarray, config: dict,
                    settings: AdjustSettings = AdjustSettings()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Auto-adjust input features toward the training set described by `config`.

    Args:
        f0_hz, loudness_db, periodicity: [F] input features (Hz, dB, 0..1).
        config: model config with mean_midi, loudness_quantiles (101 dB values or None),
            loudness_mean/std (used when quantiles are missing), pluck_envelope (or None: fixed decay).
    Returns:
        (f0_hz [F] float32 Hz, loudness_db [F] float32 dB, info dict: note_mask bool [F],
        octave int, semitones float (total shift), input_mean_midi, note_fraction, method str,
        envelope str (e.g. "pluck, learned (6 pitch bands)", "pluck, 20 dB/s", "voice", "none")).
    Raises:
        UserError (without a file name; the caller adds it) when no note frames are found.
    """
    f0 = np.asarray(f0_hz, np.float64)
    loud = np.asarray(loudness_db, np.float64)
    note = detect_notes(periodicity, loud, settings.note_threshold, settings.floor_db)
    if not note.any():
        raise UserError(f"no pitched notes found (CREPE periodicity never reaches {settings.note_threshold} "
                        f"for {MIN_NOTE_FRAMES * 4} ms above the loudness floor); give a sung or hummed "
                        f"melody, or lower --note_threshold / --floor_db")
    in_midi = mean_midi(f0, note)
    if settings.octave is not None:
        octave = int(settings.octave)
    elif settings.auto:
        octave = auto_octave_shift(float(config["mean_midi"]), in_midi)
    else:
        octave = 0
    shift = 12.0 * octave + float(settings.semitones)
    f0_out = f0 * 2.0 ** (shift / 12.0)
    info = {"note_mask": note, "octave": octave, "semitones": shift, "input_mean_midi": in_midi,
            "note_fraction": float(note.mean()), "method": "none",
            "envelope": settings.envelope if settings.auto else "none"}
    if not settings.auto:
        loud_out = loud + settings.loudness_db
    else:
        q_in = loudness_quantiles(loud[note])
        q_train = config.get("loudness_quantiles")
        if q_train is not None and len(q_train) >= 2:
            q_train = np.asarray(q_train, np.float64)
            if q_train.size != q_in.size:  # resample the training quantiles onto our levels
                q_train = np.interp(np.linspace(0, 1, q_in.size), np.linspace(0, 1, q_train.size), q_train)
            mapped = quantile_map(loud, q_in, q_train, settings.max_slope)
            info["method"] = "quantile"
        else:
            std_in = max(float(loud[note].std()), 1e-3)
            mapped = (loud - loud[note].mean()) / std_in * float(config["loudness_std"]) + float(config["loudness_mean"])
            q_train = loudness_quantiles(mapped[note])
            info["method"] = "mean_std"
        # non-note frames: follow the input's level, offset like the softest notes, then pushed
        # quiet_db below the training set's softest note loudness
        quiet = np.minimum(loud + (q_train[0] - q_in[0]), q_train[0]) - settings.quiet_db
        weight = note_weight(note)
        loud_out = weight * mapped + (1.0 - weight) * quiet + settings.loudness_db
        if settings.envelope == "pluck":
            fixed = settings.pluck_decay_db_per_s
            learned = config.get("pluck_envelope") if fixed is None else None
            decay = PLUCK_DECAY_DB_PER_S if fixed is None else float(fixed)
            loud_out = pluck_envelope(loud_out, note, f0_out, learned, decay, sung_loudness_db=loud)
            info["envelope"] = (f"pluck, learned ({len(learned['curves_db'])} pitch bands)" if learned
                                else f"pluck, {decay:g} dB/s")
        if settings.pitch == "note":
            f0_out = hold_note_pitch(f0_out, note)
        info["pitch"] = settings.pitch
        info["input_note_median_db"] = float(np.median(loud[note]))
        info["output_note_median_db"] = float(np.median(loud_out[note]))
    loud_out = np.maximum(loud_out, -features.LOUDNESS_RANGE_DB)
    return f0_out.astype(np.float32), loud_out.astype(np.float32), info


# ------------------------------------------------------------------------------------------------
# Features with bounded memory
# ------------------------------------------------------------------------------------------------

def extract_features_bounded(audio: np.ndarray, crepe: str = "tiny", device="cpu",
                             segment_frames: int = 15000, context_frames: int = 500,
                             progress: bool | None = None, loudness_db: np.ndarray | None = None) -> dict:
    """features.extract_features on long audio in overlapping segments (memory O(segment)).

    Loudness is computed once for the whole file (features.compute_loudness is already chunked).
    f0/periodicity: each segment of `segment_frames` control frames is analysed with `context_frames`
    extra frames on both sides and only its core is kept. Boundaries sit on multiples of 5 frames
    (320 samples = 2 CREPE hops), so every CREPE window is the one a whole-file run would see; the
    only differences from one whole-file call are Viterbi decisions within the context of a seam and
    the relative silence threshold, which is taken per segment. Audio of at most
    segment_frames + 2*context_frames frames is passed through in one call.

    loudness_db: features.compute_loudness(audio) [F] if already computed.
    Returns dict(f0_hz, periodicity, loudness_db): float32 CPU tensors [F].
    """
    audio = np.ascontiguousarray(audio, np.float32).reshape(-1)
    F = features.n_frames(audio.size)
    loud = features.compute_loudness(audio) if loudness_db is None else np.asarray(loudness_db, np.float32)
    align = 5
    segment_frames = max(align, segment_frames // align * align)
    context_frames = context_frames // align * align
    if F <= segment_frames + 2 * context_frames:
        return features.extract_features(audio, crepe, device, loudness_db=loud)
    f0 = np.empty(F, np.float32)
    per = np.empty(F, np.float32)
    starts = range(0, F, segment_frames)
    for a in tqdm(starts, desc="pitch (CREPE " + crepe + ")", unit="seg", leave=False, disable=None if progress is None else not progress):
        b = min(F, a + segment_frames)
        lo, hi = max(0, a - context_frames), min(F, b + context_frames)
        seg = audio[lo * features.HOP: hi * features.HOP]
        f, p = features.compute_f0(seg, crepe, device, loudness_db=loud[lo: lo + features.n_frames(seg.size)])
        f0[a:b], per[a:b] = f[a - lo: b - lo], p[a - lo: b - lo]
    return {"f0_hz": torch.from_numpy(f0), "periodicity": torch.from_numpy(per),
            "loudness_db": torch.from_numpy(np.ascontiguousarray(loud, np.float32))}


# ------------------------------------------------------------------------------------------------
# Rendering and output level
# ------------------------------------------------------------------------------------------------

def render(model, f0_hz: np.ndarray, loudness_db: np.ndarray, chunk_frames: int = 2500, seed: int = 0,
           progress: bool | None = None) -> np.ndarray:
    """Model audio for [F] frame controls, chunked (model.render_chunked). Returns float32 [F*hop] at 16 kHz.

    White noise is drawn once for the whole input from `seed`, so the result is the same for any chunk
    size (and equals model.forward with that noise, up to float rounding).
    """
    device = next(model.parameters()).device
    f0 = torch.as_tensor(np.asarray(f0_hz, np.float32), device=device)[None]
    ld = torch.as_tensor(np.asarray(loudness_db, np.float32), device=device)[None]
    gen = torch.Generator().manual_seed(int(seed))
    noise = (torch.rand(1, f0.shape[1] * model.hop, generator=gen) * 2 - 1).to(device)
    with tqdm(total=f0.shape[1], desc="render", unit="frame", leave=False, disable=None if progress is None else not progress) as bar:
        def step(done):
            bar.update(done - bar.n)
        audio = model.render_chunked(f0, ld, chunk_frames=chunk_frames, white_noise=noise, progress=step)
    return audio[0].float().cpu().numpy()


def finalize_audio(audio: np.ndarray, sample_rate: int = features.SAMPLE_RATE, gain_db: float | None = None,
                   in_rate: int = features.SAMPLE_RATE) -> tuple[np.ndarray, str | None]:
    """Resample (soxr) and set the level: peak -1 dBFS, or `gain_db` with -1 dBFS as a ceiling.

    Returns (float32 audio [T'], warning or None). Normalising after resampling keeps inter-sample
    overshoot of the resampler below the ceiling too.
    """
    import soxr

    x = np.asarray(audio, np.float32)
    if sample_rate != in_rate:
        x = soxr.resample(x, in_rate, sample_rate, quality="HQ").astype(np.float32)
    ceiling = 10.0 ** (PEAK_DBFS / 20.0)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    warning = None
    if gain_db is None:
        if peak > 0:
            x = x * (ceiling / peak)
    else:
        x = x * 10.0 ** (gain_db / 20.0)
        peak = peak * 10.0 ** (gain_db / 20.0)
        if peak > ceiling:
            x = x * (ceiling / peak)
            warning = (f"--gain {gain_db:g} dB would put the peak at {20 * math.log10(peak):+.1f} dBFS; "
                       f"lowered to {PEAK_DBFS:g} dBFS to avoid clipping")
    return np.clip(x, -ceiling, ceiling).astype(np.float32), warning


# ------------------------------------------------------------------------------------------------
# One input
# ------------------------------------------------------------------------------------------------

def check_audio(audio: np.ndarray, name: str, loudness_db: np.ndarray | None = None) -> np.ndarray:
    """UserError for audio too short or silent; returns its loudness [F] dB."""
    seconds = audio.size / features.SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise UserError(f"{name}: too short ({seconds:.2f} s); give at least {MIN_SECONDS} s of humming or singing")
    loud = features.compute_loudness(audio) if loudness_db is None else loudness_db
    if float(np.max(loud)) < ABS_FLOOR_DB:
        raise UserError(f"{name}: silent (loudest frame {float(np.max(loud)):.0f} dB, below {ABS_FLOOR_DB:g} dB); "
                        f"record closer to the microphone or check the file")
    return loud


def transfer_audio(model, audio: np.ndarray, name: str = "input", settings: AdjustSettings = AdjustSettings(),
                   crepe: str = "tiny", device="cpu", chunk_frames: int = 2500, seed: int = 0,
                   segment_frames: int = 15000, progress: bool | None = None) -> dict:
    """Voice [T] (16 kHz float) -> guitar [T] (16 kHz float, model level, not normalised).

    Returns dict(audio np.float32 [T], features (input dict of [F] tensors), f0_hz, loudness_db (adjusted,
    np [F]), info (see adjust_features)). Raises UserError (naming `name`) for unusable input.
    """
    audio = np.asarray(audio, np.float32).reshape(-1)
    loud = check_audio(audio, name)
    feats = extract_features_bounded(audio, crepe, device, segment_frames=segment_frames, progress=progress,
                                     loudness_db=loud)
    try:
        f0, loud, info = adjust_features(feats["f0_hz"].numpy(), feats["loudness_db"].numpy(),
                                         feats["periodicity"].numpy(), model.config, settings)
    except UserError as e:
        raise UserError(f"{name}: {e}") from None
    out = render(model, f0, loud, chunk_frames, seed, progress)[: audio.size]
    return {"audio": out, "features": feats, "f0_hz": f0, "loudness_db": loud, "info": info}


def save_plot(path: Path, audio_in: np.ndarray, audio_out: np.ndarray, result: dict) -> None:
    """PNG: input spectrogram + f0, output spectrogram + shifted f0, loudness before/after adjust."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sr, hop_s = features.SAMPLE_RATE, 256
    feats, info = result["features"], result["info"]
    t_frames = np.arange(len(result["f0_hz"])) / features.FRAME_RATE
    note = info["note_mask"]

    def spec_db(x):
        x = torch.as_tensor(np.asarray(x, np.float32))
        s = torch.stft(x, 1024, hop_s, window=torch.hann_window(1024), return_complex=True).abs()
        return (20 * torch.log10(s.clamp_min(1e-5))).numpy()

    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    for ax, x, f0, title in ((axes[0], audio_in, feats["f0_hz"].numpy(), "input + CREPE f0 (note frames)"),
                             (axes[1], audio_out, result["f0_hz"], "output + adjusted f0")):
        S = spec_db(x)
        ax.imshow(S, origin="lower", aspect="auto", cmap="magma", vmin=S.max() - 80, vmax=S.max(),
                  extent=(0, len(x) / sr, 0, sr / 2))
        ax.plot(t_frames, np.where(note, f0, np.nan), color="cyan", lw=1)
        ax.set_ylim(0, 4000)
        ax.set_ylabel("Hz")
        ax.set_title(title)
    axes[2].plot(t_frames, feats["loudness_db"].numpy(), label="input loudness")
    axes[2].plot(t_frames, result["loudness_db"], label="adjusted loudness")
    axes[2].fill_between(t_frames, -80, 20, where=note, color="0.85", label="note frames", step="mid")
    axes[2].set_ylim(-82, 22)
    axes[2].set_ylabel("dB (A-weighted)")
    axes[2].set_xlabel("seconds")
    axes[2].legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def add_adjust_arguments(p: argparse.ArgumentParser) -> None:
    """The auto-adjust flags (shared by transfer.py and evaluate.py --pairs)."""
    p.add_argument("--octave", default="auto", help="octave shift: 'auto' (toward the training set's mean pitch) or an integer")
    p.add_argument("--semitones", type=float, default=0.0, help="extra pitch shift in semitones")
    p.add_argument("--loudness_db", type=float, default=0.0, help="loudness offset (dB) applied after the adjust")
    p.add_argument("--note_threshold", type=float, default=0.5, help="CREPE periodicity needed for a note frame")
    p.add_argument("--floor_db", type=float, default=None,
                   help="loudness (dB) needed for a note frame; default 40 dB below the file's 99th percentile")
    p.add_argument("--max_expand", type=float, default=2.0,
                   help="loudness map may stretch input loudness differences at most this much (dB per dB); "
                        "0 = pure quantile matching")
    p.add_argument("--quiet_db", type=float, default=30.0,
                   help="non-note frames are rendered this far below the training set's softest notes")
    p.add_argument("--envelope", choices=("pluck", "voice"), default="pluck",
                   help="pluck: each sung note becomes a plucked note (its onset level, then the training "
                        "set's plucked-note decay curve for its pitch, ending when the sung note ends); "
                        "voice: keep the voice's own swell and sustain (sounds bowed)")
    p.add_argument("--pitch", choices=("note", "voice"), default="note",
                   help="note: each sung note held at its own (median) pitch, as a fretted string holds it; "
                        "voice: keep the voice's vibrato, scoops and drift")
    p.add_argument("--pluck_decay", type=float, default=None,
                   help="a straight decay of this many dB/s instead of the checkpoint's learned curve; "
                        f"default: the learned curve (config 'pluck_envelope'), or {PLUCK_DECAY_DB_PER_S:g} "
                        "dB/s for a checkpoint without one")
    p.add_argument("--no_adjust", action="store_true",
                   help="no automatic adjust (note gating, auto octave, loudness matching); --octave N, "
                        "--semitones and --loudness_db still apply")


def adjust_settings(args) -> AdjustSettings:
    """AdjustSettings from the flags of `add_adjust_arguments`."""
    return AdjustSettings(auto=not args.no_adjust, octave=parse_octave(args.octave), semitones=args.semitones,
                          loudness_db=args.loudness_db, note_threshold=args.note_threshold,
                          floor_db=args.floor_db, quiet_db=args.quiet_db,
                          max_slope=args.max_expand if args.max_expand > 0 else None,
                          envelope=args.envelope, pluck_decay_db_per_s=args.pluck_decay, pitch=args.pitch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="audio files (wav, flac, ogg, aiff) of humming or singing")
    p.add_argument("-o", "--output", default="outputs/",
                   help="output .wav for one input, or a folder (written as <folder>/<stem>_guitar.wav)")
    p.add_argument("--checkpoint", default=None,
                   help=f"model checkpoint (.pth); default: the bundled {DEFAULT_CHECKPOINT.relative_to(ROOT)}")
    p.add_argument("--crepe", choices=("tiny", "full"), default="tiny",
                   help="CREPE pitch model: tiny is the default here for speed; full is more accurate, ~10x slower")
    add_adjust_arguments(p)
    p.add_argument("--sample_rate", type=int, choices=(16000, 22050, 44100, 48000), default=16000,
                   help="output sample rate (the model renders 16 kHz; soxr resamples)")
    p.add_argument("--gain", type=float, default=None,
                   help="output gain in dB instead of peak normalisation to -1 dBFS (still capped at -1 dBFS)")
    p.add_argument("--plot", action="store_true", help="also write <output>.png: spectrograms, f0, loudness")
    p.add_argument("--chunk_frames", type=int, default=2500, help="frames rendered per chunk (memory bound)")
    p.add_argument("--segment_seconds", type=float, default=60.0,
                   help="pitch analysis runs on segments of this length (memory bound)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthesizer's noise")
    add_device_arguments(p, threads=1, threads_help="Batch-1 inference is many small ops: 1 thread measured 4.1x real time on 30 s (2 threads: 1.7x when another job used a core)")
    return p


def resolve_checkpoint(arg: str | None) -> Path:
    """--checkpoint, or the bundled model (one clear line if it is not there)."""
    if arg:
        return Path(arg)
    if not DEFAULT_CHECKPOINT.is_file():
        raise UserError(f"{DEFAULT_CHECKPOINT}: bundled checkpoint not found; train one (train.py) and pass "
                        f"--checkpoint checkpoints/latest.pth")
    return DEFAULT_CHECKPOINT


def output_paths(inputs: list[str], output: str) -> list[Path]:
    """Where each input's result goes: one .wav file, or <folder>/<stem>_guitar.wav."""
    out = Path(output)
    as_file = out.suffix.lower() == ".wav" and not out.is_dir()
    if out.suffix.lower() in features.AUDIO_EXTENSIONS and not as_file:
        raise UserError(f"-o {output}: output is written as WAV; name it .wav (or give a folder)")
    if as_file and len(inputs) > 1:
        raise UserError(f"-o {output}: several inputs need an output folder, not a .wav file")
    paths = [out] if as_file else [out / f"{Path(i).stem}_guitar.wav" for i in inputs]
    if len(set(paths)) != len(paths):
        raise UserError(f"-o {output}: two inputs have the same name stem; run them separately")
    for i, o in zip(inputs, paths):
        if Path(i).resolve() == o.resolve():
            raise UserError(f"{i}: output would overwrite the input; choose another -o")
    return paths


def parse_octave(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--octave {value}: use 'auto' or a whole number such as -1") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settings = adjust_settings(args)
    if args.chunk_frames < 1 or args.segment_seconds <= 0:
        raise UserError("--chunk_frames and --segment_seconds must be positive")
    ckpt = resolve_checkpoint(args.checkpoint)
    outs = output_paths(args.inputs, args.output)
    device = pick_device(args.device)
    apply_threads(args.threads)
    from model import load_model

    model = load_model(ckpt, device)
    segment_frames = int(round(args.segment_seconds * features.FRAME_RATE))
    t0, total_s, plot_s, failures = time.perf_counter(), 0.0, 0.0, []
    many = len(args.inputs) > 1
    for src, dst in tqdm(list(zip(args.inputs, outs)), desc="inputs", unit="file", disable=None if many else True):
        try:
            audio = features.load_audio(src)
            res = transfer_audio(model, audio, src, settings, args.crepe, device, args.chunk_frames, args.seed,
                                 segment_frames)
        except UserError as e:
            if not many:
                raise
            tqdm.write(f"error: {e}", file=sys.stderr)
            failures.append(src)
            continue
        out, warning = finalize_audio(res["audio"], args.sample_rate, args.gain)
        if warning:
            tqdm.write(f"warning: {dst}: {warning}", file=sys.stderr)
        atomic_write_wav(dst, out, args.sample_rate)
        if args.plot:
            t_plot = time.perf_counter()
            save_plot(dst.with_suffix(".png"), audio, res["audio"], res)
            plot_s += time.perf_counter() - t_plot
        total_s += audio.size / features.SAMPLE_RATE
        info = res["info"]
        level = (f"note loudness median {info['input_note_median_db']:.1f} -> {info['output_note_median_db']:.1f} dB "
                 f"({info['method']})" if "input_note_median_db" in info else "loudness unchanged")
        tqdm.write(f"{src} -> {dst}: {audio.size / features.SAMPLE_RATE:.1f} s, notes {100 * info['note_fraction']:.0f}% "
                   f"of frames, mean pitch {features.midi_to_note_name(info['input_mean_midi'])}, shift "
                   f"{info['semitones']:+g} semitones (octave {info['octave']:+d}), {level}, "
                   f"envelope {info['envelope']}")
    wall = time.perf_counter() - t0 - plot_s  # loading, features, adjust, render, resample, write
    if total_s > 0:
        print(f"real-time factor: {wall / total_s:.3f} ({total_s:.1f} s of audio in {wall:.1f} s, "
              f"{total_s / wall:.1f}x real time, CREPE {args.crepe}, device {device})")
    if failures:
        print(f"error: {len(failures)} of {len(args.inputs)} inputs failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
