"""live.py: --simulate end to end (subprocess), --realtime xrun counting, the warm-up, and the one-line
errors (bad device, missing PortAudio, missing plugin) that leave nothing behind."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import live
from conftest import ROOT, SR
from test_streaming import onset_sample, voice
from utils import UserError


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kw)


def test_simulate_end_to_end(tmp_path):
    x = voice(1.0, 196.0, start=0.3)
    src, dst = tmp_path / "voice.wav", tmp_path / "out" / "guitar.wav"
    sf.write(src, x, SR, subtype="FLOAT")
    r = _run([str(ROOT / "live.py"), "--simulate", str(src), "-o", str(dst), "--fx", "none", "--block", "256"])
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert "latency 24.0 ms" in line and "p99" in line and "xruns" in line, line   # block 256: 384 samples
    y, sr = sf.read(dst, dtype="float32")
    assert sr == SR and y.size == x.size + 384            # the input's length plus the engine's latency
    assert np.abs(y).max() > 1e-3
    assert abs((onset_sample(y) - onset_sample(x)) - 384) <= 256     # the guitar answers the voice's onset
    assert sorted(p.name for p in dst.parent.iterdir()) == ["guitar.wav"]   # no temp file left


def test_bad_device_name_one_line():
    """Without PortAudio the same call stops on the PortAudio line instead: one line either way."""
    with pytest.raises(UserError) as e:
        live.main(["--input-device", "no-such-microphone-xyz"])
    msg = str(e.value)
    assert "no-such-microphone-xyz" in msg and "\n" not in msg
    assert "no such input device" in msg or "PortAudio" in msg


def test_missing_portaudio_one_line():
    code = "import sys; sys.modules['sounddevice'] = None; import live, utils; utils.run_main(live.main)"
    r = _run(["-c", code, "--list-devices"])
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "libportaudio2" in err[0] and "Traceback" not in r.stderr, r.stderr


def test_simulate_missing_input_one_line(tmp_path):
    """A subprocess run on a file that does not exist: exit 1, one line naming it, no traceback, no output."""
    dst = tmp_path / "x.wav"
    r = _run([str(ROOT / "live.py"), "--simulate", str(tmp_path / "missing.wav"), "-o", str(dst)])
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "missing.wav" in err[0], r.stderr
    assert "Traceback" not in r.stderr and not dst.exists()


@pytest.mark.parametrize("exit_arg, code, err", [("'stopped: why'", 1, "stopped: why"), ("3", 3, ""), ("None", 0, "")])
def test_exit_now_keeps_systemexit_code_and_message(exit_arg, code, err):
    """live.py leaves through os._exit: a SystemExit's code passes through, and a message is printed as
    Python itself would print it (stderr, exit 1)."""
    prog = f"import live\ndef main(argv=None):\n    raise SystemExit({exit_arg})\nlive.main = main\nlive.exit_now()"
    r = _run(["-c", prog])
    assert r.returncode == code and r.stderr.strip() == err, r.stderr


def test_missing_plugin_writes_nothing(tmp_path):
    src, dst = tmp_path / "voice.wav", tmp_path / "guitar.wav"
    sf.write(src, voice(0.5), SR)
    with pytest.raises(UserError) as e:
        live.main(["--simulate", str(src), "-o", str(dst), "--fx_plugin", str(tmp_path / "amp.vst3")])
    assert "amp.vst3" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.wav"]


def test_simulate_needs_output_and_block_multiple(tmp_path):
    src = tmp_path / "voice.wav"
    sf.write(src, voice(0.5), SR)
    with pytest.raises(UserError, match="-o"):
        live.main(["--simulate", str(src)])
    with pytest.raises(UserError, match="--block 100"):
        live.main(["--simulate", str(src), "-o", str(tmp_path / "o.wav"), "--block", "100"])


class FakeClock:
    """Stands in for live.py's `time`: perf_counter reads a clock that only sleep() advances (compute takes
    no time); the `late_at`-th sleep wakes 30 ms after it was asked to (a loaded machine)."""

    def __init__(self, late_at=None):
        self.t, self.calls, self.late_at = 0.0, 0, late_at

    def perf_counter(self):
        return self.t

    def sleep(self, seconds):
        self.calls += 1
        self.t += seconds + (0.030 if self.calls == self.late_at else 0.0)


@pytest.mark.parametrize("late_at, xruns", [(None, 0), (10, 1)])
def test_realtime_counts_a_late_block(tmp_path, monkeypatch, capsys, late_at, xruns, single_thread):
    """--realtime: a block that computes in no time but starts 30 ms late (more than a 16 ms block) misses
    its deadline: one xrun; the next block is on time again."""
    src = tmp_path / "voice.wav"
    sf.write(src, voice(0.5), SR)
    monkeypatch.setattr(live, "time", FakeClock(late_at))
    assert live.main(["--simulate", str(src), "-o", str(tmp_path / "o.wav"), "--realtime", "--fx", "none"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"xruns {xruns}")


def test_warm_up_leaves_no_trace(single_thread):
    """live.py warms the engine and effects up before the first block: the output is then the same as a
    fresh engine's."""
    import effects
    import streaming
    from test_streaming import run, small_model

    m, x = small_model(1), voice(0.6)
    fresh = run(streaming.StreamingTransfer(m, 256), x, 256)
    fx = effects.Effects("clean", SR)
    ref = fx.process(fresh)
    fx.reset()
    engine = streaming.StreamingTransfer(m, 256)
    steps, run_step = [], engine._run_step
    engine._run_step = lambda: steps.append(1) or run_step()
    live.warm_up(engine, fx)
    assert len(steps) >= 1                   # the warm-up ran the engine's internal step (its one-off costs)
    y = run(engine, x, 256)
    assert np.abs(y).max() > 1e-3 and np.array_equal(y, fresh)
    assert np.array_equal(fx.process(y), ref)


