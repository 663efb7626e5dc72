"""Measure a checkpoint: resynthesis quality against a plain sine baseline, and transfer on pairs.

    python evaluate.py --checkpoint checkpoints/best.pth --audio_dir data/raw/guitarset --limit 20 --json outputs/eval.json
    python evaluate.py --checkpoint checkpoints/best.pth --pairs data/pairs/voice data/pairs/guitar

Resynthesis (--audio_dir): every audio file is re-rendered by the model from its own f0 and loudness
(features.extract_features_bounded, i.e. features.extract_features; CREPE `tiny` by default
here for speed, `--crepe full` for reportable numbers), with no auto-adjust. Against the input it reports
  mss            loss.MultiResolutionSTFTLoss (DDSP spectral loss, summed over 6 FFT sizes); lower is better
  f0_cents       median |cents| between CREPE on the output and the input f0, over frames that are notes in
                 the input (notes.detect_notes) and are voiced in the output (periodicity >=
                 features.VOICED_THRESHOLD)
  rpa            mir_eval.melody.raw_pitch_accuracy at 50 cents: share of the input's note frames whose output
                 pitch (CREPE) is within 50 cents; n/a (null, left out of the mean) for a file without note
                 frames (e.g. noise)
  loud_l1_db     mean |loudness(output) - loudness(input)| in dB (features.compute_loudness) over note frames
and the same numbers for the baseline, so the model's gain is visible (mss_reduction_pct = 100 * (1 -
mss_model / mss_baseline); for the mean row it is computed from the mean distances).

Baseline ("sine"): one sinusoid at the input's f0 (synth.HarmonicSynthesizer with a single partial, so phase
and interpolation are the model's), with per-frame amplitude a = 10 ** ((L_in - L_1(f0)) / 20), where L_in is
the input's A-weighted loudness in that frame and L_1(f) the loudness (same features.compute_loudness) of a
steady unit-amplitude sine at f, measured on a grid of 4 points per semitone and interpolated in log f. Its
loudness therefore equals the input's in every steady frame: it has the right pitch and level but no timbre.

Pairs (--pairs DIR_A DIR_B, or --pairs --input_dir A --target_dir B): files with the same name stem in both
folders are (input, target), e.g. a sung melody and a guitar rendering of it. The input goes through the
transfer pipeline (pipeline.transfer_audio with its default auto-adjust, then pipeline.finalize_audio); input,
output and target are each peak-normalised to -1 dBFS (the transfer's output rule) and cut to the shorter
length, and the MSS distance output->target is reported next to input->target. The transfer flags apply;
with the default `--envelope pluck` the checkpoint's learned plucked-note curve is used when its config has
one (`envelope` in the JSON rows says which). Resynthesis renders the file's own features, no adjust.

Output: a progress line per file on stderr (with the expected time left), a table on stdout (per file,
then the mean) and, with --json PATH, all numbers as JSON (a number that is not finite is written as
null). The --json location is checked before any work. A checkpoint that renders NaN/Inf audio stops the
run with one line naming it. Batch work: torch uses all cores unless --threads says otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import features
import notes
from pipeline import (CHUNK_FRAMES, DEFAULT_CHECKPOINT, PEAK_DBFS, ROOT, NonFiniteAudio, finalize_audio, render,
                      resolve_checkpoint, transfer_audio)
from utils import (HelpFormatter, UserError, add_device_arguments, apply_threads, atomic_path, check_output_path,
                   pick_device, run_main)

METRICS = ("mss", "f0_cents", "rpa", "loud_l1_db")


# ------------------------------------------------------------------------------------------------
# Baseline
# ------------------------------------------------------------------------------------------------

_UNIT_SINE: dict = {}


def unit_sine_loudness() -> tuple[np.ndarray, np.ndarray]:
    """(frequencies Hz [N], loudness dB [N]) of steady unit-amplitude sines, 4 per semitone, 40-2200 Hz."""
    if not _UNIT_SINE:
        freqs = 40.0 * 2.0 ** (np.arange(0, 12 * math.log2(2200 / 40) * 4 + 1) / 48.0)
        t = np.arange(4096) / features.SAMPLE_RATE
        sines = np.sin(2 * np.pi * freqs[:, None] * t[None, :]).astype(np.float32)
        loud = features.compute_loudness(sines)  # [N, 64]
        _UNIT_SINE["table"] = (freqs, np.median(loud[:, 16:-16], axis=1).astype(np.float64))
    return _UNIT_SINE["table"]


def sine_baseline(f0_hz: np.ndarray, loudness_db: np.ndarray) -> np.ndarray:
    """Sine at f0 whose A-weighted loudness follows `loudness_db` frame by frame (module docstring).

    f0_hz, loudness_db: [F]. Returns float32 [F*hop] at 16 kHz.
    """
    import synth

    freqs, l1 = unit_sine_loudness()
    f0 = np.asarray(f0_hz, np.float64)
    ref = np.interp(np.log(np.maximum(f0, 1e-3)), np.log(freqs), l1)
    amp = 10.0 ** ((np.asarray(loudness_db, np.float64) - ref) / 20.0)
    osc = synth.HarmonicSynthesizer(1, features.SAMPLE_RATE, features.HOP, learn_inharmonicity=False,
                                    initial_inharmonicity=0.0)
    with torch.no_grad():
        a = torch.as_tensor(amp, dtype=torch.float32)[None, :, None]
        y = osc(a, torch.ones_like(a), torch.as_tensor(f0, dtype=torch.float32)[None, :, None])
    return y[0].numpy()


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------

def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def mss_distance(a: np.ndarray, b: np.ndarray, loss_fn=None) -> float:
    """loss.MultiResolutionSTFTLoss between two [T] signals (cut to the shorter one)."""
    import loss

    fn = loss_fn or loss.MultiResolutionSTFTLoss()
    n = min(a.size, b.size)
    with torch.no_grad():
        return float(fn(torch.as_tensor(a[:n], dtype=torch.float32)[None],
                        torch.as_tensor(b[:n], dtype=torch.float32)[None]))


def raw_pitch_accuracy(note: np.ndarray, f0_ref: np.ndarray, voiced_out: np.ndarray, f0_out: np.ndarray) -> float | None:
    """mir_eval.melody.raw_pitch_accuracy at 50 cents over the reference's note frames ([F] bool, Hz, bool,
    Hz); None without note frames (nothing to measure). mir_eval's warning for an output without voiced
    frames (an expected result: RPA 0) is silenced."""
    import mir_eval

    if not np.any(note):
        return None
    ref_cent = mir_eval.melody.hz2cents(np.where(note, f0_ref, 0.0).astype(np.float64))
    est_cent = mir_eval.melody.hz2cents(np.asarray(f0_out, np.float64))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated melody has no voiced frames", category=UserWarning)
        return float(mir_eval.melody.raw_pitch_accuracy(np.asarray(note, np.float64), ref_cent,
                                                        np.asarray(voiced_out, np.float64), est_cent, 50.0))


def resynthesis_metrics(reference: np.ndarray, output: np.ndarray, f0_ref: np.ndarray, loud_ref: np.ndarray,
                        note: np.ndarray, crepe: str = "tiny", device="cpu", loss_fn=None) -> dict:
    """mss, f0_cents, rpa, loud_l1_db (module docstring) of `output` against `reference` ([T] 16 kHz),
    given the reference's f0 [F], loudness [F] and note mask [F]; None where a metric has no frames."""
    output = np.asarray(output, np.float32)[: reference.size]
    f0_out, per_out = features.compute_f0(output, crepe, device)
    loud_out = features.compute_loudness(output)
    note = np.asarray(note, bool)
    voiced_out = per_out >= features.VOICED_THRESHOLD
    voiced = note & voiced_out
    cents = 1200.0 * np.abs(np.log2(f0_out / f0_ref))
    return {
        "mss": mss_distance(output, reference, loss_fn),
        "f0_cents": _finite(float(np.median(cents[voiced]))) if voiced.any() else None,
        "rpa": raw_pitch_accuracy(note, f0_ref, voiced_out, f0_out),
        "loud_l1_db": _finite(float(np.mean(np.abs(loud_out[note] - loud_ref[note])))) if note.any() else None,
        "voiced_frames": int(voiced.sum()),
        "note_frames": int(note.sum()),
    }


