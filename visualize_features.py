"""Quality-control plot of a feature file: is the f0 track right?

    ./venv/bin/python visualize_features.py --file data/processed/guitarset/00_BN1-129-Eb_solo_mic.pt
    ./venv/bin/python visualize_features.py --all data/processed/guitarset
    -> data/visualization/<name>.png

Panels, sharing the time axis:
  1. waveform;
  2. log-frequency spectrogram with the f0 track on top (solid where voiced, i.e. periodicity >= 0.5,
     faint dotted where not) and its harmonics 2x..6x as thin dashed lines. A good track sits on the
     lowest partial and its dashed harmonics sit on the upper partials; an octave error shows as the
     solid line on the 2nd partial (too high) or half-way below the lowest one (too low);
  3. periodicity (CREPE confidence) with the voicing threshold;
  4. A-weighted loudness in dB.
The title gives the file name, duration, voiced ratio and the f0 range (5th-95th percentile of voiced
frames) in Hz and note names. Frames that cannot be drawn (NaN or Inf; f0 <= 0 Hz) are left as gaps,
with a note. A file that cannot be plotted (not a feature file, frame count that does not match its
audio) is one line naming it; `--all` skips it and goes on, and exits 1 only when nothing was plotted.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import features as fx
from utils import HelpFormatter, UserError, atomic_path, check_output_path, run_main, torch_load

VOICED_THRESHOLD = fx.VOICED_THRESHOLD
N_HARMONICS = 6
SPEC_N_FFT = 2048
SPEC_HOP = 128
F_LO, F_HI = 40.0, 8000.0
SPEC_RANGE_DB = 70.0  # spectrogram dynamic range shown (deeper shows window leakage as fake partials)
WAVE_COLUMNS = 2000  # waveform: above 4x this many samples, draw a min/max envelope per column
FRAME_KEYS = ("f0_hz", "periodicity", "loudness_db")  # per-frame features [F] in a feature file
RERUN = "re-run preprocess.py for it"


def _not_a_feature_file(path: Path, reason: str) -> UserError:
    return UserError(f"{path}: not a feature file from preprocess.py ({reason}); {RERUN}")


def _load_failure(path: Path) -> str:
    """Short reason why torch could not load `path`, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty file"
    if head.startswith(b"PK"):
        return "damaged or truncated torch archive"
    if head[:1] == b"\x80":
        return "a pickle holding more than tensors and numbers"
    return "not a torch file"


def _arrays(path: Path, d) -> dict:
    """audio [T] and the FRAME_KEYS [F] of loaded dict `d` as float32 numpy, or UserError."""
    if not isinstance(d, dict):
        raise _not_a_feature_file(path, f"holds a {type(d).__name__}, not a dict")
    missing = [k for k in ("audio", *FRAME_KEYS) if k not in d]
    if missing:
        raise _not_a_feature_file(path, f"missing {', '.join(missing)}")
    wrong = [k for k in ("audio", *FRAME_KEYS) if not isinstance(d[k], torch.Tensor)]
    if wrong:
        raise _not_a_feature_file(path, f"{wrong[0]} is a {type(d[wrong[0]]).__name__}, not a tensor")
    return {k: d[k].detach().float().cpu().numpy().reshape(-1) for k in ("audio", *FRAME_KEYS)}


