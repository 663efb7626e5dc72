"""Check that this machine can run Neural Guitar: a ✓/✗ list a new user can read.

Checks (each timed; one failing does not stop the others):
  * Python version (3.10+)
  * packages import, with their versions: torch, torchaudio, torchcrepe, numpy, librosa,
    soundfile, wandb (a version that differs from requirements.txt is shown with "!", still a pass)
  * device: the one --device picks (CUDA name, or CPU + thread count)
  * the model with the default config builds (parameter count)
  * one forward + backward pass on 1 s of audio gives a finite loss and finite gradients
  * CREPE full and tiny weights load and find 440 Hz in a 440 Hz sine (within 50 cents),
    through features.compute_f0
  * soundfile writes and reads back a WAV (in a temporary folder)

Exit status 0 when every check passes, 1 otherwise.

Example:
  ./venv/bin/python verify_project.py
  ./venv/bin/python verify_project.py --device cpu
"""
from __future__ import annotations

import argparse
import importlib
import math
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from utils import HelpFormatter, cpu_name, run_main

ROOT = Path(__file__).resolve().parent
PACKAGES = ("torch", "torchaudio", "torchcrepe", "numpy", "librosa", "soundfile", "wandb")
MIN_PYTHON = (3, 10)
SINE_HZ = 440.0
MAX_CENTS = 50.0

OK, FAIL, WARN = "✓", "✗", "!"


def _symbols() -> tuple[str, str, str]:
    """✓ ✗ ! where the terminal can print them, else ASCII."""
    enc = (getattr(sys.stdout, "encoding", None) or "ascii").lower()
    try:
        "✓✗".encode(enc)
        return OK, FAIL, WARN
    except (UnicodeEncodeError, LookupError):
        return "OK", "FAIL", "!"


def pinned_versions(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """{package: version} of the `name==version` lines of requirements.txt (empty if absent)."""
    pins = {}
    try:
        for line in path.read_text().splitlines():
            m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+)", line)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    except OSError:
        pass
    return pins


# --------------------------------------------------------------------------------------------------
# Checks: each returns a one-line detail string (pass), a (detail, warning) tuple, or raises (fail).
# --------------------------------------------------------------------------------------------------

def check_python(_ctx) -> str:
    v = sys.version_info
    if (v.major, v.minor) < MIN_PYTHON:
        raise RuntimeError(f"Python {platform.python_version()} is too old; need "
                           f"{'.'.join(map(str, MIN_PYTHON))}+ (run ./setup_env.sh)")
    return f"{platform.python_version()} ({sys.executable})"


def make_package_check(name: str, pins: dict[str, str]) -> Callable:
    def check(_ctx):
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # ImportError, or a broken install raising anything else
            raise RuntimeError(f"cannot import {name} ({type(e).__name__}: {e}); "
                               f"run ./setup_env.sh") from None
        version = getattr(mod, "__version__", None)
        if version is None:  # e.g. torchcrepe has no __version__: ask the installed distribution
            from importlib.metadata import PackageNotFoundError, version as dist_version
            try:
                version = dist_version(name)
            except PackageNotFoundError:
                version = "unknown"
        version = str(version)
        pin = pins.get(name.lower())
        if pin and version.split("+")[0] != pin:
            return version, f"requirements.txt pins {pin}"
        return version
    check.__name__ = f"package {name}"
    return check


def check_device(ctx) -> str:
    import torch

    from utils import pick_device

    dev = pick_device(ctx["device_name"])
    ctx["device"] = dev
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        return f"cuda:{idx} {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"cpu, {torch.get_num_threads()} threads ({cpu_name()})"


def check_model(ctx) -> str:
    import torch

    import model as model_mod

    torch.manual_seed(0)
    net = model_mod.NeuralGuitar(model_mod.build_config()).to(ctx.get("device", "cpu"))
    ctx["model"] = net
    n = sum(p.numel() for p in net.parameters())
    cfg = net.config
    return (f"{n / 1e6:.2f} M parameters ({cfg['decoder']} {cfg['hidden_size']}, {cfg['n_harmonics']} "
            f"harmonics, {cfg['n_noise_bands']} noise bands, decoder stride {cfg['decoder_stride']})")


def check_forward_backward(ctx) -> str:
    import torch

    import loss as loss_mod

    if "model" not in ctx:
        raise RuntimeError("skipped: the model did not build")
    net, dev = ctx["model"], ctx.get("device", torch.device("cpu"))
    sr, hop = net.config["sample_rate"], net.config["hop"]
    n_frames = sr // hop  # 1 s
    t = torch.arange(n_frames, device=dev) / (sr / hop)
    f0 = 196.0 * 2 ** (0.3 * torch.sin(2 * math.pi * 2 * t))[None]          # [1, F] Hz, vibrato
    loud = (-30.0 + 10.0 * torch.sin(2 * math.pi * t))[None]                 # [1, F] dB
    g = torch.Generator(device="cpu").manual_seed(0)
    target = (0.1 * torch.randn(1, n_frames * hop, generator=g)).to(dev)
    net.train()
    net.zero_grad(set_to_none=True)
    out = net(f0, loud)
    value = loss_mod.MultiResolutionSTFTLoss().to(dev)(out["audio"], target)
    value.backward()
    if not torch.isfinite(value):
        raise RuntimeError(f"loss is not finite ({value.item()})")
    bad = [name for name, p in net.named_parameters()
           if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    if bad:
        raise RuntimeError(f"{len(bad)} parameters have missing or non-finite gradients, e.g. {bad[0]}")
    gnorm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters() if p.grad is not None))
    return f"audio {tuple(out['audio'].shape)}, loss {value.item():.3f}, grad norm {gnorm.item():.3g}"


