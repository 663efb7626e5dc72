"""The offline voice -> guitar pipeline, shared by transfer.py (the product) and evaluate.py (its metrics).

    features.check_audio -> features.extract_features_bounded -> notes.adjust_features -> render
    -> finalize_audio

`transfer_audio` runs the first four on one input; `finalize_audio` sets the output level; `render`
refuses non-finite audio (a broken checkpoint) with `NonFiniteAudio`, which callers turn into one line
naming the checkpoint.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import features
from notes import AdjustSettings, adjust_features
from utils import UserError

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "pretrained" / "guitar_demo.pth"
PEAK_DBFS = -1.0              # output ceiling
CHUNK_FRAMES = 2500           # frames rendered per chunk (memory bound)


class NonFiniteAudio(UserError):
    """The model rendered NaN or Inf: the checkpoint is broken (e.g. a diverged run), not the input."""


def resolve_checkpoint(arg: str | None) -> Path:
    """--checkpoint, or the bundled model (one clear line if it is not there)."""
    if arg:
        return Path(arg)
    if not DEFAULT_CHECKPOINT.is_file():
        raise UserError(f"{DEFAULT_CHECKPOINT}: bundled checkpoint not found; train one (train.py) and pass "
                        f"--checkpoint checkpoints/latest.pth")
    return DEFAULT_CHECKPOINT


def render(model, f0_hz: np.ndarray, loudness_db: np.ndarray, chunk_frames: int = CHUNK_FRAMES, seed: int = 0,
           progress: bool | None = None) -> np.ndarray:
    """Model audio for [F] frame controls, chunked (model.render_chunked). Returns float32 [F*hop] at 16 kHz.

    White noise is drawn once for the whole input from `seed`, so the result is the same for any chunk
    size (and equals model.forward with that noise, up to float rounding). Raises NonFiniteAudio when
    any sample is NaN or Inf.
    """
    device = next(model.parameters()).device
    f0 = torch.as_tensor(np.asarray(f0_hz, np.float32), device=device)[None]
    ld = torch.as_tensor(np.asarray(loudness_db, np.float32), device=device)[None]
    gen = torch.Generator().manual_seed(int(seed))
    noise = (torch.rand(1, f0.shape[1] * model.hop, generator=gen) * 2 - 1).to(device)
    with tqdm(total=f0.shape[1], desc="render", unit="frame", leave=False,
              disable=None if progress is None else not progress) as bar:
        def step(done):
            bar.update(done - bar.n)
        audio = model.render_chunked(f0, ld, chunk_frames=chunk_frames, white_noise=noise, progress=step)
    out = audio[0].float().cpu().numpy()
    if not np.isfinite(out).all():
        raise NonFiniteAudio("the model rendered NaN/Inf audio (broken weights, e.g. a diverged training run); "
                             "use another checkpoint")
    return out


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


def transfer_audio(model, audio: np.ndarray, name: str = "input", settings: AdjustSettings = AdjustSettings(),
                   crepe: str = "tiny", device="cpu", chunk_frames: int = CHUNK_FRAMES, seed: int = 0,
                   segment_frames: int = features.SEGMENT_FRAMES, progress: bool | None = None) -> dict:
    """Voice [T] (16 kHz float) -> guitar [T] (16 kHz float, model level, not normalised).

    Returns dict(audio np.float32 [T], features (input dict of [F] tensors), f0_hz, loudness_db (adjusted,
    np [F]), info (see notes.adjust_features)). Raises UserError (naming `name`) for unusable input,
    NonFiniteAudio for a broken model.
    """
    audio = np.asarray(audio, np.float32).reshape(-1)
    loud = features.check_audio(audio, name)
    feats = features.extract_features_bounded(audio, crepe, device, segment_frames=segment_frames,
                                              progress=progress, loudness_db=loud)
    try:
        f0, loud, info = adjust_features(feats["f0_hz"].numpy(), feats["loudness_db"].numpy(),
                                         feats["periodicity"].numpy(), model.config, settings)
    except UserError as e:
        raise UserError(f"{name}: {e}") from None
    out = render(model, f0, loud, chunk_frames, seed, progress)[: audio.size]
    return {"audio": out, "features": feats, "f0_hz": f0, "loudness_db": loud, "info": info}