def _check_frames(path: Path, out: dict) -> None:
    """UserError unless the audio is finite and non-empty and each frame feature has ceil(T / hop) frames."""
    T = out["audio"].shape[0]
    if T == 0:
        raise _not_a_feature_file(path, "no audio samples")
    bad = int((~np.isfinite(out["audio"])).sum())
    if bad:
        raise UserError(f"{path}: {bad} of {T} audio samples are NaN or Inf; {RERUN}")
    F = -(-T // out["hop"])
    for k in FRAME_KEYS:
        if out[k].shape[0] != F:
            raise UserError(f"{path}: {k} has {out[k].shape[0]} frames but its audio ({T} samples, hop "
                            f"{out['hop']}) needs {F}; {RERUN}")


def load_features(path: Path) -> dict:
    """Load a preprocess.py output as numpy arrays (audio [T], frame features [F]) plus its sample_rate,
    hop, crepe_model and source. Frame values that cannot be drawn (NaN, Inf; f0 <= 0 Hz) become NaN, shown
    as gaps; `out["gaps"]` counts them per key. UserError with one line if the file cannot be plotted."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass a .pt written by preprocess.py")
    try:
        d = torch_load(path)
    except Exception:
        raise _not_a_feature_file(path, _load_failure(path)) from None
    out = _arrays(path, d)
    try:
        out["sample_rate"] = int(d.get("sample_rate", fx.SAMPLE_RATE))
        out["hop"] = int(d.get("hop", fx.HOP))
    except (TypeError, ValueError, RuntimeError):
        raise _not_a_feature_file(path, "sample_rate or hop is not a number") from None
    if out["sample_rate"] <= 0 or out["hop"] <= 0:
        raise _not_a_feature_file(path, f"sample_rate {out['sample_rate']}, hop {out['hop']}")
    _check_frames(path, out)
    drawable = {k: np.isfinite(out[k]) for k in FRAME_KEYS}
    drawable["f0_hz"] &= np.nan_to_num(out["f0_hz"]) > 0
    out["gaps"] = {k: int((~ok).sum()) for k, ok in drawable.items() if not ok.all()}
    for k, ok in drawable.items():
        out[k] = np.where(ok, out[k], np.nan).astype(np.float32)
    out["crepe_model"] = str(d.get("crepe_model", "?"))
    out["source"] = str(d.get("source", path.name))
    return out


def gaps_note(d: dict, name: str) -> str | None:
    """One line naming the frames of `d` (from load_features) drawn as gaps, or None when there are none."""
    if not d["gaps"]:
        return None
    F = d["f0_hz"].shape[0]
    parts = ", ".join(f"{n} of {F} {k} frames" for k, n in d["gaps"].items())
    return f"note: {name}: {parts} cannot be drawn (NaN, Inf, or f0 <= 0 Hz); shown as gaps"


def _note(hz: float, cents: bool = True) -> str:
    return fx.midi_to_note_name(float(fx.hz_to_midi(hz)), cents=cents)


def summary(d: dict) -> dict:
    """Duration (s), voiced ratio, f0 5th/50th/95th percentiles of voiced frames (Hz, or None).
    Frames whose f0 is NaN (gaps) do not count as voiced."""
    voiced = (d["periodicity"] >= VOICED_THRESHOLD) & np.isfinite(d["f0_hz"])
    dur = d["audio"].shape[0] / d["sample_rate"]
    if voiced.any():
        lo, med, hi = np.percentile(d["f0_hz"][voiced], [5, 50, 95])
    else:
        lo = med = hi = None
    return {"duration": dur, "voiced_ratio": float(voiced.mean()) if voiced.size else 0.0,
            "f0_lo": lo, "f0_med": med, "f0_hi": hi}


def _plot_waveform(ax, audio: np.ndarray, sr: int) -> None:
    """Panel 1: the waveform [T]; a min/max envelope per pixel column for long files."""
    T = audio.shape[0]
    if T > 4 * WAVE_COLUMNS:
        blk = T // WAVE_COLUMNS
        a = audio[: blk * WAVE_COLUMNS].reshape(WAVE_COLUMNS, blk)
        tb = (np.arange(WAVE_COLUMNS) + 0.5) * blk / sr
        ax.fill_between(tb, a.min(axis=1), a.max(axis=1), color="tab:blue", lw=0)
    else:
        ax.plot(np.arange(T) / sr, audio, color="tab:blue", lw=0.6)
    peak = max(float(np.abs(audio).max()), 1e-6)
    ax.set_ylim(-1.05 * peak, 1.05 * peak)
    ax.set_ylabel("waveform")
    ax.grid(alpha=0.3)


def _spectrogram_db(audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times [N] s, frequencies [K] Hz, magnitude in dB [K, N] clipped to SPEC_RANGE_DB below its
    99.5th percentile) of audio [T], Hann window SPEC_N_FFT, hop SPEC_HOP."""
    T = audio.shape[0]
    x = torch.nn.functional.pad(torch.from_numpy(audio), (0, max(0, SPEC_N_FFT - T)))
    spec = torch.stft(x, SPEC_N_FFT, SPEC_HOP, window=torch.hann_window(SPEC_N_FFT), center=True,
                      return_complex=True).abs().numpy()
    db = 20 * np.log10(np.maximum(spec, 1e-9))
    top = float(np.percentile(db, 99.5))  # not the max: one attack transient would wash out the sustain
    times = np.arange(spec.shape[1]) * SPEC_HOP / sr
    return times, np.fft.rfftfreq(SPEC_N_FFT, 1.0 / sr), np.clip(db, top - SPEC_RANGE_DB, top)


def _plot_spectrogram(ax, d: dict, t_frames: np.ndarray) -> None:
    """Panel 2: log-frequency spectrogram with the f0 track (solid where voiced) and its harmonics."""
    sr, f0 = d["sample_rate"], d["f0_hz"]
    ts, freqs, db = _spectrogram_db(d["audio"], sr)
    keep = (freqs >= F_LO * 0.9) & (freqs <= min(F_HI, sr / 2))
    ax.pcolormesh(ts, freqs[keep], db[keep], shading="nearest", cmap="gray_r", rasterized=True)
    ax.set_yscale("log")
    ax.set_ylim(F_LO, min(F_HI, sr / 2))
    ax.set_ylabel("frequency (Hz, log)")
    voiced = d["periodicity"] >= VOICED_THRESHOLD
    for k in range(2, N_HARMONICS + 1):
        ax.plot(t_frames, np.where(voiced, k * f0, np.nan), color="#1f6fff", lw=0.9, ls=(0, (3, 2)),
                alpha=0.8, label="f0 x 2..%d (should sit on the upper partials)" % N_HARMONICS if k == 2 else None)
    ax.plot(t_frames, np.where(voiced, np.nan, f0), color="#ff3300", lw=0.9, ls=":", alpha=0.7,
            label=f"f0 where periodicity < {VOICED_THRESHOLD} (unvoiced / silent)")
    ax.plot(t_frames, np.where(voiced, f0, np.nan), color="#ff3300", lw=1.6, alpha=0.9,
            label=f"f0, CREPE {d['crepe_model']} (should sit on the lowest partial)")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.7)