def _import_features():
    try:
        import features
    except ImportError as e:
        raise RuntimeError(f"cannot import features.py ({e})") from None
    return features


def make_crepe_check(capacity: str) -> Callable:
    def check(ctx):
        import numpy as np

        features = _import_features()
        sr = features.SAMPLE_RATE
        t = np.arange(sr) / sr
        sine = (0.5 * np.sin(2 * np.pi * SINE_HZ * t)).astype(np.float32)
        dev = ctx.get("device", "cpu")
        f0, periodicity = features.compute_f0(sine, model=capacity, device=dev)
        mid = f0[len(f0) // 4: 3 * len(f0) // 4]  # ignore the edges (CREPE windows run off the signal)
        cents = 1200.0 * np.abs(np.log2(np.median(mid) / SINE_HZ))
        worst = 1200.0 * np.max(np.abs(np.log2(mid / SINE_HZ)))
        if not np.isfinite(cents) or worst > MAX_CENTS:
            raise RuntimeError(f"f0 of a {SINE_HZ:.0f} Hz sine read as median {np.median(mid):.1f} Hz "
                               f"(worst {worst:.0f} cents off, limit {MAX_CENTS:.0f})")
        return (f"{SINE_HZ:.0f} Hz sine -> median {np.median(mid):.2f} Hz ({cents:.1f} cents, worst "
                f"{worst:.1f}), periodicity {np.median(periodicity):.2f}")
    check.__name__ = f"CREPE {capacity}"
    return check


def check_soundfile(_ctx) -> str:
    import numpy as np
    import soundfile as sf

    from utils import atomic_write_wav

    sr = 16000
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(sr // 10) / sr)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.wav"
        atomic_write_wav(path, x, sr)
        y, sr_read = sf.read(path, dtype="float32")
    err = float(np.max(np.abs(y - x)))
    if sr_read != sr or y.shape != x.shape or err > 1e-4:
        raise RuntimeError(f"WAV round trip changed the audio (sr {sr_read}, shape {y.shape}, max err {err:.2g})")
    return f"16-bit WAV round trip ok (libsndfile {sf.__libsndfile_version__}, max err {err:.1e})"


def build_checks() -> list[tuple[str, Callable]]:
    pins = pinned_versions()
    checks = [("Python", check_python)]
    checks += [(f"{name}", make_package_check(name, pins)) for name in PACKAGES]
    checks += [
        ("device", check_device),
        ("model (default config)", check_model),
        ("forward + backward, 1 s", check_forward_backward),
        ("CREPE full", make_crepe_check("full")),
        ("CREPE tiny", make_crepe_check("tiny")),
        ("soundfile WAV", check_soundfile),
    ]
    return checks


def run_checks(device: str = "auto", out=None) -> list[dict]:
    """Run every check, print one line each to `out`, return [{name, ok, seconds, detail, warning}]."""
    out = out or sys.stdout
    ok_sym, fail_sym, warn_sym = _symbols()
    ctx = {"device_name": device}
    results = []
    checks = build_checks()
    width = max(len(name) for name, _ in checks)
    for name, fn in checks:
        t0 = time.perf_counter()
        warning = None
        try:
            detail = fn(ctx)
            if isinstance(detail, tuple):
                detail, warning = detail
            ok = True
        except Exception as e:  # one check failing must not stop the others
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            detail = msg or type(e).__name__
            if not isinstance(e, RuntimeError) or not msg:
                detail = f"{type(e).__name__}: {detail}"
            ok = False
        dt = time.perf_counter() - t0
        sym = ok_sym if ok else fail_sym
        line = f"{sym} {name:<{width}}  {dt:6.2f} s  {detail}"
        if warning:
            line += f"  {warn_sym} {warning}"
        print(line, file=out, flush=True)
        results.append({"name": name, "ok": ok, "seconds": dt, "detail": detail, "warning": warning})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda (auto = cuda if available)")
    args = parser.parse_args(argv)
    print(f"Neural Guitar: checking this machine ({platform.platform()})")
    t0 = time.perf_counter()
    results = run_checks(args.device)
    failed = [r["name"] for r in results if not r["ok"]]
    total = time.perf_counter() - t0
    if failed:
        print(f"{len(failed)} of {len(results)} checks failed ({', '.join(failed)}) in {total:.1f} s. "
              f"Fix the lines marked above, then run this again.")
        return 1
    print(f"All {len(results)} checks passed in {total:.1f} s.")
    return 0


if __name__ == "__main__":
    run_main(main)
