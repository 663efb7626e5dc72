"""Turn humming or singing into electric guitar.

    python transfer.py voice.wav -o outputs/voice_guitar.wav
    python transfer.py takes/*.wav -o outputs/              # -> outputs/<stem>_guitar.wav each
    python transfer.py voice.mp3 -o outputs/voice_guitar.flac
    python transfer.py voice.wav -o out.wav --checkpoint checkpoints/latest.pth --plot

Pipeline, per input:
 1. features.load_audio (any format soundfile reads, mono, 16 kHz), then features.extract_features
    (CREPE `tiny` by default here, for speed; `--crepe full` is more accurate and ~10x slower).
    Inputs longer than --segment_seconds are analysed in overlapping segments (see
    `features.extract_features_bounded`), so memory stays bounded whatever the length.
 2. Auto-adjust (notes.adjust_features) (DDSP timbre-transfer style), from the statistics in the checkpoint's config:
    * note frames: CREPE periodicity (median-smoothed over 7 frames) >= --note_threshold and loudness
      >= a floor (--floor_db, default: 40 dB below the file's 99th-percentile loudness, never below
      -70 dB); gaps shorter than 60 ms are closed, notes shorter than 48 ms are dropped;
    * sung notes (notes.track_notes): each run of note frames is split where the sung pitch moves to a
      new level (a 200 ms moving average of the pitch, so vibrato does not split a note, and pieces
      shorter than 60 ms, i.e. scoops and slides, are merged) and where the loudness dips 12 dB and rises
      again (a re-attack on the same pitch); one sung note = one pluck;
    * pitch: one whole-octave shift for the file (--octave auto): the shift in -3..+3 that puts the most
      sung notes inside the training set's pitch range (config `pitch_range_midi`, the 5th..95th
      percentile of its voiced f0; E2..E5 for a checkpoint without it), the smallest such shift on a
      tie, so a melody already in range is not moved; or --octave N; plus --semitones;
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
    * envelope (--envelope pluck, the default): each sung note becomes a plucked note (notes.pluck_envelope):
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
      (made before it existed; add it with `update_stats.py`) uses a straight decay of 20 dB/s
      from the sung onset level instead, and so does an explicit --pluck_decay DB (that many dB/s); the
      cap applies either way. A hummed note swells and sustains, which rendered as-is sounds bowed;
      --envelope voice keeps the voice's envelope (how much each choice brings on held-out
      voice->guitar pairs: README);
    * --loudness_db adds an offset to every frame at the end. --no_adjust turns off everything
      automatic (note gating, auto octave, quantile matching); explicit --octave N, --semitones and
      --loudness_db still apply.
 3. pipeline.render: model.render_chunked (decoder state, oscillator phases and reverb tail carried across chunks;
    memory bounded by --chunk_frames). Noise is drawn once from --seed, so the result does not depend
    on the chunk size.
 4. Trimmed to the input's length, through the amp and effects of --fx (effects.py; default none) at
    16 kHz, resampled with soxr if --sample_rate is not 16000, peak-normalised
    to -1 dBFS (or --gain DB, then pulled back to -1 dBFS with a warning if it would exceed it), and
    written atomically in the format the output name says (OUTPUT_FORMATS: 16-bit WAV by default).
    Output locations are checked before any work; a bad input, or a checkpoint that renders NaN/Inf,
    writes nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import features
from effects import Effects, add_fx_arguments, from_args as fx_from_args
from notes import AdjustSettings, add_adjust_arguments, adjust_settings
from pipeline import (CHUNK_FRAMES, DEFAULT_CHECKPOINT, ROOT, NonFiniteAudio, finalize_audio, resolve_checkpoint,
                      transfer_audio)
from utils import (HelpFormatter, UserError, add_device_arguments, apply_threads, atomic_path, check_output_path,
                   pick_device, run_main)

# Output formats by file name extension: (soundfile format, subtype). The ones the installed libsndfile
# cannot write are left out at run time (`writable_formats`).
OUTPUT_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS"),
                  ".mp3": ("MP3", "MPEG_LAYER_III"), ".aiff": ("AIFF", "PCM_16")}


def writable_formats() -> dict:
    """OUTPUT_FORMATS restricted to what soundfile (libsndfile) can write here."""
    import soundfile as sf

    return {ext: fs for ext, fs in OUTPUT_FORMATS.items() if sf.check_format(*fs)}


def write_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio [T] (-1..1) atomically in the format of `path`'s extension (OUTPUT_FORMATS)."""
    import soundfile as sf

    fmt, subtype = OUTPUT_FORMATS[path.suffix.lower()]
    with atomic_path(path) as tmp:
        sf.write(tmp, np.asarray(audio, np.float32), sample_rate, format=fmt, subtype=subtype)


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

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+",
                   help=f"audio files of humming or singing ({', '.join(features.AUDIO_EXTENSIONS)})")
    p.add_argument("-o", "--output", default="outputs/",
                   help="output file for one input (.wav, or another extension of OUTPUT_FORMATS), or a folder "
                        "(an existing one, or a name ending in /; written as <folder>/<stem>_guitar.wav)")
    p.add_argument("--checkpoint", default=None,
                   help=f"model checkpoint (.pth); default: the bundled {DEFAULT_CHECKPOINT.relative_to(ROOT)}")
    p.add_argument("--crepe", choices=("tiny", "full"), default="tiny",
                   help="CREPE pitch model: tiny is the default here for speed; full is more accurate, ~10x slower")
    add_adjust_arguments(p)
    p.add_argument("--sample_rate", type=int, choices=(16000, 22050, 44100, 48000), default=features.SAMPLE_RATE,
                   help="output sample rate (the model renders 16 kHz; soxr resamples)")
    p.add_argument("--gain", type=float, default=None,
                   help="output gain in dB instead of peak normalisation to -1 dBFS (still capped at -1 dBFS)")
    add_fx_arguments(p, default="none")
    p.add_argument("--plot", action="store_true", help="also write <output>.png: spectrograms, f0, loudness")
    p.add_argument("--chunk_frames", type=int, default=CHUNK_FRAMES, help="frames rendered per chunk (memory bound)")
    p.add_argument("--segment_seconds", type=float, default=features.SEGMENT_FRAMES / features.FRAME_RATE,
                   help="pitch analysis runs on segments of this length (memory bound)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthesizer's noise")
    add_device_arguments(p, threads=1, threads_help="Batch-1 inference is many small ops: 1 thread measured 4.1x real time on 30 s (2 threads: 1.7x when another job used a core)")
    return p