def _add_note_names(ax) -> None:
    """Note names on the right of the spectrogram: every E and A of the guitar range (E2 = low E string)."""
    ax_n = ax.twinx()
    ax_n.set_yscale("log")
    ax_n.set_ylim(ax.get_ylim())
    midis = [m for m in range(24, 121) if m % 12 in (4, 9) and F_LO <= fx.midi_to_hz(m) <= F_HI]
    ax_n.set_yticks([float(fx.midi_to_hz(m)) for m in midis])
    ax_n.set_yticklabels([fx.midi_to_note_name(m) for m in midis], fontsize=8)
    ax_n.minorticks_off()


def _plot_periodicity(ax, t_frames: np.ndarray, per: np.ndarray) -> None:
    """Panel 3: periodicity [F] (CREPE confidence, 0..1) with the voicing threshold."""
    ax.plot(t_frames, per, color="tab:green", lw=1.0)
    ax.fill_between(t_frames, 0, per, where=per >= VOICED_THRESHOLD, color="tab:green", alpha=0.25, lw=0)
    ax.axhline(VOICED_THRESHOLD, color="gray", ls="--", lw=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("periodicity")
    ax.grid(alpha=0.3)


def _plot_loudness(ax, t_frames: np.ndarray, loud: np.ndarray) -> None:
    """Panel 4: A-weighted loudness [F] in dB with the silence threshold below which CREPE is skipped."""
    ax.plot(t_frames, loud, color="tab:red", lw=1.0)
    finite = loud[np.isfinite(loud)]
    top = float(finite.max()) if finite.size else None
    if top is not None:
        thr = max(fx.SILENCE_DB, top - fx.SILENCE_REL_DB)
        ax.axhline(thr, color="gray", ls="--", lw=0.8)
        ax.text(0.002, thr, " silence threshold (CREPE skipped below)", transform=ax.get_yaxis_transform(),
                va="bottom", fontsize=7, color="gray")
    ax.set_ylim(-fx.LOUDNESS_RANGE_DB - 2, max(5.0, top + 5) if top is not None else 5.0)
    ax.set_ylabel("loudness (dB, A)")
    ax.set_xlabel("time (s)")
    ax.grid(alpha=0.3)


def _title(name: str, s: dict) -> str:
    """File name, duration, voiced ratio and f0 range (Hz and note names) for the figure's title."""
    if s["f0_lo"] is not None:
        rng = (f"f0 {s['f0_lo']:.0f} to {s['f0_hi']:.0f} Hz ({_note(s['f0_lo'], False)} to "
               f"{_note(s['f0_hi'], False)}), median {s['f0_med']:.0f} Hz ({_note(s['f0_med'])})")
    else:
        rng = "no voiced frames"
    return f"{name}   |   {s['duration']:.2f} s, voiced {100 * s['voiced_ratio']:.0f} %   |   {rng}"


def render(d: dict, title_name: str, out_path: Path) -> None:
    """Draw the 4-panel QC figure of feature dict `d` (see load_features) to PNG `out_path` (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_frames = np.arange(d["f0_hz"].shape[0]) * d["hop"] / d["sample_rate"]
    fig, (ax_w, ax_s, ax_p, ax_l) = plt.subplots(4, 1, figsize=(14, 10), sharex=True,
                                                 gridspec_kw={"height_ratios": [1.0, 3.2, 0.9, 0.9]})
    try:
        _plot_waveform(ax_w, d["audio"], d["sample_rate"])
        _plot_spectrogram(ax_s, d, t_frames)
        _add_note_names(ax_s)
        _plot_periodicity(ax_p, t_frames, d["periodicity"])
        _plot_loudness(ax_l, t_frames, d["loudness_db"])
        ax_l.set_xlim(0, max(d["audio"].shape[0] / d["sample_rate"], 1e-3))
        fig.suptitle(_title(title_name, summary(d)), fontsize=12)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    except OSError as e:
        raise UserError(f"{out_path}: could not write the plot ({e.strerror or e}); free space or choose "
                        "another --output_dir") from None
    finally:
        plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--file", help="one feature file (.pt) written by preprocess.py")
    g.add_argument("--all", metavar="DIR", help="every .pt under this folder (recursively)")
    p.add_argument("--output_dir", default="data/visualization", help="where the PNGs go")
    return p


def plot_file(path: Path, name: str, out_path: Path) -> None:
    """Load and plot one feature file (a note first when some frames are drawn as gaps); UserError if
    it cannot be plotted."""
    d = load_features(path)
    note = gaps_note(d, name)
    if note:
        tqdm.write(note)
    render(d, name, out_path)


def find_feature_files(root: Path) -> list[Path]:
    """Every .pt under `root` (sorted), or UserError when the folder is missing or has none."""
    if not root.is_dir():
        raise UserError(f"--all {root}: folder not found; pass the output folder of preprocess.py")
    files = sorted(root.rglob("*.pt"))
    if not files:
        raise UserError(f"--all {root}: no .pt files found; run preprocess.py first")
    return files


def plot_all(root: Path, files: list[Path], out_dir: Path) -> int:
    """Plot each file (mirroring sub-folders under `out_dir`); a file that cannot be plotted is skipped
    with one line and the batch goes on. 0 when at least one plot was written, else UserError."""
    ok, skipped = 0, []
    for f in tqdm(files, desc="plots", unit="file", dynamic_ncols=True):
        rel = f.relative_to(root)
        try:
            plot_file(f, rel.as_posix(), out_dir / rel.with_suffix(".png"))
            ok += 1
        except UserError as e:
            skipped.append(str(e))
    print(f"wrote {ok} plots to {out_dir}" + (f"; skipped {len(skipped)}:" if skipped else ""))
    for why in skipped:
        print(f"  skipped {why}")
    if not ok:
        raise UserError(f"--all {root}: none of the {len(files)} files could be plotted (reasons above); "
                        "re-run preprocess.py")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files = [Path(args.file)] if args.file else find_feature_files(Path(args.all))
    out_dir = check_output_path(args.output_dir, "--output_dir", is_dir=True)
    if args.all:
        return plot_all(Path(args.all), files, out_dir)
    out = out_dir / (files[0].stem + ".png")
    plot_file(files[0], files[0].name, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
