"""verify_project.py and bench.py, run for real on this machine (CPU).

* verify_project.main() passes every check here (it loads CREPE full, ~15-25 s on 2 cores), and a
  failing check is reported with ✗ while the others still run.
* bench.py in a tiny configuration writes a JSON report with the expected keys and positive numbers.
* bench's live section: its onset-latency measurement finds a known delay, runs on a small engine; its
  child peak-RSS reading sees a child's allocation.
* bench's reference (the model with synth.py's readable audio-rate bank) agrees with ours; the readable
  bank itself is checked against analytic oracles in test_synth.py.
"""
from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bench  # noqa: E402
import verify_project  # noqa: E402


def test_verify_project_passes_here(capsys):
    assert verify_project.main([]) == 0
    out = capsys.readouterr().out
    assert "✗" not in out and "FAIL" not in out
    for name in ("Python", "torch", "torchcrepe", "device", "CREPE full", "CREPE tiny", "soundfile WAV"):
        assert name in out
    assert "All " in out and "checks passed" in out


def test_verify_reports_a_failing_check_and_continues(monkeypatch):
    # An unavailable device is a real failure mode (--device cuda on a CPU machine): that line fails,
    # the later checks still run (on the CPU), and the exit status is 1.
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda does not fail")
    monkeypatch.setattr(verify_project, "build_checks", lambda: [
        ("device", verify_project.check_device),
        ("soundfile WAV", verify_project.check_soundfile),
    ])
    buf = io.StringIO()
    results = verify_project.run_checks("cuda", out=buf)
    assert [r["ok"] for r in results] == [False, True]
    assert "CUDA is not available" in results[0]["detail"]
    assert all(r["seconds"] >= 0 for r in results)


def test_bench_tiny_json(tmp_path):
    out = tmp_path / "bench.json"
    code = bench.main(["--batch_size", "1", "--seconds", "0.5", "--steps", "1", "--warmup", "1",
                       "--hidden_size", "32", "--skip_preprocess", "--skip_live", "--threads", "1", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    for key in ("machine", "config", "agreement", "train_step", "inference", "memory", "targets"):
        assert key in r, key
    assert "preprocess" not in r
    for impl in ("ours", "reference"):
        assert r["train_step"][impl]["median_s"] > 0
        for phase, t in r["train_step"][impl]["phases_s"].items():
            assert t >= 0, phase
    for key in ("ours_rtf", "reference_rtf", "ours_synth_rtf", "reference_synth_rtf", "ours_decoder_rtf",
                "reference_decoder_rtf"):
        assert r["inference"][key] > 0, key
    mem = r["memory"]
    assert 0 < mem["baseline_mb"] <= min(mem["ours_mb"], mem["reference_mb"])
    assert r["config"]["hidden_size"] == 32 and r["config"]["batch_size"] == 1


def test_reference_agrees_with_ours():
    report = bench.check_agreement(seconds=0.3)  # raises AssertionError on disagreement
    assert report["audio_rel_err"] < 1e-8 and report["grad_rel_err"] < 1e-4


def test_reference_really_renders_the_readable_bank(monkeypatch):
    """bench's "reference" must switch the model to synth.harmonic_bank_audio_rate (and "ours" must not)."""
    import synth
    calls = []
    spec = synth.harmonic_bank_audio_rate
    monkeypatch.setattr(synth, "harmonic_bank_audio_rate", lambda *a, **k: calls.append(1) or spec(*a, **k))
    net = bench.build(type("A", (), dict(hidden_size=16, seed=0, batch_size=1, seconds=0.1,
                                                decoder_stride=4, amp=False))(), torch.device("cpu"))[0]
    f0, loud = bench.make_controls(1, 25)
    for name, expected in (("ours", 0), ("reference", 1)):
        with bench.implementation(net, name), torch.no_grad():
            net(f0, loud)
        assert len(calls) == expected, name
    assert net.harmonic.fast  # restored


# --------------------------------------------------------------------------------------------------
# The live section
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0, 300, 700])
def test_live_onset_latency_finds_a_known_delay(delay):
    """A pure delay line (stateful, block by block) measured with bench's test notes: every note's onset
    comes out exactly `delay` samples later."""
    audio, starts = bench.live_test_signal()
    state = np.zeros(delay, np.float32)

    def delayed(block):
        nonlocal state
        both = np.concatenate([state, block])
        state = both[block.size:]
        return both[:block.size]
    lat = bench.onset_latencies(delayed, 256, audio, starts, 16000)
    assert lat.tolist() == [delay] * len(starts)


def test_live_onset_latency_reports_a_silent_output_as_missed():
    """An engine that outputs silence has no onset: every note is NaN (missed), not an early onset; one
    silent note among sounding ones is missed alone."""
    audio, starts = bench.live_test_signal()
    lat = bench.onset_latencies(lambda b: np.zeros_like(b), 256, audio, starts, 16000)
    assert np.isnan(lat).all()
    n = 0

    def mute_the_third_note(block):
        nonlocal n
        out = np.zeros_like(block) if starts[2] < n + block.size and n < starts[3] else block.copy()
        n += block.size
        return out
    lat = bench.onset_latencies(mute_the_third_note, 256, audio, starts, 16000)
    assert np.isnan(lat).tolist() == [i == 2 for i in range(len(starts))]


