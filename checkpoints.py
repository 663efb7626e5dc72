"""Training checkpoints on disk: write, read and check, RNG states, pruning, --fresh, stale temp files.

A training checkpoint (`latest.pth`, `model_epoch_N.pth`, `best.pth`) is a plain dict, loadable with
`weights_only=True`: model, optimizer, scheduler, scaler, epoch, step, batch_in_epoch, config, rng,
wandb_run_id, version, best_val_loss, nan_skipped, world_size, train_args, epoch_loss_sum,
epoch_loss_count (train.py `checkpoint_state` builds it). Every write is atomic (utils.atomic_path):
a reader never sees half a file, and a process killed mid-write leaves at most a temp file
`.<name>.<random>.tmp` beside it, which the next run removes (`remove_stale_temp_files`).
"""
from __future__ import annotations

import io
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from model import LEGACY_DEFAULTS
from utils import UserError, atomic_path, torch_load

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "config", "rng", "version")
# temp files utils.atomic_path leaves when killed while writing the checkpoints train.py writes
TEMP_PATTERNS = (".latest.pth.*.tmp", ".best.pth.*.tmp", ".model_epoch_*.pth.*.tmp")


def capture_rng() -> dict:
    """Python / NumPy / torch / CUDA RNG states as tensors and plain lists (loadable with weights_only)."""
    py = random.getstate()
    npy = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": npy[0], "keys": torch.from_numpy(npy[1].astype(np.int64)), "pos": int(npy[2]),
                  "has_gauss": int(npy[3]), "cached_gaussian": float(npy[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng`."""
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def write_checkpoint(state: dict, paths: list[Path]) -> None:
    """Serialise `state` once and write it to every path atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    for path in paths:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint written by `write_checkpoint`; UserError (one line, with the fix) for
    an unreadable file, a file that is not a training checkpoint, or another checkpoint version. Config
    keys added after the checkpoint was written get the value it was trained with (model.LEGACY_DEFAULTS),
    so resume compares like with like."""
    try:
        ckpt = torch_load(path)
    except Exception as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}); copy a model_epoch_N.pth over it to "
                        f"resume from there, or pass --fresh to start over") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise UserError(f"{path}: not a training checkpoint of this train.py; pass --fresh to start over "
                        f"(the old files are moved aside)")
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt['version']}, this train.py writes "
                        f"{CHECKPOINT_VERSION}; pass --fresh to start over")
    ckpt["config"] = {**LEGACY_DEFAULTS, **ckpt["config"]}
    return ckpt


def check_resume_conflicts(ckpt: dict, path: Path, model_flags: dict, train_args: dict) -> None:
    """UserError naming the flag when this command asks for another model or training setup than the
    checkpoint at `path` was trained with.

    model_flags: {config key: value asked for} (compared with ckpt["config"]);
    train_args: {flag: value asked for} (compared with ckpt["train_args"]; a key the checkpoint does not
    record, e.g. one added after it was written, is not compared).
    """
    recorded = ckpt.get("train_args", {})
    asked = [(k, ckpt["config"].get(k), v) for k, v in model_flags.items()]
    asked += [(k, recorded[k], v) for k, v in train_args.items() if k in recorded]
    for key, old, new in asked:
        if old != new:
            raise UserError(f"{path} was trained with --{key} {old} but this command asks for {new}; pass "
                            f"--{key} {old} to resume it, or --fresh to start a new run")


def load_state(optimizer, state_dict: dict, path: Path) -> None:
    """`optimizer.load_state_dict(state_dict)`; a mismatch (e.g. parameter groups of another model) becomes a
    one-line UserError naming `path` and the first mismatch, instead of a traceback. (The model's weights go
    through model.load_weights.)"""
    try:
        optimizer.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()),
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise UserError(f"{path}: its optimizer state does not match its config ({detail}); the file was "
                        f"edited or comes from another version: pass --fresh to start over") from None


def move_aside(ckpt_dir: Path) -> Path | None:
    """--fresh: move everything in ckpt_dir (except earlier old-* folders) into ckpt_dir/old-<time>/.
    Returns that folder, or None when there was nothing to move."""
    if not ckpt_dir.is_dir():
        return None
    entries = [p for p in ckpt_dir.iterdir() if not p.name.startswith("old-")]
    if not entries:
        return None
    dest = ckpt_dir / time.strftime("old-%Y%m%d-%H%M%S")
    n = 1
    while dest.exists():
        dest = ckpt_dir / f"{time.strftime('old-%Y%m%d-%H%M%S')}-{n}"
        n += 1
    dest.mkdir()
    for p in entries:
        shutil.move(str(p), str(dest / p.name))
    return dest


def prune_epoch_checkpoints(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` model_epoch_N.pth (by N); keep_last <= 0 keeps all."""
    if keep_last <= 0:
        return
    files = sorted(ckpt_dir.glob("model_epoch_*.pth"), key=epoch_number)
    for p in files[:-keep_last]:
        p.unlink(missing_ok=True)


def epoch_number(path: Path) -> int:
    """N of model_epoch_N.pth (-1 when the name has no number)."""
    try:
        return int(path.stem.rsplit("_", 1)[1])
    except ValueError:
        return -1


def remove_stale_temp_files(ckpt_dir: Path) -> tuple[int, int]:
    """Delete the temp files a process killed while writing a checkpoint left in ckpt_dir (TEMP_PATTERNS
    only: other files, other programs' temp files included, are never touched). Call it before this run
    writes anything. Returns (files removed, bytes freed)."""
    if not ckpt_dir.is_dir():
        return 0, 0
    stale = {p for pattern in TEMP_PATTERNS for p in ckpt_dir.glob(pattern) if p.is_file()}
    freed = 0
    for p in stale:
        freed += p.stat().st_size
        p.unlink(missing_ok=True)
    return len(stale), freed