# Onset detector of the output (independent of the transfer's note list): librosa's spectral flux on a
# 64-band log-mel spectrogram of short (32 ms) frames, lag 1 frame, no frequency max-filter; peaks picked
# on the raw (not normalised) envelope, so steady noise gives no onsets. Chosen once on the guitar targets
# of the tuning half (FluidR3 and TimGM6mb renderings) and white noise, for the smallest timing bias
# among the settings that find every target onset: docs/experiments.md, "Onset detector".
ONSET_N_FFT = 512             # samples (32 ms); librosa's default 2048 (128 ms) put onsets 20-35 ms late
ONSET_HOP = 128               # samples (8 ms)
ONSET_LAG = 1                 # frames between the compared spectra
ONSET_N_MELS = 64
ONSET_DELTA = 2.5             # peak must exceed the local mean envelope by this much (dB-flux units)
ONSET_WAIT_S = 0.05           # at most one onset per 50 ms
ONSET_WINDOW_S = 0.05         # mir_eval.onset.f_measure tolerance
PITCH_TRIM_S = 0.03           # raw pitch accuracy skips this much at each end of a MIDI note


def onset_times(audio: np.ndarray, sr: int = features.SAMPLE_RATE) -> np.ndarray:
    """Onsets of any audio [T] (float, any level), seconds [n]: librosa.onset.onset_detect on the constants
    above. Used on the transfer output, the voice input and the guitar target alike."""
    import librosa

    x = np.asarray(audio, np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0:
        return np.zeros(0)
    x = x * (10.0 ** (PEAK_DBFS / 20.0) / peak)  # same level rule as the transfer output
    env = librosa.onset.onset_strength(y=x, sr=sr, n_fft=ONSET_N_FFT, hop_length=ONSET_HOP, lag=ONSET_LAG,
                                       max_size=1, n_mels=ONSET_N_MELS, fmax=sr / 2)
    wait = int(round(ONSET_WAIT_S * sr / ONSET_HOP))
    return librosa.onset.onset_detect(onset_envelope=env, sr=sr, hop_length=ONSET_HOP, normalize=False,
                                      delta=ONSET_DELTA, wait=wait, pre_max=3, post_max=3, pre_avg=10,
                                      post_avg=10, units="time")


def onset_f_measure(reference_s: np.ndarray, estimated_s: np.ndarray, window_s: float = ONSET_WINDOW_S) -> float:
    """mir_eval.onset.f_measure (window `window_s`) of estimated onsets against reference onsets (seconds);
    0.0 when either list is empty (mir_eval's warning silenced)."""
    import mir_eval

    ref, est = np.sort(np.asarray(reference_s, np.float64)), np.sort(np.asarray(estimated_s, np.float64))
    if ref.size == 0 or est.size == 0:
        return 0.0
    return float(mir_eval.onset.f_measure(ref, est, window=window_s)[0])


def load_truth(target: Path) -> dict | None:
    """The MIDI truth next to a target (make_soundfont_data.py's `<stem>.json`), or None without one."""
    path = Path(target).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        meta["notes"] = [dict(onset_s=float(n["onset_s"]), offset_s=float(n["offset_s"]), pitch=float(n["pitch"]))
                         for n in meta["notes"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a make_soundfont_data.py truth file ({e}); remove it or regenerate") from None
    return meta


def truth_f0(truth_notes: list[dict], n_frames: int, trim_s: float = PITCH_TRIM_S) -> np.ndarray:
    """The MIDI truth as a frame pitch track: [n_frames] Hz at features.FRAME_RATE, the note's pitch inside
    each note (its first and last `trim_s` left out: the pitch there is by definition between notes), 0
    elsewhere."""
    f0 = np.zeros(int(n_frames))
    for n in truth_notes:
        a = int(math.ceil((n["onset_s"] + trim_s) * features.FRAME_RATE))
        b = int(math.floor((n["offset_s"] - trim_s) * features.FRAME_RATE))
        if b > a:
            f0[max(a, 0):min(b, n_frames)] = float(features.midi_to_hz(n["pitch"]))
    return f0


def truth_pitch_accuracy(truth_notes: list[dict], f0_hz: np.ndarray) -> float | None:
    """Raw pitch accuracy (mir_eval, 50 cents) of a pitch track [F] Hz against the MIDI truth's note frames
    (`truth_f0`); every frame of the track counts as voiced (a silent or noisy frame fails on its pitch)."""
    ref = truth_f0(truth_notes, len(f0_hz))
    note = ref > 0
    return raw_pitch_accuracy(note, np.where(note, ref, 1.0), np.ones(len(f0_hz), bool), np.asarray(f0_hz))


def split_half(name: str) -> str:
    """'tune' or 'test', deterministic by file name: the parity of zlib.crc32 of the name's stem."""
    import zlib

    return "tune" if zlib.crc32(Path(name).stem.encode()) % 2 == 0 else "test"


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _reduction(model: float | None, base: float | None) -> float | None:
    return None if model is None or not base else 100.0 * (1.0 - model / base)


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------

class Progress:
    """One line per finished file on stderr: count, time taken, and the expected time left (the time per
    second of audio so far times the audio still to do), so a long `--crepe full` run shows in a log."""

    def __init__(self, label: str, paths: list[Path]):
        self.label, self.seconds = label, [audio_seconds(p) for p in paths]
        self.done, self.done_s, self.t0 = 0, 0.0, time.perf_counter()

    def step(self, name: str, status: str = "done") -> None:
        self.done_s += self.seconds[self.done]
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        left = sum(self.seconds[self.done:]) * elapsed / self.done_s if self.done_s > 0 else float("nan")
        eta = f", about {_duration(left)} left" if self.done < len(self.seconds) and math.isfinite(left) else ""
        print(f"{self.label} {self.done}/{len(self.seconds)}: {name} {status} ({_duration(elapsed)} so far{eta})",
              file=sys.stderr, flush=True)


def audio_seconds(path: Path) -> float:
    """Duration of an audio file from its header (0 if soundfile cannot read it)."""
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:  # unreadable files are reported when they are loaded
        return 0.0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found; pass an existing folder of audio files")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in features.AUDIO_EXTENSIONS and p.is_file())


def resynthesize_file(model, path: Path, name: str, args, device, loss_fn) -> dict:
    """One file's resynthesis row (model and baseline metrics). UserError for an unusable file."""
    audio = features.load_audio(path)
    loud = features.check_audio(audio, name)
    feats = features.extract_features_bounded(audio, args.crepe, device, progress=False, loudness_db=loud)
    f0, loud, per = (feats[k].numpy() for k in ("f0_hz", "loudness_db", "periodicity"))
    note = notes.detect_notes(per, loud)
    out = render(model, f0, loud, args.chunk_frames, args.seed, progress=False)[: audio.size]
    base = sine_baseline(f0, loud)[: audio.size]
    m = resynthesis_metrics(audio, out, f0, loud, note, args.crepe, device, loss_fn)
    b = resynthesis_metrics(audio, base, f0, loud, note, args.crepe, device, loss_fn)
    return {"file": name, "seconds": audio.size / features.SAMPLE_RATE, "model": m, "baseline": b,
            "mss_reduction_pct": _reduction(m["mss"], b["mss"])}


def evaluate_resynthesis(model, files: list[Path], root: Path, args, device) -> dict:
    import loss

    loss_fn = loss.MultiResolutionSTFTLoss()
    rows, skipped = [], []
    progress = Progress("resynthesis", files)
    for path in files:
        name = str(path.relative_to(root))
        try:
            rows.append(resynthesize_file(model, path, name, args, device, loss_fn))
            progress.step(name)
        except NonFiniteAudio:
            raise
        except UserError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped.append({"file": name, "reason": str(e)})
            progress.step(name, "skipped")
    if not rows:
        raise UserError(f"{root}: no usable audio file (see the lines above); give speech-free pitched audio")
    mean = {k: {m: _mean([r[k] for r in rows], m) for m in METRICS} for k in ("model", "baseline")}
    mean["mss_reduction_pct"] = _reduction(mean["model"]["mss"], mean["baseline"]["mss"])
    return {"files": rows, "mean": mean, "skipped": skipped}


def match_pairs(dir_a: Path, dir_b: Path) -> list[tuple[str, Path, Path]]:
    """(stem, input, target) for every name stem present in both folders (extensions may differ)."""
    a = {p.relative_to(dir_a).with_suffix("").as_posix(): p for p in audio_files(dir_a)}
    b = {p.relative_to(dir_b).with_suffix("").as_posix(): p for p in audio_files(dir_b)}
    common = sorted(set(a) & set(b))
    if not common:
        raise UserError(f"{dir_a} and {dir_b}: no file names in common; name each input like its target "
                        f"(e.g. melody1.wav in both)")
    return [(k, a[k], b[k]) for k in common]


def voice_label(src: Path) -> str:
    """The voice of an input: `program NN name` from its make_soundfont_data.py JSON, else its folder name."""
    meta = Path(src).with_suffix(".json")
    try:
        m = json.loads(meta.read_text())
        return f"program {int(m['program'])} {m.get('program_name', '')}".strip()
    except (OSError, ValueError, KeyError, TypeError):
        return Path(src).parent.name


def collect_pairs(input_dirs: list[Path], target_dir: Path, half: str = "all") -> list[tuple[str, Path, Path]]:
    """`match_pairs` of each input folder with the target folder (names prefixed by the input folder's
    name when there are several), kept when `split_half` of the stem is `half` ('all': every pair)."""
    pairs = []
    for d in input_dirs:
        for name, src, tgt in match_pairs(d, target_dir):
            if half == "all" or split_half(name) == half:
                pairs.append((f"{Path(d).name}/{name}" if len(input_dirs) > 1 else name, src, tgt))
    if not pairs:
        raise UserError(f"{target_dir}: no pair in the {half} half; use --half all")
    return pairs


def note_metrics(x: np.ndarray, out: np.ndarray, target: np.ndarray, f0_in: np.ndarray, truth: dict,
                 args, device) -> dict:
    """Note placement against the MIDI truth: onset F-measure (`onset_times`, `onset_f_measure`) of the
    output, the voice input and the guitar target, and raw pitch accuracy (`truth_pitch_accuracy`) of the
    output (CREPE `args.pitch_crepe` on it) and of the input (its CREPE f0 [F], as the transfer saw it)."""
    ref_on = np.array([n["onset_s"] for n in truth["notes"]])
    f0_out, _ = features.compute_f0(out, args.pitch_crepe, device)
    return {"onset_f_output": onset_f_measure(ref_on, onset_times(out)),
            "onset_f_input": onset_f_measure(ref_on, onset_times(x)),
            "onset_f_target": onset_f_measure(ref_on, onset_times(target)),
            "rpa_output": truth_pitch_accuracy(truth["notes"], f0_out),
            "rpa_input": truth_pitch_accuracy(truth["notes"], f0_in),
            "n_notes": len(ref_on)}


PAIR_METRICS = ("mss_output_target", "mss_input_target", "onset_f_output", "onset_f_input", "onset_f_target",
                "rpa_output", "rpa_input")


def pair_row(model, name: str, src: Path, tgt: Path, settings, args, device, loss_fn) -> dict:
    """One pair's row: MSS output->target and input->target (both peak-normalised, cut to the shorter),
    and with a MIDI truth next to the target, `note_metrics`. Raises UserError for an unusable input."""
    x = features.load_audio(src)
    target = features.load_audio(tgt)
    res = transfer_audio(model, x, str(src), settings, args.crepe, device, args.chunk_frames, args.seed,
                         progress=False)
    out = finalize_audio(res["audio"])[0]
    x_n, t_n = finalize_audio(x)[0], finalize_audio(target)[0]
    d_out, d_in = mss_distance(out, t_n, loss_fn), mss_distance(x_n, t_n, loss_fn)
    row = {"name": name, "input": str(src), "target": str(tgt), "voice": voice_label(src),
           "half": split_half(name), "mss_output_target": d_out, "mss_input_target": d_in,
           "reduction_pct": _reduction(d_out, d_in), "octave": res["info"]["octave"],
           "envelope": res["info"]["envelope"]}
    truth = load_truth(tgt)
    if truth is not None:
        row.update(note_metrics(x_n, out, t_n, res["features"]["f0_hz"].numpy(), truth, args, device))
    return row


def summarize(rows: list[dict]) -> dict:
    """Mean of each PAIR_METRICS over rows (None where no row has it), and the ratio of the mean MSS
    output->target to the mean MSS input->target."""
    mean = {k: _mean(rows, k) for k in PAIR_METRICS}
    mean["reduction_pct"] = _reduction(mean["mss_output_target"], mean["mss_input_target"])
    mean["mss_ratio"] = (None if not mean["mss_input_target"] else mean["mss_output_target"] / mean["mss_input_target"])
    mean["n"] = len(rows)
    return mean


def evaluate_pairs(model, pairs, args, device) -> dict:
    import loss

    loss_fn = loss.MultiResolutionSTFTLoss()
    rows, skipped = [], []
    settings = notes.adjust_settings(args)
    progress = Progress("pairs", [src for _, src, _ in pairs])
    for name, src, tgt in pairs:
        try:
            rows.append(pair_row(model, name, src, tgt, settings, args, device, loss_fn))
        except NonFiniteAudio:
            raise
        except UserError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped.append({"name": name, "reason": str(e)})
            progress.step(name, "skipped")
            continue
        progress.step(name)
    if not rows:
        raise UserError("no usable pair (see the lines above)")
    voices = sorted({r["voice"] for r in rows})
    by_voice = {v: summarize([r for r in rows if r["voice"] == v]) for v in voices}
    return {"files": rows, "mean": summarize(rows), "by_voice": by_voice, "skipped": skipped}


# ------------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------------

def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def print_resynthesis(res: dict) -> None:
    head = (f"{'file':<40} {'MSS model':>9} {'MSS sine':>9} {'gain %':>7} {'f0 c':>6} {'f0 c sine':>9} "
            f"{'RPA':>5} {'RPA sine':>8} {'loud dB':>7} {'loud sine':>9}")
    print("Resynthesis (model vs sine baseline; MSS lower is better)")
    print(head)
    print("-" * len(head))

    def line(label, m, b, red):
        print(f"{label[-40:]:<40} {_fmt(m['mss']):>9} {_fmt(b['mss']):>9} {_fmt(red, '.1f'):>7} "
              f"{_fmt(m['f0_cents'], '.1f'):>6} {_fmt(b['f0_cents'], '.1f'):>9} {_fmt(m['rpa'], '.2f'):>5} "
              f"{_fmt(b['rpa'], '.2f'):>8} {_fmt(m['loud_l1_db'], '.2f'):>7} {_fmt(b['loud_l1_db'], '.2f'):>9}")

    for r in res["files"]:
        line(r["file"], r["model"], r["baseline"], r["mss_reduction_pct"])
    print("-" * len(head))
    line(f"mean of {len(res['files'])} files", res["mean"]["model"], res["mean"]["baseline"],
         res["mean"]["mss_reduction_pct"])


def print_pairs(res: dict) -> None:
    head = (f"{'pair':<40} {'MSS out':>8} {'MSS in':>7} {'ratio':>6} {'onF out':>7} {'onF in':>6} {'onF tgt':>7} "
            f"{'RPA out':>7} {'RPA in':>6}")
    print("Transfer pairs (MSS to the target guitar, lower is better; onset F-measure (50 ms) and raw pitch "
          "accuracy (50 cents) against the MIDI truth, higher is better)")
    print(head)
    print("-" * len(head))

    def line(label, r):
        ratio = r.get("mss_ratio")
        if ratio is None and r.get("mss_input_target"):
            ratio = r["mss_output_target"] / r["mss_input_target"]
        print(f"{label[-40:]:<40} {_fmt(r['mss_output_target']):>8} {_fmt(r['mss_input_target']):>7} "
              f"{_fmt(ratio, '.2f'):>6} {_fmt(r.get('onset_f_output'), '.2f'):>7} "
              f"{_fmt(r.get('onset_f_input'), '.2f'):>6} {_fmt(r.get('onset_f_target'), '.2f'):>7} "
              f"{_fmt(r.get('rpa_output'), '.3f'):>7} {_fmt(r.get('rpa_input'), '.3f'):>6}")

    for r in res["files"]:
        line(r["name"], r)
    print("-" * len(head))
    for voice, m in res.get("by_voice", {}).items():
        line(f"mean, {voice} ({m['n']})", m)
    line(f"mean of {len(res['files'])} pairs", res["mean"])


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help=f"model checkpoint; default: the bundled {DEFAULT_CHECKPOINT.relative_to(ROOT)}")
    p.add_argument("--audio_dir", default=None, help="folder of audio files to resynthesise (searched recursively)")
    p.add_argument("--pairs", nargs="*", metavar="DIR", default=None,
                   help="transfer pairs: INPUT_DIR [INPUT_DIR ...] TARGET_DIR (the last folder holds the targets; "
                        "several input folders, e.g. one per voice), or no value with --input_dir/--target_dir")
    p.add_argument("--half", choices=("all", "tune", "test"), default="all",
                   help="pairs: only the tuning or the test half (split by file name, evaluate.split_half)")
    p.add_argument("--input_dir", default=None, help="pairs: folder of inputs (e.g. voice)")
    p.add_argument("--target_dir", default=None, help="pairs: folder of targets with the same names (e.g. guitar)")
    p.add_argument("--crepe", choices=("tiny", "full"), default="tiny",
                   help="CREPE model for features (the transfer's input, as transfer.py --crepe) and for the "
                        "resynthesis output's pitch: tiny (default, fast) or full (accurate)")
    p.add_argument("--pitch_crepe", choices=("tiny", "full"), default="full",
                   help="pairs: CREPE model that measures the transfer output's pitch against the MIDI truth "
                        "(full: the accurate reference; tiny: ~10x faster)")
    adjust = p.add_argument_group("pairs: transfer auto-adjust (as in transfer.py)")
    notes.add_adjust_arguments(adjust)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N files / pairs")
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    p.add_argument("--chunk_frames", type=int, default=CHUNK_FRAMES, help="frames rendered per chunk")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthesizer's noise")
    add_device_arguments(p, threads=os.cpu_count() or 1,
                         threads_help="Batch work (CREPE over many files): all cores by default.")
    return p


def parse_pair_dirs(args) -> list[Path] | None:
    """The --pairs folders, inputs first and the target folder last (from --pairs A [A2 ...] B or
    --input_dir/--target_dir), None without --pairs."""
    if args.pairs is None:
        if args.input_dir or args.target_dir:
            raise UserError("--input_dir/--target_dir belong to --pairs; add --pairs")
        return None
    if len(args.pairs) >= 2:
        return [Path(d) for d in args.pairs]
    if not args.pairs and args.input_dir and args.target_dir:
        return [Path(args.input_dir), Path(args.target_dir)]
    raise UserError("--pairs needs two folders (--pairs INPUT_DIR TARGET_DIR) or --input_dir and --target_dir")


def finite_or_null(x):
    """A copy of a JSON-able structure with every non-finite float (NaN, Inf) replaced by None (null)."""
    if isinstance(x, dict):
        return {k: finite_or_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_null(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    pair_dirs = parse_pair_dirs(args)
    if args.audio_dir is None and pair_dirs is None:
        raise UserError("nothing to evaluate: give --audio_dir DIR and/or --pairs INPUT_DIR TARGET_DIR")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    ckpt = resolve_checkpoint(args.checkpoint)
    if args.json:
        check_output_path(args.json, "--json")
    files = audio_files(Path(args.audio_dir))[: args.limit] if args.audio_dir is not None else None
    if files is not None and not files:
        raise UserError(f"{args.audio_dir}: no audio files ({', '.join(features.AUDIO_EXTENSIONS)}) found")
    pairs = collect_pairs(pair_dirs[:-1], pair_dirs[-1], args.half)[: args.limit] if pair_dirs is not None else None
    device = pick_device(args.device)
    apply_threads(args.threads)
    from model import load_model

    model = load_model(ckpt, device)
    report = {"checkpoint": str(ckpt), "crepe": args.crepe, "pitch_crepe": args.pitch_crepe, "device": str(device),
              "baseline": "sine at the input f0, per-frame amplitude matching the input's A-weighted loudness",
              "metrics": {"mss": "loss.MultiResolutionSTFTLoss, lower is better",
                          "f0_cents": "median |cents| output vs input f0 on note frames voiced in the output",
                          "rpa": "mir_eval raw pitch accuracy at 50 cents over the input's note frames "
                                 "(null without note frames)",
                          "loud_l1_db": "mean |loudness difference| in dB over note frames"}}
    try:
        if files is not None:
            report["resynthesis"] = evaluate_resynthesis(model, files, Path(args.audio_dir), args, device)
            print_resynthesis(report["resynthesis"])
        if pairs is not None:
            report["pairs"] = evaluate_pairs(model, pairs, args, device)
            print("\n" if files is not None else "", end="")
            print_pairs(report["pairs"])
    except NonFiniteAudio as e:
        raise UserError(f"{ckpt}: {e}") from None
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(finite_or_null(report), indent=2, allow_nan=False))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
