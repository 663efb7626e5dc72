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
frames) in Hz and note names.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

import features as fx
from utils import HelpFormatter, UserError, atomic_path, run_main, torch_load

VOICED_THRESHOLD = fx.VOICED_THRESHOLD
N_HARMONICS = 6
SPEC_N_FFT = 2048
SPEC_HOP = 128
F_LO, F_HI = 40.0, 8000.0
SPEC_RANGE_DB = 70.0  # spectrogram dynamic range shown (deeper shows window leakage as fake partials)


def load_features(path: Path) -> dict:
    """Load a preprocess.py output as numpy arrays; UserError with one line if it is not one."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass a .pt written by preprocess.py")
    try:
        d = torch_load(path)
    except Exception as e:
        raise UserError(f"{path}: not a readable feature file ({' '.join(str(e).split())[:120]}); "
                        "rerun preprocess.py for it") from None
    missing = [k for k in ("audio", "f0_hz", "periodicity", "loudness_db") if not isinstance(d, dict) or k not in d]
    if missing:
        raise UserError(f"{path}: not a feature file (missing {', '.join(missing)}); rerun preprocess.py for it")
    out = {k: d[k].detach().float().cpu().numpy().reshape(-1) for k in ("audio", "f0_hz", "periodicity", "loudness_db")}
    out["sample_rate"] = int(d.get("sample_rate", fx.SAMPLE_RATE))
    out["hop"] = int(d.get("hop", fx.HOP))
    out["crepe_model"] = str(d.get("crepe_model", "?"))
    out["source"] = str(d.get("source", path.name))
    return out


def _note(hz: float, cents: bool = True) -> str:
    return fx.midi_to_note_name(float(fx.hz_to_midi(hz)), cents=cents)


def summary(d: dict) -> dict:
    """Duration (s), voiced ratio, f0 5th/50th/95th percentiles of voiced frames (Hz, or None)."""
    voiced = d["periodicity"] >= VOICED_THRESHOLD
    dur = d["audio"].shape[0] / d["sample_rate"]
    if voiced.any():
        lo, med, hi = np.percentile(d["f0_hz"][voiced], [5, 50, 95])
    else:
        lo = med = hi = None
    return {"duration": dur, "voiced_ratio": float(voiced.mean()) if voiced.size else 0.0,
            "f0_lo": lo, "f0_med": med, "f0_hi": hi}


def render(d: dict, title_name: str, out_path: Path) -> None:
    """Draw the 4-panel QC figure of feature dict `d` (see load_features) to PNG `out_path` (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    sr, hop = d["sample_rate"], d["hop"]
    audio, f0, per, loud = d["audio"], d["f0_hz"], d["periodicity"], d["loudness_db"]
    T, F = audio.shape[0], f0.shape[0]
    t_frames = np.arange(F) * hop / sr
    dur = max(T / sr, 1e-3)
    s = summary(d)

    fig, axes = plt.subplots(4, 1, figsize=(14, 10), sharex=True,
                             gridspec_kw={"height_ratios": [1.0, 3.2, 0.9, 0.9]})
    ax_w, ax_s, ax_p, ax_l = axes

    # 1. waveform (min/max envelope per pixel column for long files)
    cols = 2000
    if T > 4 * cols:
        blk = T // cols
        a = audio[: blk * cols].reshape(cols, blk)
        tb = (np.arange(cols) + 0.5) * blk / sr
        ax_w.fill_between(tb, a.min(axis=1), a.max(axis=1), color="tab:blue", lw=0)
    else:
        ax_w.plot(np.arange(T) / sr, audio, color="tab:blue", lw=0.6)
    peak = float(np.abs(audio).max()) if T else 1.0
    ax_w.set_ylim(-1.05 * max(peak, 1e-6), 1.05 * max(peak, 1e-6))
    ax_w.set_ylabel("waveform")
    ax_w.grid(alpha=0.3)

    # 2. spectrogram (log frequency) + f0 and harmonics
    x = torch.from_numpy(audio)
    win = torch.hann_window(SPEC_N_FFT)
    spec = torch.stft(torch.nn.functional.pad(x, (0, max(0, SPEC_N_FFT - T))), SPEC_N_FFT, SPEC_HOP,
                      window=win, center=True, return_complex=True).abs().numpy()
    db = 20 * np.log10(np.maximum(spec, 1e-9))
    top = float(np.percentile(db, 99.5))  # not the max: one attack transient would wash out the sustain
    db = np.clip(db, top - SPEC_RANGE_DB, top)
    freqs = np.fft.rfftfreq(SPEC_N_FFT, 1.0 / sr)
    keep = (freqs >= F_LO * 0.9) & (freqs <= min(F_HI, sr / 2))
    ts = np.arange(spec.shape[1]) * SPEC_HOP / sr
    ax_s.pcolormesh(ts, freqs[keep], db[keep], shading="nearest", cmap="gray_r", rasterized=True)
    ax_s.set_yscale("log")
    ax_s.set_ylim(F_LO, min(F_HI, sr / 2))
    ax_s.set_ylabel("frequency (Hz, log)")
    voiced = per >= VOICED_THRESHOLD
    for k in range(2, N_HARMONICS + 1):
        ax_s.plot(t_frames, np.where(voiced, k * f0, np.nan), color="#1f6fff", lw=0.9, ls=(0, (3, 2)),
                  alpha=0.8, label="f0 x 2..%d (should sit on the upper partials)" % N_HARMONICS if k == 2 else None)
    ax_s.plot(t_frames, np.where(voiced, np.nan, f0), color="#ff3300", lw=0.9, ls=":", alpha=0.7,
              label=f"f0 where periodicity < {VOICED_THRESHOLD} (unvoiced / silent)")
    ax_s.plot(t_frames, np.where(voiced, f0, np.nan), color="#ff3300", lw=1.6, alpha=0.9,
              label=f"f0, CREPE {d['crepe_model']} (should sit on the lowest partial)")
    ax_s.legend(loc="upper right", fontsize=8, framealpha=0.7)
    # note names on the right: every E and A of the guitar range (E2 = low E string)
    ax_n = ax_s.twinx()
    ax_n.set_yscale("log")
    ax_n.set_ylim(ax_s.get_ylim())
    midis = [m for m in range(24, 121) if m % 12 in (4, 9)]
    hz = [float(fx.midi_to_hz(m)) for m in midis]
    ax_n.set_yticks([h for h in hz if F_LO <= h <= F_HI])
    ax_n.set_yticklabels([fx.midi_to_note_name(m) for m, h in zip(midis, hz) if F_LO <= h <= F_HI], fontsize=8)
    ax_n.minorticks_off()

    # 3. periodicity
    ax_p.plot(t_frames, per, color="tab:green", lw=1.0)
    ax_p.fill_between(t_frames, 0, per, where=voiced, color="tab:green", alpha=0.25, lw=0)
    ax_p.axhline(VOICED_THRESHOLD, color="gray", ls="--", lw=0.8)
    ax_p.set_ylim(-0.02, 1.02)
    ax_p.set_ylabel("periodicity")
    ax_p.grid(alpha=0.3)

    # 4. loudness
    ax_l.plot(t_frames, loud, color="tab:red", lw=1.0)
    if F:
        thr = max(fx.SILENCE_DB, float(loud.max()) - fx.SILENCE_REL_DB)
        ax_l.axhline(thr, color="gray", ls="--", lw=0.8)
        ax_l.text(0.002, thr, " silence threshold (CREPE skipped below)", transform=ax_l.get_yaxis_transform(),
                  va="bottom", fontsize=7, color="gray")
    ax_l.set_ylim(-fx.LOUDNESS_RANGE_DB - 2, max(5.0, float(loud.max()) + 5) if F else 5.0)
    ax_l.set_ylabel("loudness (dB, A)")
    ax_l.set_xlabel("time (s)")
    ax_l.grid(alpha=0.3)
    ax_l.set_xlim(0, dur)

    if s["f0_lo"] is not None:
        rng = (f"f0 {s['f0_lo']:.0f} to {s['f0_hi']:.0f} Hz ({_note(s['f0_lo'], False)} to "
               f"{_note(s['f0_hi'], False)}), median {s['f0_med']:.0f} Hz ({_note(s['f0_med'])})")
    else:
        rng = "no voiced frames"
    fig.suptitle(f"{title_name}   |   {s['duration']:.2f} s, voiced {100 * s['voiced_ratio']:.0f} %   |   {rng}",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--file", help="one feature file (.pt) written by preprocess.py")
    g.add_argument("--all", metavar="DIR", help="every .pt under this folder (recursively)")
    p.add_argument("--output_dir", default="data/visualization", help="where the PNGs go")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.output_dir)
    if args.file:
        path = Path(args.file)
        out = out_dir / (path.stem + ".png")
        render(load_features(path), path.name, out)
        print(f"wrote {out}")
        return 0
    root = Path(args.all)
    if not root.is_dir():
        raise UserError(f"--all {root}: folder not found; pass the output folder of preprocess.py")
    files = sorted(root.rglob("*.pt"))
    if not files:
        raise UserError(f"--all {root}: no .pt files found; run preprocess.py first")
    ok, failed = 0, []
    for f in tqdm(files, desc="plots", unit="file", dynamic_ncols=True):
        rel = f.relative_to(root)
        try:
            render(load_features(f), rel.as_posix(), out_dir / rel.with_suffix(".png"))
            ok += 1
        except UserError as e:
            failed.append(str(e))
            tqdm.write(f"skipped: {e}")
    print(f"wrote {ok} plots to {out_dir}" + (f"; {len(failed)} failed" if failed else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main)
