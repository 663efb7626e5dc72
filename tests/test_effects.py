"""effects.py: presets against analytic signals (sines, noise, Karplus-Strong plucks).

Oracles: a pure sine has no harmonics, so any 3rd/5th harmonic in the output was made by the drive,
and tanh (an odd function) makes odd harmonics, not even ones; noise below the gate's threshold must
leave at the gate's ratio below it; block-wise processing must equal processing in one go; a plugin
with a known gain must scale the signal by exactly that gain.
"""
from __future__ import annotations

import argparse

import numpy as np
import pedalboard as pb
import pytest

import effects
import utils
from conftest import SR, pluck, run_cli, sine, white_noise

FX_PRESETS = [p for p in effects.PRESETS if p != "none"]


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS."""
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-30))


def harmonic_db(y: np.ndarray, f0_hz: float, k: int) -> float:
    """Level of harmonic k relative to the fundamental, dB: Hann-windowed FFT of `y`, peak magnitude
    within +-2 bins of k*f0 over the one within +-2 bins of f0."""
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    hz_per_bin = SR / y.size

    def peak(f):
        b = int(round(f / hz_per_bin))
        return spec[b - 2:b + 3].max()

    return float(20 * np.log10(peak(k * f0_hz) / peak(f0_hz) + 1e-30))


@pytest.fixture(scope="module")
def phrase() -> np.ndarray:
    """Six plucked notes (0.3 s each) at -18 dBFS RMS, then 0.2 s of quiet noise: float32 [T]."""
    notes = np.concatenate([pluck(f, 0.3, seed=i) for i, f in enumerate((110, 165, 220, 330, 196, 247))])
    notes *= 10 ** (-18 / 20) / np.sqrt(np.mean(notes ** 2))
    return np.concatenate([notes, white_noise(0.2, amplitude=1e-3, seed=7)]).astype(np.float32)


def test_none_is_identity(phrase):
    loud = np.concatenate([phrase * 8, white_noise(0.1, amplitude=3.0)])   # > 1.0 passes untouched too
    fx = effects.Effects("none", SR)
    out = np.concatenate([fx.process(loud[i:i + 100]) for i in range(0, loud.size, 100)])
    assert out.dtype == np.float32 and np.array_equal(out, loud)
    assert np.array_equal(effects.apply(loud, SR, "none"), loud)


def test_crunch_adds_odd_harmonics():
    f0 = 220.0
    x = sine(f0, 1.0, amplitude=0.25)                     # -15 dBFS RMS, well above the gate
    steady = slice(SR // 2, SR)                           # 0.5 s after compressor/gate settle: 2 Hz bins
    level = {p: [harmonic_db(effects.apply(x, SR, p)[steady], f0, k) for k in (2, 3, 5)]
             for p in ("none", "clean", "crunch", "lead")}
    for k_db in level["none"][1:]:
        assert k_db < -80                                 # the input has none
    h2, h3, h5 = level["crunch"]
    assert h3 > -30 and h5 > -40                          # the drive made them
    assert h3 > level["clean"][1] + 20 and h5 > level["clean"][2] + 20   # the clean amp does not
    assert h2 < h3 - 20                                   # tanh is odd: odd harmonics, not even
    assert level["lead"][1] > h3 - 3                      # lead drives at least as hard as crunch


@pytest.mark.parametrize("preset", FX_PRESETS)
def test_gate_silences_noise_below_threshold_and_passes_signal(preset):
    amplitude = 10 ** (-70 / 20) * np.sqrt(3)             # uniform noise of RMS -70 dBFS
    noise = white_noise(1.0, amplitude=amplitude, seed=3)
    assert abs(rms_db(noise) - (-70)) < 0.2
    assert rms_db(effects.apply(noise, SR, preset)) < -90
    tone = sine(330.0, 1.0, amplitude=10 ** (-20 / 20) * np.sqrt(2))   # -20 dBFS RMS
    assert rms_db(effects.apply(tone, SR, preset)[SR // 4:]) > -30


@pytest.mark.parametrize("preset", FX_PRESETS)
def test_blocks_of_any_size_match_one_go(preset, phrase):
    fx = effects.Effects(preset, SR)
    whole = fx.process(phrase)
    for block in (64, 256, 1024):
        fx.reset()
        out = np.concatenate([fx.process(phrase[i:i + block]) for i in range(0, phrase.size, block)])
        assert out.shape == phrase.shape
        np.testing.assert_allclose(out, whole, atol=1e-5, rtol=0)
    assert np.abs(whole - phrase).max() > 0.01                        # the preset did something


@pytest.mark.parametrize("preset", FX_PRESETS)
def test_peak_stays_below_full_scale(preset, phrase):
    loud = np.concatenate([phrase * 16, sine(110.0, 0.5, amplitude=4.0), phrase * 0.5])
    y = effects.apply(loud, SR, preset)
    ceiling = 10 ** (effects.LIMITER_THRESHOLD_DB / 20)
    assert np.abs(y).max() <= 1.0
    assert np.abs(y).max() < ceiling * 1.01                            # the limiter, not luck
    assert rms_db(effects.apply(phrase, SR, preset)) == pytest.approx(-18.0, abs=3.0)   # sensible level


def test_plugin_object_runs_before_the_output_stage():
    x = sine(440.0, 0.5, amplitude=0.1)                   # far below the limiter
    y = effects.Effects("none", SR, plugin=pb.Gain(gain_db=-6.0)).process(x)
    np.testing.assert_allclose(y, x * 10 ** (-6 / 20), atol=1e-6)


class _StereoOnly:
    """A stand-in plugin that refuses mono (as pedalboard does for a stereo-only VST3) and halves."""

    def process(self, x, sample_rate, reset=True):
        if x.ndim == 1:
            raise ValueError("Plugin 'Amp' does not support 1-channel output.")
        return np.stack([x[0] * 0.5, x[1] * 0.5])

    def reset(self):
        pass


def test_stereo_only_plugin_gets_both_channels():
    x = sine(440.0, 0.2, amplitude=0.1)
    y = effects.Effects("none", SR, plugin=_StereoOnly()).process(x)
    np.testing.assert_allclose(y, x * 0.5, atol=1e-6)


def test_plugin_latency_keeps_block_length():
    x = sine(440.0, 4096 / SR, amplitude=0.1)             # 64 blocks of 64
    fx = effects.Effects("none", SR, plugin=pb.BrickwallLimiter(lookahead_ms=5.0))   # returns 0, 48, 64..
    out = [fx.process(x[i:i + 64]) for i in range(0, x.size, 64)]
    assert all(o.shape == (64,) for o in out)
    y = np.concatenate(out)
    lag = int(round(0.005 * SR))                          # the look-ahead; below its ceiling it passes x
    assert np.all(y[:lag] == 0)
    np.testing.assert_allclose(y[lag:], x[:-lag], atol=1e-5)   # late by the look-ahead, nothing lost


def _fx_main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=utils.HelpFormatter)
    effects.add_fx_arguments(parser, default="crunch")
    effects.from_args(parser.parse_args(argv), SR)


@pytest.mark.parametrize("kind", ["missing", "text"])
def test_bad_plugin_file_is_one_line_user_error(kind, tmp_path, monkeypatch, capsys):
    path = tmp_path / "amp.vst3"
    if kind == "text":
        path.write_text("not a plugin\n")
    with pytest.raises(utils.UserError) as e:
        effects.load_plugin(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    code, out, err = run_cli(_fx_main, ["--fx_plugin", path], monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if kind == "missing" else ["amp.vst3"])


def test_fx_arguments(capsys):
    parser = argparse.ArgumentParser(formatter_class=utils.HelpFormatter)
    effects.add_fx_arguments(parser, default="clean")
    args = parser.parse_args([])
    assert (args.fx, args.fx_plugin) == ("clean", None)
    assert effects.from_args(parser.parse_args(["--fx", "lead"]), SR).preset == "lead"
    with pytest.raises(SystemExit):
        parser.parse_args(["--fx", "metal"])
    parser.print_help()
    assert "(default: clean)" in capsys.readouterr().out
    with pytest.raises(utils.UserError, match="unknown effects preset"):
        effects.Effects("metal", SR)
