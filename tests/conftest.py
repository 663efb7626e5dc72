"""Shared pytest fixtures: test audio made here, from analytic definitions (numpy, no files).

Every generator is a plain function below and is also served by a fixture of the same name that
returns the function (a factory), so a test asks for `sine` and calls `sine(440.0, 1.0)`; modules
may also `from conftest import sine` (tests/ is on sys.path under pytest). Keep the signatures stable.

All audio is float32 numpy `[T]` at `SR` = 16 kHz unless a `sr` argument says otherwise; times in
seconds, frequencies in Hz, amplitudes linear (peak).

| fixture        | returns                                                                         |
|----------------|---------------------------------------------------------------------------------|
| `sine`         | A*sin(2*pi*f*t + phase), t = n/sr                                                |
| `vibrato_sine` | (audio, f_inst [T] Hz): f0 * 2**(cents/1200 * sin(2*pi*rate*t)), exact phase     |
| `pluck`        | Karplus-Strong plucked string with an exact (fractional) pitch and a decay      |
| `white_noise`  | uniform white noise in [-A, A], seeded                                           |
| `silence`      | zeros                                                                            |

Other fixtures: `single_thread` runs a test with one torch CPU thread (restored afterwards): small
models are faster that way, and on a shared 2-core machine two threads spin against each other.

Helpers that add fixtures: keep one generator per idea, document shape/units in the table above.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # flat scripts live in the repository root
    sys.path.insert(0, str(ROOT))

SR = 16000   # Hz, the project's sample rate
HOP = 64     # samples per control frame (250 frames/s)


def _n(seconds: float, sr: int) -> int:
    return int(round(seconds * sr))


def sine(f0_hz: float, seconds: float = 1.0, sr: int = SR, amplitude: float = 1.0,
         phase: float = 0.0) -> np.ndarray:
    """`amplitude * sin(2*pi*f0*n/sr + phase)` for n = 0..T-1: float32 [T]."""
    t = np.arange(_n(seconds, sr)) / sr
    return (amplitude * np.sin(2 * np.pi * f0_hz * t + phase)).astype(np.float32)


def vibrato_sine(f0_hz: float, seconds: float = 1.0, sr: int = SR, rate_hz: float = 5.0,
                 depth_cents: float = 50.0, amplitude: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Sine with sinusoidal vibrato around `f0_hz`.

    Instantaneous frequency f(t) = f0 * 2**(depth_cents/1200 * sin(2*pi*rate*t)); the phase is its
    integral, computed on a 16x finer grid with the trapezoid rule (error << 1e-6 rad).
    Returns (audio float32 [T], f_inst float64 [T] Hz at each sample). The f0 of control frame i
    (centred on sample i*HOP) is `f_inst[i*HOP]`.
    """
    T, up = _n(seconds, sr), 16
    t = np.arange(T * up + 1) / (sr * up)
    f = f0_hz * 2.0 ** (depth_cents / 1200.0 * np.sin(2 * np.pi * rate_hz * t))
    phase = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2) / (sr * up)]) * 2 * np.pi
    audio = amplitude * np.sin(phase[:T * up:up])
    return audio.astype(np.float32), f[:T * up:up]


def pluck(f0_hz: float, seconds: float = 1.0, sr: int = SR, decay: float = 0.995,
          amplitude: float = 0.5, seed: int = 0) -> np.ndarray:
    """Karplus-Strong plucked string, float32 [T], peak `amplitude`.

    Loop: delay of N samples -> two-tap average (0.5 sample delay, lowpass) * `decay` -> first-order
    allpass for the fractional part `d` of the period (coefficient (1-d)/(1+d), delay ~d at low
    frequencies), so the loop delay is sr/f0 and the fundamental is f0 (within ~0.1 %). The excitation
    is one period of seeded uniform noise. Higher partials decay faster (the average is a lowpass) and
    sit slightly flat of k*f0 (the allpass delay grows with frequency), as in a real string model.
    """
    T = _n(seconds, sr)
    period = sr / f0_hz - 0.5            # loop delay besides the two-tap average
    N = int(np.floor(period))
    d = period - N
    if d < 0.1:                          # keep the allpass coefficient away from 1
        N, d = N - 1, d + 1.0
    c = (1.0 - d) / (1.0 + d)
    rng = np.random.default_rng(seed)
    exc = np.zeros(T)
    exc[:N] = rng.uniform(-1.0, 1.0, min(N, T))
    y = np.zeros(T)
    w_prev = a_prev = 0.0
    for n in range(T):
        v0 = y[n - N] if n >= N else 0.0
        v1 = y[n - N - 1] if n >= N + 1 else 0.0
        w = decay * 0.5 * (v0 + v1)
        a = c * w + w_prev - c * a_prev  # allpass
        w_prev, a_prev = w, a
        y[n] = exc[n] + a
    y *= amplitude / max(np.abs(y).max(), 1e-12)
    return y.astype(np.float32)


def white_noise(seconds: float = 1.0, sr: int = SR, amplitude: float = 1.0, seed: int = 0) -> np.ndarray:
    """Seeded uniform white noise in [-amplitude, amplitude]: float32 [T]."""
    rng = np.random.default_rng(seed)
    return (amplitude * rng.uniform(-1.0, 1.0, _n(seconds, sr))).astype(np.float32)


def silence(seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    """Zeros: float32 [T]."""
    return np.zeros(_n(seconds, sr), dtype=np.float32)


@pytest.fixture(name="sine")
def sine_fixture():
    return sine


@pytest.fixture(name="vibrato_sine")
def vibrato_sine_fixture():
    return vibrato_sine


@pytest.fixture(name="pluck")
def pluck_fixture():
    return pluck


@pytest.fixture(name="white_noise")
def white_noise_fixture():
    return white_noise


@pytest.fixture(name="silence")
def silence_fixture():
    return silence


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module with `torch.set_num_threads(1)` (restored afterwards): on a shared 2-core
    machine two intra-op threads contend and run several times slower. Use it with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(main, argv, monkeypatch, capsys):
    """Run a script's `main` in-process exactly as `python script.py ARGV...` would (utils.run_main:
    exit codes and one-line errors). Returns (exit code, stdout, stderr)."""
    import sys

    from utils import run_main

    monkeypatch.setattr(sys, "argv", ["script.py", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        run_main(main)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
