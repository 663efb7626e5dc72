"""Small helpers shared by every script: atomic writes, device choice, CLI error handling.

One definition each; scripts import these instead of re-implementing them.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
    """An error caused by the user's input (bad file, missing folder, wrong flag).

    Scripts raise it with one line that names the file and the fix; `run_main` prints it to stderr
    and exits 1, without a traceback.
    """


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same directory as `path`; on success move it over `path`.

    The temporary file is created next to the target so `os.replace` is an atomic rename on the
    same filesystem. On any exception (including KeyboardInterrupt) the temporary file is removed
    and `path` is left exactly as it was: a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file a normal mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_output_path(path: str | os.PathLike, flag: str, is_dir: bool = False) -> Path:
    """Check, before any work, that `path` can be written as an output file (or folder, `is_dir`).

    Raises UserError (one line naming `flag`, the path and the fix) when a parent is an existing file,
    a file is wanted where a folder exists (or the reverse), or the nearest existing folder cannot be
    written to (permission, read-only file system): probed with `os.access` and by creating and removing
    a temporary file there, since root passes permission checks but not a read-only mount. Nothing is
    left behind; folders are not created here. Returns `Path(path)`.
    """
    p = Path(path)
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != p and not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; choose a location under a folder")
    if existing == p and p.is_dir() != is_dir:
        what = "is a folder; give a file name" if p.is_dir() else "is a file; give a folder"
        raise UserError(f"{flag} {path}: {what}")
    folder = existing if existing.is_dir() else existing.parent
    try:
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "permission denied")
        fd, probe = tempfile.mkstemp(prefix=".write-test-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {folder}/ ({e.strerror or e}); "
                        f"choose a writable location") from None
    return p


@contextmanager
def seeded_eval(model, seed: int, device: torch.device) -> Iterator:
    """`model` in eval mode under a forked RNG seeded with `seed` (CPU, and `device` when CUDA), back in
    train mode afterwards: evaluation whose noise is the same every time and leaves the caller's random
    stream untouched (validation, W&B audio examples)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield model
    finally:
        model.train()


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` that never leaves a partial file at `path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint or feature file safely (`weights_only=True`: tensors, numbers, strings,
    lists and dicts only, no pickled code)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def atomic_write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio `[T]` (range -1..1) as 16-bit PCM WAV, atomically."""
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float32)
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda if available else cpu; `cpu`/`cuda`/`cuda:N` as given.

    Raises UserError when cuda is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform's description."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_device_arguments(parser, threads: int, threads_help: str,
                         device_help: str = "auto | cpu | cuda (auto = cuda if available)") -> None:
    """`--device` and `--threads` (CPU threads for torch ops; 0 = torch's default, one per core)."""
    parser.add_argument("--device", default="auto", help=device_help)
    parser.add_argument("--threads", type=int, default=threads,
                        help="CPU threads for torch (0 = torch's default, one per core). " + threads_help)


def apply_threads(threads: int) -> None:
    """torch.set_num_threads(threads) when threads > 0."""
    if threads > 0:
        torch.set_num_threads(threads)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults in --help and keeps the description's line breaks."""


def run_main(main: Callable[[list[str] | None], int | None]) -> None:
    """Run a script's `main()` with the project's exit-code convention.

    0 on success (or main's return value), 1 with one line on stderr for a UserError, 130 on CTRL+C.
    """
    try:
        code = main(None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class GracefulStop:
    """SIGINT/SIGTERM -> `requested` becomes True (a loop finishes its step, saves, exits 130), with one
    line `<SIGNAL>: <action> (press CTRL+C again to quit at once)`. A second signal raises
    KeyboardInterrupt at once. Under torchrun the launcher forwards the terminal's CTRL+C again, so repeats
    within `grace_s` of the first are ignored there."""

    def __init__(self, grace_s: float = 0.0, say=print, action: str = "stopping after this step"):
        self.requested, self.first_at, self.grace_s, self.say, self.action = False, 0.0, grace_s, say, action
        self.previous = {}

    def _handler(self, signum, frame):
        now = time.monotonic()
        if not self.requested:
            self.requested, self.first_at = True, now
            self.say(f"{signal.Signals(signum).name}: {self.action} (press CTRL+C again to quit at once)")
        elif now - self.first_at >= self.grace_s:
            raise KeyboardInterrupt

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
