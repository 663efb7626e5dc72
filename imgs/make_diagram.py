"""Draw imgs/explanative_diagram.png: how Neural Guitar turns pitch + loudness into guitar audio.

    ./venv/bin/python imgs/make_diagram.py            # writes imgs/explanative_diagram.png
    ./venv/bin/python imgs/make_diagram.py --out x.png --dpi 150

Control signals (f0 from CREPE, A-weighted loudness) -> input MLPs -> GRU -> output MLP -> heads
(amplitude, harmonic distribution, noise magnitudes) -> stiff-string harmonic synth + filtered noise ->
sum -> learnable reverb -> audio; the multi-resolution STFT loss against the target audio feeds back
(dashed) during training. Matplotlib only; the layout is in data coordinates of a 14 x 7.4 canvas.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils import HelpFormatter, atomic_path, run_main  # noqa: E402

W, H = 14.0, 7.4
COLORS = {
    "features": ("#e8f1fb", "#3b7dd8"),
    "decoder": ("#eef7ea", "#3f9142"),
    "heads": ("#fff6e0", "#c98a00"),
    "synth": ("#fdecea", "#c8463d"),
    "io": ("#f2f2f2", "#555555"),
    "loss": ("#f4ecfa", "#7b4fa8"),
}
TEXT = "#222222"


def box(ax, x, y, w, h, title, sub=None, kind="decoder", title_size=12.5, sub_size=10.5):
    """Rounded box centred at (x, y) with a bold title and an optional smaller second line."""
    face, edge = COLORS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=face, edgecolor=edge, linewidth=1.6, zorder=3))
    if sub:
        ax.text(x, y + h * 0.17, title, ha="center", va="center", fontsize=title_size, fontweight="bold",
                color=TEXT, zorder=4)
        ax.text(x, y - h * 0.22, sub, ha="center", va="center", fontsize=sub_size, color="#444444",
                zorder=4, linespacing=1.15)
    else:
        ax.text(x, y, title, ha="center", va="center", fontsize=title_size, fontweight="bold", color=TEXT,
                zorder=4)
    return (x - w / 2, x + w / 2, y - h / 2, y + h / 2)


def arrow(ax, start, end, color="#555555", style="-|>", ls="-", lw=1.6, rad=0.0, zorder=2):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color=color, lw=lw,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}", zorder=zorder,
                                 shrinkA=0, shrinkB=0))


def group(ax, x0, x1, y0, y1, label, kind):
    face, edge = COLORS[kind]
    ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.0,rounding_size=0.18",
                                facecolor=face, edgecolor=edge, linewidth=1.0, alpha=0.35, zorder=1,
                                linestyle=(0, (4, 3))))
    ax.text(x0 + 0.12, y1 - 0.08, label, ha="left", va="top", fontsize=10.5, color=edge, fontweight="bold",
            zorder=4)


def draw(out: Path, dpi: int = 100) -> Path:
    fig = plt.figure(figsize=(W, H), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")

    ax.text(0.25, H - 0.32, "Neural Guitar: pitch + loudness  →  neural decoder  →  differentiable guitar "
            "synthesizer", ha="left", va="center", fontsize=15, fontweight="bold", color=TEXT)

    y_top, y_mid, y_bot = 5.0, 4.05, 3.1      # the three lanes of the signal path
    p_lo, p_hi = 2.1, 6.25                   # panels' vertical extent
    group(ax, 1.2, 3.3, p_lo, p_hi, "features.py", "features")
    group(ax, 3.45, 8.5, p_lo, p_hi, "decoder (model.py)", "decoder")
    group(ax, 8.65, 12.85, p_lo, p_hi, "synthesizer (synth.py)", "synth")

    # input audio
    b_in = box(ax, 0.62, y_mid, 0.9, 1.25, "audio", "voice or\nguitar\n16 kHz", "io", 12, 9.5)

    # control signals
    yf, yl = y_top + 0.2, y_bot - 0.2
    b_f0 = box(ax, 2.25, yf, 1.8, 1.05, "f0 (Hz)", "CREPE full / tiny\nViterbi, 250 frames/s",
               "features", 12, 9.5)
    b_ld = box(ax, 2.25, yl, 1.8, 1.05, "loudness (dB)", "A-weighted power\n250 frames/s",
               "features", 12, 9.5)
    arrow(ax, (b_in[1], y_mid + 0.25), (b_f0[0], yf))
    arrow(ax, (b_in[1], y_mid - 0.25), (b_ld[0], yl))

    # input MLPs
    b_m1 = box(ax, 4.08, yf, 1.15, 1.05, "MLP", "3 × 512\nf0 as MIDI/127", "decoder", 12, 9.5)
    b_m2 = box(ax, 4.08, yl, 1.15, 1.05, "MLP", "3 × 512\nstandardised", "decoder", 12, 9.5)
    arrow(ax, (b_f0[1], yf), (b_m1[0], yf))
    arrow(ax, (b_ld[1], yl), (b_m2[0], yl))

    # GRU
    b_gru = box(ax, 5.4, y_mid, 0.95, 1.5, "GRU", "512 units", "decoder", 13, 9.5)
    arrow(ax, (b_m1[1], yf), (b_gru[0], y_mid + 0.3))
    arrow(ax, (b_m2[1], yl), (b_gru[0], y_mid - 0.3))

    # output MLP over [GRU output, input MLP outputs]
    b_om = box(ax, 6.55, y_mid, 1.05, 1.5, "MLP", "3 × 512\n[GRU, inputs]", "decoder", 12.5, 9.5)
    arrow(ax, (b_gru[1], y_mid), (b_om[0], y_mid))
    green = COLORS["decoder"][1]
    ax.plot([4.08, 4.08, 6.55], [b_m1[3], 5.95, 5.95], color=green, lw=1.2, ls=":", zorder=2)
    arrow(ax, (6.55, 5.95), (6.55, b_om[3]), color=green, lw=1.2, ls=":")
    ax.text(6.05, 5.98, "skip connection", ha="center", va="bottom", fontsize=9, color=green)

    # heads
    hx, hy = 7.87, (y_top + 0.65, y_mid, y_bot - 0.65)
    b_h1 = box(ax, hx, hy[0], 0.98, 0.7, "amplitude", "× 1", "heads", 10.5, 9.5)
    b_h2 = box(ax, hx, hy[1], 0.98, 0.7, "harmonics", "× 100", "heads", 10.5, 9.5)
    b_h3 = box(ax, hx, hy[2], 0.98, 0.7, "noise", "× 65 bands", "heads", 10.5, 9.5)
    for b, y in zip((b_h1, b_h2, b_h3), hy):
        arrow(ax, (b_om[1], y_mid + (y - y_mid) * 0.3), (b[0], y))

    # synthesizers
    b_hs = box(ax, 9.75, yf, 1.95, 1.3, "harmonic synth",
               "100 partials at k·f0·√(1+Bk²)\nstiff string, B learned ≥ 0", "synth", 12, 9.5)
    b_ns = box(ax, 9.75, y_bot - 0.35, 1.95, 1.05, "filtered noise", "65-band FIR per frame",
               "synth", 12, 9.5)
    arrow(ax, (b_h1[1], hy[0]), (b_hs[0], yf + 0.3))
    arrow(ax, (b_h2[1], hy[1]), (b_hs[0], yf - 0.25))
    arrow(ax, (b_h3[1], hy[2]), (b_ns[0], y_bot - 0.35))
    # f0 also drives the oscillators directly
    blue = COLORS["features"][1]
    ax.plot([2.65, 2.65, 9.75], [b_f0[3], 6.55, 6.55], color=blue, lw=1.4, zorder=2)
    arrow(ax, (9.75, 6.55), (9.75, b_hs[3]), color=blue, lw=1.4)
    ax.text(6.0, 6.6, "f0 also sets the oscillators' frequencies", ha="center", va="bottom", fontsize=9.5,
            color=blue)

    # sum, reverb, output
    sx, sy = 11.15, y_mid
    red = COLORS["synth"][1]
    ax.add_patch(plt.Circle((sx, sy), 0.22, facecolor="white", edgecolor=red, lw=1.6, zorder=3))
    ax.text(sx, sy, "+", ha="center", va="center", fontsize=15, fontweight="bold", color=red, zorder=4)
    arrow(ax, (b_hs[1], yf), (sx - 0.12, sy + 0.19))
    arrow(ax, (b_ns[1], y_bot - 0.35), (sx - 0.12, sy - 0.19))
    b_rv = box(ax, 12.15, sy, 1.05, 1.25, "reverb", "learned\n1 s IR\n+ dry path", "synth", 12, 9.5)
    arrow(ax, (sx + 0.22, sy), (b_rv[0], sy))
    b_out = box(ax, 13.45, sy, 0.85, 1.25, "audio", "guitar\nout", "io", 12, 9.5)
    arrow(ax, (b_rv[1], sy), (b_out[0], sy))

    # training: loss against the target audio; dashed feedback into the trainable parts
    purple = COLORS["loss"][1]
    yl2 = 1.1
    b_tg = box(ax, 13.4, yl2, 0.95, 0.95, "target", "training\naudio", "io", 11, 9.5)
    b_ls = box(ax, 10.85, yl2, 3.4, 0.95, "multi-resolution STFT loss",
               "FFT 2048 … 64, 75 % overlap\nL1 of |X|  +  L1 of log |X|", "loss", 12, 9.5)
    arrow(ax, (12.15, b_rv[2]), (12.15, b_ls[3]), color=purple)
    arrow(ax, (b_tg[0], yl2), (b_ls[1], yl2), color=purple)
    dash = (0, (5, 3))
    ax.plot([b_ls[0], 5.4], [yl2, yl2], color=purple, lw=1.6, ls=dash, zorder=2)
    arrow(ax, (5.4, yl2), (5.4, p_lo), color=purple, ls=dash)
    ax.text(3.4, yl2, "training: gradients → Adam\n(decoder, B, reverb IR)", ha="center", va="center",
            fontsize=10.5, color=purple)
    ax.text(0.25, 0.3, "Control frames every 4 ms (64 samples at 16 kHz). Heads become positive amplitudes "
            "through exp-sigmoid; partials at or above Nyquist are muted and the rest renormalised.",
            ha="left", va="center", fontsize=9.5, color="#555555")

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "explanative_diagram.png"),
                        help="PNG to write")
    parser.add_argument("--dpi", type=int, default=100, help="pixels per inch (canvas is 14 x 7.4 in)")
    args = parser.parse_args(argv)
    path = draw(Path(args.out), args.dpi)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
