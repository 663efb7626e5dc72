"""evaluate.py: resynthesis report with the sine baseline, pairs mode, JSON/table output, flag errors.

Oracles: features.compute_loudness and an FFT peak for the baseline's definition; the JSON written by the
real CLI (in-process through utils.run_main). The model is the small one trained in test_transfer.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import evaluate
from conftest import run_cli
import features
from test_transfer import pluck, sung_tone, tiny_checkpoint

SR = features.SAMPLE_RATE


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """voice/ (2 sung tones + 1 without a partner), guitar/ (plucks of the same pitches, same names)."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(3)
    (root / "voice").mkdir()
    (root / "guitar").mkdir()
    for name, hz in (("a", 196.0), ("b", 262.0)):
        sf.write(root / "voice" / f"{name}.wav", sung_tone(hz, seconds=1.0, pad_s=0.1)[0], SR)
        midi = 69 + 12 * np.log2(hz / 2 / 440)
        sf.write(root / "guitar" / f"{name}.flac", pluck(midi, 1.2, rng), SR)
    sf.write(root / "voice" / "lonely.wav", sung_tone(330.0, seconds=0.5)[0], SR)
    return root


def cli(argv, monkeypatch, capsys):
    return run_cli(evaluate.main, argv, monkeypatch, capsys)


def test_sine_baseline_has_the_input_pitch_and_loudness():
    t = np.arange(SR) / SR
    x = (0.25 * np.sin(2 * np.pi * 311.0 * t) * np.linspace(0.2, 1, SR)).astype(np.float32)
    loud = features.compute_loudness(x)
    f0 = np.full(loud.size, 311.0, np.float32)
    y = evaluate.sine_baseline(f0, loud)[: x.size]
    np.testing.assert_allclose(features.compute_loudness(y)[8:-8], loud[8:-8], atol=0.1)
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    assert abs(np.argmax(spec) * SR / y.size - 311.0) <= 1.0


def test_resynthesis_report_json_and_table(ckpt, folders, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r" / "eval.json"
    code, stdout, _ = cli(["--checkpoint", ckpt, "--audio_dir", folders / "voice", "--limit", "2", "--json", out,
                           "--device", "cpu"], monkeypatch, capsys)
    assert code == 0
    rep = json.loads(out.read_text())
    res = rep["resynthesis"]
    assert [r["file"] for r in res["files"]] == ["a.wav", "b.wav"]   # --limit 2 of 3, sorted
    for row in res["files"] + [res["mean"]]:
        for who in ("model", "baseline"):
            assert set(evaluate.METRICS) <= set(row[who])
            assert row[who]["mss"] > 0 and 0 <= row[who]["rpa"] <= 1
        assert row["mss_reduction_pct"] is not None
    # the sine baseline follows the input pitch closely and its level by construction
    assert res["mean"]["baseline"]["rpa"] > 0.9 and res["mean"]["baseline"]["loud_l1_db"] < 3
    assert res["mean"]["model"]["rpa"] > 0.5
    assert "Resynthesis" in stdout and "a.wav" in stdout and "mean of 2 files" in stdout and "MSS sine" in stdout
    assert rep["crepe"] == "tiny" and "sine" in rep["baseline"]


def test_pairs_mode(ckpt, folders, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pairs.json"
    code, stdout, _ = cli(["--checkpoint", ckpt, "--pairs", folders / "voice", folders / "guitar", "--json", out,
                           "--device", "cpu"], monkeypatch, capsys)
    assert code == 0
    rep = json.loads(out.read_text())["pairs"]
    assert [r["name"] for r in rep["files"]] == ["a", "b"]              # 'lonely' has no target
    for r in rep["files"]:
        assert r["mss_output_target"] > 0 and r["mss_input_target"] > 0 and r["reduction_pct"] is not None
        assert r["octave"] == -1
    assert set(rep["mean"]) == {"mss_output_target", "mss_input_target", "reduction_pct"}
    assert "Transfer pairs" in stdout and "mean of 2 pairs" in stdout
    # same thing spelled with --input_dir/--target_dir
    code, _, _ = cli(["--checkpoint", ckpt, "--pairs", "--input_dir", folders / "voice", "--target_dir",
                      folders / "guitar", "--limit", "1", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0


@pytest.mark.parametrize("argv, expected", [
    (["--pairs", "only_one_dir"], "--pairs needs two folders"),
    ([], "nothing to evaluate"),
    (["--audio_dir", "does/not/exist"], "folder not found"),
])
def test_flag_errors_are_one_line(argv, expected, ckpt, monkeypatch, capsys):
    code, _, err = cli(["--checkpoint", ckpt, *argv], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and expected in err
