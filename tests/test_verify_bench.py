"""verify_project.py and bench.py, run for real on this machine (CPU).

* verify_project.main() passes every check here (it loads CREPE full, ~15-25 s on 2 cores), and a
  failing check is reported with ✗ while the others still run.
* bench.py in a tiny configuration writes a JSON report with the expected keys and positive numbers.
* The reference formulation in bench.py agrees with ours; it is also checked against an independent
  oracle here: a numpy sum of sines with the analytic phase of a linear frequency glide.
"""
from __future__ import annotations

import io
import json
import math
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
                       "--hidden_size", "32", "--skip_preprocess", "--inference_seconds", "1", "--threads", "1",
                       "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    for key in ("machine", "config", "agreement", "train_step", "synth_loss_step", "inference", "memory",
                "targets"):
        assert key in r, key
    assert "preprocess" not in r
    for section in ("train_step", "synth_loss_step"):
        for impl in ("ours", "reference"):
            assert r[section][impl]["median_s"] > 0
        assert r[section]["speedup"] > 0
    for phase, t in r["train_step"]["ours"]["phases_s"].items():
        assert t >= 0, phase
    inf = r["inference"]
    for key in ("ours_rtf", "reference_rtf", "ours_synth_rtf", "reference_synth_rtf", "decoder_rtf"):
        assert inf[key] > 0, key
    assert inf["long"]["ours_rtf"] > 0 and inf["long"]["reference_rtf"] > 0
    mem = r["memory"]
    assert 0 < mem["baseline_mb"] <= mem["ours_train_step_mb"]
    assert mem["reference_train_step_mb"] > 0
    assert r["config"]["hidden_size"] == 32 and r["config"]["batch_size"] == 1


def test_reference_agrees_with_ours():
    report = bench.check_agreement(seconds=0.3)  # raises AssertionError on disagreement
    assert report["float64"]["audio_rel_err"] < 1e-8
    assert report["float64"]["grad_rel_err"] < 1e-4
    assert report["float32"]["audio_rel_err"] < 5e-3


def test_reference_against_analytic_chirp():
    # One partial (K=1), constant amplitude, f0 gliding linearly from 200 to 300 Hz: the phase is the
    # integral of the frequency, 2*pi*(f_a t + (f_b - f_a) t^2 / (2 T_glide)) during the glide.
    sr, hop, n_frames = 16000, 64, 50
    f0 = torch.linspace(200.0, 300.0, n_frames, dtype=torch.float64)[None, :, None]
    amp = torch.ones(1, n_frames, 1, dtype=torch.float64)
    dist = torch.ones(1, n_frames, 1, dtype=torch.float64)
    y = bench.reference_harmonic(amp, dist, f0, torch.tensor(math.log(1e-12), dtype=torch.float64), sr, hop)
    glide = (n_frames - 1) * hop
    t = np.arange(glide) / sr
    rate = 100.0 / (glide / sr)  # Hz per second
    expected = np.sin(2 * np.pi * (200.0 * t + rate * t * t / 2))
    np.testing.assert_allclose(y[0, :glide].numpy(), expected, atol=1e-6)


def test_upsample_linear_holds_last_frame():
    x = torch.tensor([[[0.0], [1.0], [3.0]]])  # [1, 3, 1]
    y = bench.upsample_linear(x, 4)[0, :, 0]
    np.testing.assert_allclose(y.numpy(), [0, .25, .5, .75, 1, 1.5, 2, 2.5, 3, 3, 3, 3])
