"""Turn a folder of audio files into feature files for training: one `<name>.pt` per audio file.

    ./venv/bin/python preprocess.py --input_dir data/raw/guitarset
    -> data/processed/guitarset/<same sub-folders>/<name>.pt

Each `.pt` is a plain dict (load with utils.torch_load): audio float32 [T] at 16 kHz, f0_hz / periodicity /
loudness_db float32 [F] (F = ceil(T / 64), see features.py), sample_rate, frame_rate, hop, source (path
relative to --input_dir), crepe_model, crepe_hop, version.

Safe to stop and run again: outputs are written atomically, and an output that already loads with the
right version, keys and CREPE model is skipped (a corrupt or partial one is redone). Large sets can be split
over processes or machines with --shard i/n (file j of the sorted list goes to shard j % n).
Bad inputs (unreadable, empty, too short, silent) are reported and skipped; the exit status is 1 only when
nothing usable exists at the end.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

import features as fx
from utils import (HelpFormatter, UserError, add_device_arguments, apply_threads, atomic_torch_save,
                   check_output_path, pick_device, run_main, torch_load)

REQUIRED_KEYS = ("audio", "f0_hz", "periodicity", "loudness_db", "sample_rate", "frame_rate", "hop", "source",
                 "crepe_model", "version")


def find_audio_files(input_dir: Path) -> list[Path]:
    """Audio files under `input_dir` (recursive, extensions case-insensitive), sorted by relative path."""
    files = [p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in fx.AUDIO_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(input_dir).as_posix())


def output_paths(files: list[Path], input_dir: Path, output_dir: Path) -> list[Path]:
    """`<output_dir>/<relative folder>/<stem>.pt`; when two inputs share a stem in one folder (a.wav, a.flac)
    both keep their extension instead (a.wav.pt, a.flac.pt)."""
    rel = [f.relative_to(input_dir) for f in files]
    stems: dict[Path, int] = {}
    for r in rel:
        stems[r.with_suffix("")] = stems.get(r.with_suffix(""), 0) + 1
    return [output_dir / (r.with_suffix(".pt") if stems[r.with_suffix("")] == 1 else r.parent / (r.name + ".pt"))
            for r in rel]


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n, or UserError."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text}: expected i/n with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need n >= 1 and 0 <= i < n, e.g. 0/4 ... 3/4")
    return i, n


def is_valid_output(path: Path, crepe_model: str, source: str | None = None) -> bool:
    """True when `path` loads safely and is a complete feature file of this version for `crepe_model`."""
    if not path.is_file():
        return False
    try:
        d = torch_load(path)
    except Exception:
        return False
    if not isinstance(d, dict) or any(k not in d for k in REQUIRED_KEYS):
        return False
    if d["version"] != fx.FEATURE_VERSION or d["crepe_model"] != crepe_model:
        return False
    if source is not None and d["source"] != source:
        return False
    try:
        F = fx.n_frames(d["audio"].shape[-1])
        return all(d[k].ndim == 1 and d[k].shape[0] == F for k in ("f0_hz", "periodicity", "loudness_db"))
    except Exception:
        return False


def remove_stale_tmp(out_path: Path) -> None:
    """Delete temporary files a killed run left for this output (utils.atomic_path names them
    `.<name>.<random>.tmp`)."""
    if out_path.parent.is_dir():
        for tmp in out_path.parent.glob(f".{out_path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def load_and_check(path: Path, min_seconds: float):
    """Worker job: load audio, compute loudness, reject unusable inputs. Returns (audio, loudness) or a reason."""
    try:
        audio = fx.load_audio(path)
    except UserError as e:
        return str(e).removeprefix(f"{path}: ")
    seconds = audio.shape[0] / fx.SAMPLE_RATE
    if seconds < min_seconds:
        return f"too short ({audio.shape[0]} samples = {seconds:.4f} s < --min_seconds {min_seconds})"
    loud = fx.compute_loudness(audio)
    peak = float(loud.max())
    if peak < fx.SILENCE_DB:
        return f"silent (loudest frame {peak:.1f} dB < {fx.SILENCE_DB:.0f} dB)"
    return audio, loud


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--input_dir", required=True, help="folder with .wav/.flac/.ogg/.aiff files (searched recursively)")
    p.add_argument("--output_dir", default=None, help="where the .pt files go (None = data/processed/<input_dir name>)")
    p.add_argument("--model", choices=("full", "tiny"), default="full", help="CREPE model capacity")
    add_device_arguments(p, threads=0, threads_help="CREPE runs on torch: its convolutions over a batch of "
                         "frames use every core")
    p.add_argument("--batch_size", type=int, default=fx.CREPE_BATCH_SIZE, help="CREPE frames per forward pass")
    p.add_argument("--crepe_hop", type=int, default=fx.CREPE_HOP,
                   help="samples between CREPE evaluations (64 = every control frame; 160 = 10 ms, see features.py)")
    p.add_argument("--workers", type=int, default=1,
                   help="threads that load audio and compute loudness ahead of CREPE (0 = do it inline)")
    p.add_argument("--shard", default="0/1", help="process only files j with j %% n == i (i/n, 0-based)")
    p.add_argument("--min_seconds", type=float, default=0.1, help="inputs shorter than this are skipped as too short")
    return p


def check_args(args) -> tuple[Path, Path, int, int]:
    """Validate the flags before any work: (input_dir, output_dir, shard_i, shard_n), or UserError."""
    input_dir = Path(args.input_dir)
    if not input_dir.is_dir():
        raise UserError(f"--input_dir {input_dir}: folder not found; pass a folder of audio files "
                        "(e.g. data/raw/guitarset after download_data.py)")
    output_dir = Path(args.output_dir) if args.output_dir else Path("data/processed") / input_dir.resolve().name
    check_output_path(output_dir, "--output_dir", is_dir=True)
    shard_i, shard_n = parse_shard(args.shard)
    if args.batch_size < 1 or args.crepe_hop < 1 or args.workers < 0:
        raise UserError("--batch_size and --crepe_hop must be >= 1 and --workers >= 0")
    return input_dir, output_dir, shard_i, shard_n


def split_done(jobs: list[tuple[Path, Path]], input_dir: Path, crepe_model: str) -> tuple[list, list]:
    """(todo, skipped) lists of (audio path, output path, source): outputs that already load as valid
    feature files are skipped; stale temporary files of a killed run are removed on the way."""
    todo, skipped = [], []
    for f, o in jobs:
        remove_stale_tmp(o)
        src = f.relative_to(input_dir).as_posix()
        (skipped if is_valid_output(o, crepe_model, src) else todo).append((f, o, src))
    return todo, skipped


def loaded(todo: list, workers: int, min_seconds: float) -> Iterator[tuple[tuple, object]]:
    """Yield (item, load_and_check result) for each item of `todo`, in order. With `workers` > 0 threads
    load the next few files while the caller runs CREPE (bounded prefetch: a few files in memory)."""
    if workers == 0:
        for item in todo:
            yield item, load_and_check(item[0], min_seconds)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        queue, items = deque(), iter(todo)
        for item in itertools.islice(items, workers + 1):
            queue.append((item, pool.submit(load_and_check, item[0], min_seconds)))
        while queue:
            item, fut = queue.popleft()
            nxt = next(items, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(load_and_check, nxt[0], min_seconds)))
            yield item, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def feature_record(path: Path, audio, loud, src: str, args, device) -> dict:
    """The feature file's dict for input `path` (audio float32 [T] at 16 kHz, its loudness in dB [F]; see
    the module docstring): runs CREPE."""
    try:
        feats = fx.extract_features(audio, args.model, device, args.batch_size, hop=args.crepe_hop,
                                    loudness_db=loud)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"{path}: CUDA out of memory in CREPE; rerun with a smaller --batch_size "
                        f"(now {args.batch_size})") from None
    return {
        "audio": torch.from_numpy(audio),
        **feats,
        "sample_rate": fx.SAMPLE_RATE,
        "frame_rate": fx.FRAME_RATE,
        "hop": fx.HOP,
        "source": src,
        "crepe_model": args.model,
        "crepe_hop": int(args.crepe_hop),
        "version": fx.FEATURE_VERSION,
    }


def save_record(record: dict, out_path: Path) -> None:
    """Write one feature file atomically; a failed write (disk full, ...) is a one-line UserError."""
    try:
        atomic_torch_save(record, out_path)
    except OSError as e:
        raise UserError(f"{out_path}: could not write it ({e.strerror or e}); free space or choose "
                        "another --output_dir") from None


def process(todo: list, args, device) -> tuple[list[str], list[tuple[str, str]], float]:
    """Load, check, run CREPE and save each (audio, output, source) of `todo`.
    Returns (sources done, [(source, why it failed)], seconds of audio processed)."""
    done, failed, audio_seconds = [], [], 0.0
    with tqdm(total=len(todo), desc="preprocess", unit="file", dynamic_ncols=True) as bar, \
            closing(loaded(todo, args.workers, args.min_seconds)) as results:  # closing: stop the threads now
        for (f, o, src), res in results:
            bar.set_postfix_str(src[-40:])
            if isinstance(res, str):
                failed.append((src, res))
                tqdm.write(f"failed {src}: {res}")
            else:
                audio, loud = res
                save_record(feature_record(f, audio, loud, src, args, device), o)
                done.append(src)
                audio_seconds += audio.shape[0] / fx.SAMPLE_RATE
            bar.update(1)
    return done, failed, audio_seconds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_dir, output_dir, shard_i, shard_n = check_args(args)
    device = pick_device(args.device)
    apply_threads(args.threads)

    all_files = find_audio_files(input_dir)
    if not all_files:
        raise UserError(f"--input_dir {input_dir}: no audio files ({', '.join(fx.AUDIO_EXTENSIONS)}) found")
    all_outs = output_paths(all_files, input_dir, output_dir)
    jobs = [(f, o) for j, (f, o) in enumerate(zip(all_files, all_outs)) if j % shard_n == shard_i]
    if not jobs:
        print(f"shard {shard_i}/{shard_n}: no files (the folder has {len(all_files)}); nothing to do")
        return 0
    todo, skipped = split_done(jobs, input_dir, args.model)
    print(f"{len(jobs)} audio files in shard {shard_i}/{shard_n} of {input_dir} -> {output_dir} "
          f"({len(skipped)} already done); CREPE {args.model} on {device}")

    t_start = time.perf_counter()
    done, failed, audio_seconds = process(todo, args, device)
    wall = time.perf_counter() - t_start
    speed = f", {audio_seconds:.1f} s of audio in {wall:.1f} s ({audio_seconds / max(wall, 1e-9):.2f}x real time)" \
        if done else ""
    print(f"done {len(done)}, skipped (already done) {len(skipped)}, failed {len(failed)}{speed}")
    for src, why in failed:
        print(f"  failed {src}: {why}")
    if not done and not skipped:
        print(f"error: no usable feature files in {output_dir}: every input in this shard failed (reasons above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