def output_paths(inputs: list[str], output: str) -> list[Path]:
    """Where each input's result goes: one audio file, or <folder>/<stem>_guitar.wav; checked for
    writability before any work (utils.check_output_path).

    A name ending in / or without an extension, or an existing folder without an audio extension, is a
    folder; any other name is a file, and its extension must be one of `writable_formats`.
    """
    out = Path(output)
    writable = writable_formats()
    suffix = out.suffix.lower()
    as_file = not str(output).endswith(("/", "\\")) and (suffix in writable or (bool(suffix) and not out.is_dir()))
    if as_file and suffix not in writable:
        raise UserError(f"-o {output}: cannot write '{suffix}' files; name the output "
                        f"{', '.join(writable)} (or end a folder name with /)")
    if as_file and len(inputs) > 1:
        raise UserError(f"-o {output}: several inputs need an output folder, not a file")
    check_output_path(out, "-o", is_dir=not as_file)
    paths = [out] if as_file else [out / f"{Path(i).stem}_guitar.wav" for i in inputs]
    if len(set(paths)) != len(paths):
        raise UserError(f"-o {output}: two inputs have the same name stem; run them separately")
    for i, o in zip(inputs, paths):
        if Path(i).resolve() == o.resolve():
            raise UserError(f"{i}: output would overwrite the input; choose another -o")
    return paths


def transfer_file(model, src: str, dst: Path, args, settings: AdjustSettings, device,
                  fx: Effects) -> tuple[float, float]:
    """One input file -> `dst` (and its plot with --plot); prints one summary line. Returns (seconds of
    audio, seconds spent on the plot). Raises UserError for an unusable input, NonFiniteAudio for a broken model (nothing written)."""
    audio = features.load_audio(src)
    res = transfer_audio(model, audio, src, settings, args.crepe, device, args.chunk_frames, args.seed,
                         int(round(args.segment_seconds * features.FRAME_RATE)))
    fx.reset()  # each file starts with the amp's state (gate, delay, reverb tails) empty
    out, warning = finalize_audio(fx.process(res["audio"]), args.sample_rate, args.gain)
    if warning:
        tqdm.write(f"warning: {dst}: {warning}", file=sys.stderr)
    write_audio(dst, out, args.sample_rate)
    t_plot = time.perf_counter()
    if args.plot:
        save_plot(dst.with_suffix(".png"), audio, res["audio"], res)
    plot_s = time.perf_counter() - t_plot
    seconds, info = audio.size / features.SAMPLE_RATE, res["info"]
    level = (f"note loudness median {info['input_note_median_db']:.1f} -> {info['output_note_median_db']:.1f} dB "
             f"({info['method']})" if "input_note_median_db" in info else "loudness unchanged")
    tqdm.write(f"{src} -> {dst}: {seconds:.1f} s, notes {100 * info['note_fraction']:.0f}% "
               f"of frames, mean pitch {features.midi_to_note_name(info['input_mean_midi'])}, shift "
               f"{info['semitones']:+g} semitones (octave {info['octave']:+d}), {level}, "
               f"envelope {info['envelope']}")
    return seconds, plot_s


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settings = adjust_settings(args)
    if args.chunk_frames < 1 or args.segment_seconds <= 0:
        raise UserError("--chunk_frames and --segment_seconds must be positive")
    ckpt = resolve_checkpoint(args.checkpoint)
    outs = output_paths(args.inputs, args.output)
    fx = fx_from_args(args, features.SAMPLE_RATE)  # a bad --fx_plugin stops here, before any work
    device = pick_device(args.device)
    apply_threads(args.threads)
    from model import load_model

    model = load_model(ckpt, device)
    t0, total_s, plot_s, failures = time.perf_counter(), 0.0, 0.0, []
    many = len(args.inputs) > 1
    for src, dst in tqdm(list(zip(args.inputs, outs)), desc="inputs", unit="file", disable=None if many else True):
        try:
            seconds, plot_seconds = transfer_file(model, src, dst, args, settings, device, fx)
            total_s, plot_s = total_s + seconds, plot_s + plot_seconds
        except NonFiniteAudio as e:
            raise UserError(f"{ckpt}: {e} (input {src})") from None
        except UserError as e:
            if not many:
                raise
            tqdm.write(f"error: {e}", file=sys.stderr)
            failures.append(src)
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