def test_live_onset_latency_reports_a_reverb_tail_as_missed():
    """The third note's output is only a decaying tail of the note before (-50 dBFS, 50 ms time constant):
    not an onset, however loud the tail is at the span's start."""
    audio, starts = bench.live_test_signal()
    rng, n = np.random.default_rng(0), 0

    def tail_instead_of_the_third_note(block):
        nonlocal n
        t = np.arange(n, n + block.size) - starts[2]
        tail = 0.003 * np.exp(-t / 800.0) * rng.standard_normal(block.size)
        out = np.where((t >= 0) & (np.arange(n, n + block.size) < starts[3]), tail, block).astype(np.float32)
        n += block.size
        return out
    lat = bench.onset_latencies(tail_instead_of_the_third_note, 256, audio, starts, 16000)
    assert np.isnan(lat).tolist() == [i == 2 for i in range(len(starts))], lat


def test_live_latency_and_block_times(single_thread):
    """The bundled model's measured onset latency lies between the engine's latency_samples and one block
    more (as tests/test_streaming checks on its own signal); block times of a small engine are > 0."""
    from test_streaming import small_model

    import features
    import model as model_lib
    from pipeline import DEFAULT_CHECKPOINT
    tracker = features.live_pitch_tracker()
    r = bench.bench_live_latency(model_lib.load_model(DEFAULT_CHECKPOINT), tracker, block=256)
    assert r["latency_samples"] == 384 and r["n_notes"] == 8
    assert 24.0 - 1.0 <= r["engine_ms_median"] <= 24.0 + 16.0, r
    assert r["n_missed"] == 0 and r["total_ms_median"] == pytest.approx(r["engine_ms_median"] + 16.0)
    audio, _ = bench.live_test_signal()
    res = bench.bench_live_blocks({"small": small_model(1)}, tracker, audio[:16000 * 3])["small"]
    assert set(res["blocks"]) == {str(b) for b in bench.LIVE_BLOCKS}
    assert all(v["p99_ms"] >= v["p50_ms"] > 0 for v in res["blocks"].values())


def fake_live_section(p99_ms: float, latency_ms: float | None, xruns: int) -> dict:
    """bench_live's result shape, with chosen numbers (block 256 = 16 ms at 16 kHz)."""
    blocks = {str(b): {"p50_ms": p99_ms / 2, "p99_ms": p99_ms, "p99_fraction": p99_ms / (1e3 * b / 16000),
                       "n_blocks": 10} for b in bench.LIVE_BLOCKS}
    missed = latency_ms is None
    return {"input": "examples/voice_oohs_melody.wav", "threads": 1, "block": 256, "pitch": "pesto", "fx": "clean",
            "models": {"bundled": {"hidden_size": 128, "decoder": "gru", "decoder_stride": 1, "blocks": blocks,
                                   "smallest_block": min(b for b in bench.LIVE_BLOCKS
                                                         if float(blocks[str(b)]["p99_fraction"]) <= 0.5)}},
            "latency": {"block": 256, "latency_samples": 384, "n_notes": 8, "n_missed": 8 if missed else 0,
                        "block_io_ms": 16.0, "engine_ms_median": latency_ms, "engine_ms_min": latency_ms,
                        "engine_ms_max": latency_ms, "total_ms_median": None if missed else latency_ms + 16.0},
            "rss_mb": 500.0, "status": "done", "realtime_seconds": 60.0, "realtime_xruns": xruns,
            "realtime_load_start": [1.0], "realtime_load_end": [1.0], "realtime_status": f"live: xruns {xruns}"}


@pytest.mark.parametrize("p99_ms,latency_ms,xruns,verdicts", [
    (4.0, 25.0, 0, ["met", "met", "met", "met"]),
    (9.0, 40.0, 3, ["NOT met", "NOT met", "met", "NOT met"]),   # 9 ms > 8 ms; 40 + 16 > 50 ms; 3 xruns
    (4.0, None, 0, ["met", "NOT met", "met", "met"]),           # every test note silent: latency not met
])
def test_bench_live_only_reports_each_target(monkeypatch, capsys, tmp_path, p99_ms, latency_ms, xruns, verdicts):
    """`bench.py --live_only` runs only the live section and prints a verdict per target (block p99, onset
    latency, RSS, xruns) from its numbers; the JSON holds the section."""
    monkeypatch.setattr(bench, "bench_live", lambda args: fake_live_section(p99_ms, latency_ms, xruns))
    out = tmp_path / "live.json"
    assert bench.main(["--live_only", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train step" not in text and json.loads(out.read_text()).keys() >= {"live"}
    lines = [line for line in text.splitlines() if "[met" in line or "[NOT met" in line]
    assert [re.search(r"\[(met|NOT met)", line).group(1) for line in lines] == verdicts, text


@pytest.mark.parametrize("argv,words", [
    (["--live_only", "--skip_live"], "exclude each other"),
    (["--live_realtime", "-1"], "must be >= 0"),
    (["--skip_live", "--live_realtime", "60"], "--skip_live leaves out"),
])
def test_bench_live_flags_are_checked(argv, words):
    with pytest.raises(bench.UserError, match=words):
        bench.parse_args(argv)


def test_child_peak_rss_sees_what_the_child_allocates():
    """wait4's ru_maxrss of a child that touches 200 MB of numpy memory is at least that much; a child that
    allocates nothing reports its own small size, not this (large: torch is loaded) test process's."""
    rss, line = bench.child_peak_rss(["-c", "import numpy as np; a = np.ones(25_000_000); print('sum', a.sum())"])
    assert line == "sum 25000000.0" and rss >= 200e6 / 2**20, rss
    rss, line = bench.child_peak_rss(["-c", "print('small')"])
    assert line == "small" and rss < 100, rss
    with pytest.raises(bench.UserError, match=r"failed \(exit 3\): why it failed$"):
        bench.child_peak_rss(["-c", "import sys; print('error: why it failed'); sys.exit(3)"])
