"""evaluate.py: resynthesis report with the sine baseline, pairs mode, JSON/table output, flag errors.

Oracles: features.compute_loudness and an FFT peak for the baseline's definition; the JSON written by the
real CLI (in-process through utils.run_main). The model is the small one trained in test_transfer.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import evaluate
from conftest import run_cli
import features
import notes
import torch
from test_transfer import broken_checkpoint, pluck, sung_tone, tiny_checkpoint

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
    low, high = notes.config_pitch_range(torch.load(ckpt, weights_only=True)["config"])
    for r, hz in zip(rep["files"], (196.0, 262.0)):
        assert r["mss_output_target"] > 0 and r["mss_input_target"] > 0 and r["reduction_pct"] is not None
        assert r["octave"] == notes.auto_octave([features.hz_to_midi(hz)], low, high)  # the checkpoint's range
        assert "onset_f_output" not in r             # no MIDI truth (.json) next to these targets
    assert {"mss_output_target", "mss_input_target", "reduction_pct", "mss_ratio"} <= set(rep["mean"])
    assert rep["mean"]["onset_f_output"] is None and list(rep["by_voice"]) == ["voice"]
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


# ---------------------------------------------------------------------------------------------------
# Issue 14: unwritable --json, broken checkpoints, noise without notes, progress, threads
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["under_a_file", "read_only", "a_folder"])
def test_unwritable_json_is_one_line_before_any_work(case, ckpt, folders, tmp_path, monkeypatch, capsys):
    import os

    import model

    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "ro").mkdir()
    (tmp_path / "eval.json").mkdir()
    out, expected = {"under_a_file": (tmp_path / "notes.txt" / "eval.json", "is a file, not a folder"),
                     "read_only": (tmp_path / "ro" / "eval.json", "cannot write"),
                     "a_folder": (tmp_path / "eval.json", "is a folder")}[case]
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == tmp_path / "ro" and mode & os.W_OK
                        else real(p, mode, *a, **k))
    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("work started before --json was checked"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = cli(["--checkpoint", ckpt, "--audio_dir", folders / "voice", "--json", out, "--device", "cpu"],
                       monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and expected in err and "--json" in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("kind", ["nan", "overflow"])
def test_broken_checkpoint_is_one_line_and_no_json(kind, ckpt, folders, tmp_path, monkeypatch, capsys):
    bad = broken_checkpoint(ckpt, tmp_path, kind)
    out = tmp_path / "eval.json"
    code, _, err = cli(["--checkpoint", bad, "--audio_dir", folders / "voice", "--limit", "1", "--json", out,
                        "--device", "cpu", "--threads", "1"], monkeypatch, capsys)
    lines = [l for l in err.strip().splitlines() if not l.startswith("resynthesis ")]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], err
    assert not out.exists()


def test_json_never_holds_nan():
    rep = evaluate.finite_or_null({"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "x"})
    assert rep == {"a": None, "b": [1.5, None, {"c": None}], "d": "x"}
    json.dumps(rep, allow_nan=False)


def test_raw_pitch_accuracy_na_without_notes_and_no_warning():
    import warnings

    import mir_eval

    F = 200
    f0 = np.full(F, 220.0)
    note = np.zeros(F, bool)
    note[50:150] = True
    est = f0 * np.where(np.arange(F) < 100, 1.0, 2 ** (1 / 12))   # half the note frames a semitone off

    def oracle(voiced_out):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mir_eval.melody.raw_pitch_accuracy(note.astype(float), mir_eval.melody.hz2cents(np.where(note, f0, 0)),
                                                      voiced_out.astype(float), mir_eval.melody.hz2cents(est), 50.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # any warning fails the test
        assert evaluate.raw_pitch_accuracy(np.zeros(F, bool), f0, np.ones(F, bool), f0) is None
        silent_out = evaluate.raw_pitch_accuracy(note, f0, np.zeros(F, bool), est)   # output never voiced
        rpa = evaluate.raw_pitch_accuracy(note, f0, np.ones(F, bool), est)
    assert silent_out == pytest.approx(oracle(np.zeros(F, bool)))
    assert rpa == pytest.approx(oracle(np.ones(F, bool))) and rpa == pytest.approx(0.5)


def test_noise_is_na_and_left_out_of_the_mean(ckpt, tmp_path, monkeypatch, capsys, recwarn):
    d = tmp_path / "mixed"
    d.mkdir()
    sf.write(d / "a.wav", sung_tone(196.0, seconds=1.0, pad_s=0.1)[0], SR)
    rng = np.random.default_rng(0)
    sf.write(d / "noise.wav", (0.2 * rng.standard_normal(SR)).astype(np.float32), SR)
    out = tmp_path / "eval.json"
    code, stdout, err = cli(["--checkpoint", ckpt, "--audio_dir", d, "--json", out, "--device", "cpu",
                             "--threads", "1"], monkeypatch, capsys)
    assert code == 0
    res = json.loads(out.read_text())["resynthesis"]
    rows = {r["file"]: r for r in res["files"]}
    for who in ("model", "baseline"):
        assert rows["noise.wav"][who]["note_frames"] == 0 and rows["noise.wav"][who]["rpa"] is None
        assert rows["a.wav"][who]["rpa"] is not None
        assert res["mean"][who]["rpa"] == pytest.approx(rows["a.wav"][who]["rpa"])   # noise left out
    noise_line = next(l for l in stdout.splitlines() if l.startswith("noise.wav"))
    assert "n/a" in noise_line
    assert not [w for w in recwarn if "voiced frames" in str(w.message)]            # mir_eval kept quiet
    # progress: one line per file, the first with the expected time left
    progress = [l for l in err.splitlines() if l.startswith("resynthesis ")]
    assert [l.split(":")[0] for l in progress] == ["resynthesis 1/2", "resynthesis 2/2"]
    assert "left" in progress[0] and "left" not in progress[1]


def test_threads_default_to_all_cores(ckpt, folders, monkeypatch, capsys):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert evaluate.build_parser().parse_args([]).threads == 7
    seen = []

    def stop(n):
        seen.append(n)
        raise evaluate.UserError("stop here")
    monkeypatch.setattr(evaluate, "apply_threads", stop)
    cli(["--checkpoint", ckpt, "--audio_dir", folders / "voice"], monkeypatch, capsys)
    cli(["--checkpoint", ckpt, "--audio_dir", folders / "voice", "--threads", "2"], monkeypatch, capsys)
    assert seen == [7, 2]


# ---------------------------------------------------------------------------------------------------
# Note placement against a MIDI truth (evaluate.onset_times / onset_f_measure / truth_pitch_accuracy)
# ---------------------------------------------------------------------------------------------------

def plucked_melody():
    """A guitar line of Karplus-Strong plucks (conftest.pluck) with known onsets, each damped over 50 ms
    after its note-off: audio [T] 16 kHz, notes [{onset_s, offset_s, pitch}] (a repeated A3 included)."""
    from conftest import pluck as ks_pluck

    notes_ = [(0.25, 0.55, 52), (0.55, 0.95, 55), (1.1, 1.4, 57), (1.4, 1.7, 57), (1.9, 2.5, 60)]
    y = np.zeros(int(2.8 * SR), np.float32)
    for i, (on, off, midi) in enumerate(notes_):
        tone = ks_pluck(float(features.midi_to_hz(midi)), off - on + 0.05, decay=0.996, seed=i)
        tone[-int(0.05 * SR):] *= np.linspace(1.0, 0.0, int(0.05 * SR))   # damped by the hand, no click
        a = int(on * SR)
        y[a:a + tone.size] += tone[: y.size - a]
    return y, [dict(onset_s=on, offset_s=off, pitch=float(m)) for on, off, m in notes_]


def test_onset_metric_is_one_on_the_guitar_itself_and_low_on_noise():
    from conftest import white_noise

    y, truth = plucked_melody()
    ref = [n["onset_s"] for n in truth]
    assert evaluate.onset_f_measure(ref, evaluate.onset_times(y)) == 1.0
    assert evaluate.onset_f_measure(ref, evaluate.onset_times(white_noise(2.8, amplitude=0.5))) < 0.3
    assert evaluate.onset_f_measure(ref, evaluate.onset_times(np.zeros(SR, np.float32))) == 0.0
    # the window is 50 ms: onsets 40 ms late still count, 60 ms late do not
    assert evaluate.onset_f_measure(ref, np.array(ref) + 0.04) == 1.0
    assert evaluate.onset_f_measure(ref, np.array(ref) + 0.06) == 0.0


def test_pitch_accuracy_against_the_midi_truth():
    _, truth = plucked_melody()
    F = int(2.8 * features.FRAME_RATE)
    exact = evaluate.truth_f0(truth, F, trim_s=0.0)
    assert evaluate.truth_pitch_accuracy(truth, np.where(exact > 0, exact, 100.0)) == 1.0
    # 40 cents sharp still counts, 60 cents does not; a frame outside the notes does not matter
    assert evaluate.truth_pitch_accuracy(truth, np.where(exact > 0, exact * 2 ** (40 / 1200), 1.0)) == 1.0
    assert evaluate.truth_pitch_accuracy(truth, np.where(exact > 0, exact * 2 ** (60 / 1200), 1.0)) == 0.0
    # the trim leaves PITCH_TRIM_S out at each note end
    trimmed = evaluate.truth_f0(truth, F)
    n0 = int(round((truth[0]["offset_s"] - truth[0]["onset_s"] - 2 * evaluate.PITCH_TRIM_S) * features.FRAME_RATE))
    assert abs(int((trimmed[: int(0.55 * features.FRAME_RATE)] > 0).sum()) - n0) <= 1


def test_split_half_is_deterministic_by_name():
    names = [f"phrase_s1_{i:04d}" for i in range(40)]
    halves = [evaluate.split_half(n) for n in names]
    assert halves == [evaluate.split_half(n + ".wav") for n in names]
    assert 10 < halves.count("test") < 30