class FakeSoundDevice:
    """Stands in for sounddevice: one duplex device; the stream calls the callback `n_calls` times with a sung
    note at the device rate when entered, collecting what the callback writes."""

    class PortAudioError(Exception):
        pass

    def __init__(self, voice_48k: np.ndarray, block: int):
        self.voice, self.block, self.out = voice_48k, block, []
        self.default = type("D", (), {"device": [0, 0]})()

    def query_devices(self):
        return [{"name": "Fake Duplex", "max_input_channels": 1, "max_output_channels": 1}]

    def Stream(self, samplerate, blocksize, device, channels, dtype, callback, latency):  # noqa: N802
        fake = self

        class _Stream:
            def __enter__(self):
                for i in range(0, fake.voice.size - blocksize + 1, blocksize):
                    out = np.zeros((blocksize, 1), np.float32)
                    callback(fake.voice[i:i + blocksize, None], out, blocksize, None, None)
                    fake.out.append(out[:, 0].copy())
                return self

            def __exit__(self, *exc):
                return False

        return _Stream()


def test_live_loop_with_a_fake_sound_card(monkeypatch, capsys, single_thread):
    """The real-time path (device rate 48 kHz -> 16 kHz engine -> 48 kHz) answers a sung note, prints the
    status line, and CTRL+C ends it with exit 130 (run_main)."""
    import soxr

    import utils

    x = soxr.resample(voice(1.0, 196.0, start=0.3), SR, 48000).astype(np.float32)
    fake = FakeSoundDevice(x, 768)
    monkeypatch.setattr(live, "import_sounddevice", lambda: fake)

    def ctrl_c(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(live.time, "sleep", ctrl_c)
    monkeypatch.setattr(sys, "argv", ["live.py", "--fx", "none", "--samplerate", "48000"])
    with pytest.raises(SystemExit) as e:
        utils.run_main(live.main)
    assert e.value.code == 130
    y = np.concatenate(fake.out)
    assert y.size == x.size // 768 * 768 and np.abs(y).max() > 1e-3
    lat = (onset_sample(y) - onset_sample(x)) / 48000            # seconds, voice onset -> guitar onset
    assert 0.0 < lat < (512 + 2 * 256) / SR, lat                 # engine latency + a block of slack + resamplers
    assert "xruns" in capsys.readouterr().out
