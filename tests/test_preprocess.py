"""preprocess.py end to end: mixed good/bad folders, exit status, resume after SIGKILL, sharding.

Audio is short and CREPE is `tiny` to keep this file fast on 2 CPU cores.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import features as fx  # noqa: E402
import preprocess  # noqa: E402
from utils import UserError, torch_load  # noqa: E402


def tone(hz, seconds, sr=16000, amp=0.4, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * hz * t) * np.exp(-2 * t)
    return np.stack([x, 0.5 * x], 1) if channels == 2 else x


def run_pre(args):
    return preprocess.main([*map(str, args), "--model", "tiny", "--device", "cpu"])


def outputs(d):
    return sorted(p.relative_to(d).as_posix() for p in Path(d).rglob("*.pt"))


def assert_same_outputs(a, b):
    names = outputs(a)
    assert names == outputs(b) and names
    for n in names:
        x, y = torch_load(Path(a) / n), torch_load(Path(b) / n)
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert torch.equal(x[k], y[k]), (n, k)
            else:
                assert x[k] == y[k], (n, k)


def test_mixed_folder(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "good1.wav", tone(220, 0.4), 16000)
    sf.write(src / "sub" / "good2.FLAC", tone(330, 0.3), 16000, format="FLAC")
    sf.write(src / "stereo44k.wav", tone(196, 0.4, 44100, channels=2), 44100)
    sf.write(src / "eight_bit.wav", tone(262, 0.3, 22050), 22050, subtype="PCM_U8")
    sf.write(src / "empty.wav", np.zeros(0), 16000)
    sf.write(src / "one_sample.wav", np.array([0.3]), 16000)
    sf.write(src / "silent.wav", np.zeros(8000), 16000)
    (src / "text.wav").write_text("not audio at all\n")
    (src / "readme.txt").write_text("ignored: not an audio extension\n")

    assert run_pre(["--input_dir", src, "--output_dir", out, "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert outputs(out) == ["eight_bit.pt", "good1.pt", "stereo44k.pt", "sub/good2.pt"]
    for bad in ("empty.wav", "one_sample.wav", "silent.wav", "text.wav"):
        assert f"failed {bad}: " in text
    assert "done 4, skipped (already done) 0, failed 4" in text

    d = torch_load(out / "stereo44k.pt")
    T = d["audio"].shape[0]
    assert abs(T - 0.4 * 16000) <= 1 and d["audio"].dtype == torch.float32
    for k in ("f0_hz", "periodicity", "loudness_db"):
        assert d[k].dtype == torch.float32 and d[k].shape == (fx.n_frames(T),)
    assert (d["sample_rate"], d["frame_rate"], d["hop"]) == (16000, 250, 64)
    assert d["source"] == "stereo44k.wav" and d["crepe_model"] == "tiny" and d["version"] == fx.FEATURE_VERSION
    assert torch_load(out / "sub" / "good2.pt")["source"] == "sub/good2.FLAC"
    f0 = torch_load(out / "eight_bit.pt")["f0_hz"].numpy()
    assert abs(np.median(1200 * np.log2(f0 / 262.0))) < 30  # 8-bit input still tracks its pitch

    # a second run skips everything that is already valid and still reports the bad inputs
    assert run_pre(["--input_dir", src, "--output_dir", out]) == 0
    assert "done 0, skipped (already done) 4, failed 4" in capsys.readouterr().out


def test_all_bad_folder_exits_1(tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.wav").write_text("text")
    sf.write(src / "b.wav", np.zeros(0), 16000)
    assert run_pre(["--input_dir", src, "--output_dir", tmp_path / "o"]) == 1  # run_main exits with it
    cap = capsys.readouterr()
    assert "no usable feature files" in cap.err and "failed a.wav" in cap.out and "failed b.wav" in cap.out


def test_missing_input_dir_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        run_pre(["--input_dir", tmp_path / "nope"])
    assert str(tmp_path / "nope") in str(e.value) and "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no audio files"):
        run_pre(["--input_dir", empty])
    with pytest.raises(UserError, match="--shard"):
        run_pre(["--input_dir", empty, "--shard", "2/2"])


def test_default_output_dir_is_data_processed_name(tmp_path, monkeypatch):
    src = tmp_path / "myset"
    src.mkdir()
    sf.write(src / "x.wav", tone(440, 0.2), 16000)
    monkeypatch.chdir(tmp_path)
    assert run_pre(["--input_dir", "myset", "--workers", "0"]) == 0
    assert (tmp_path / "data" / "processed" / "myset" / "x.pt").is_file()


def test_shards_are_disjoint_and_cover_everything(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    names = [f"f{i}.wav" for i in range(5)]
    for i, n in enumerate(names):
        sf.write(src / n, tone(150 + 40 * i, 0.15), 16000)
    got = []
    for i in range(2):
        assert run_pre(["--input_dir", src, "--output_dir", tmp_path / f"o{i}", "--shard", f"{i}/2"]) == 0
        got.append(set(outputs(tmp_path / f"o{i}")))
    assert got[0] == {"f0.pt", "f2.pt", "f4.pt"} and got[1] == {"f1.pt", "f3.pt"}
    # an empty shard is not an error
    assert run_pre(["--input_dir", src, "--output_dir", tmp_path / "o9", "--shard", "7/9"]) == 0


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        sf.write(src / f"take{i}.wav", tone(110 * 2 ** (i / 4), 1.2), 16000)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, str(ROOT / "preprocess.py"), "--input_dir", str(src), "--output_dir", str(killed),
           "--model", "tiny", "--device", "cpu", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not outputs(killed) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    n_before = len(outputs(killed))
    assert 1 <= n_before < 6, "the run should have been killed midway"
    # a partial output (as a crash inside a non-atomic writer would leave) and a stale temp file
    (killed / "take5.pt").write_bytes(b"PK\x03\x04 truncated")
    (killed / ".take5.pt.abc123.tmp").write_bytes(b"junk")

    capsys.readouterr()
    assert run_pre(["--input_dir", src, "--output_dir", killed, "--workers", "1"]) == 0
    assert f"done {6 - n_before}, skipped (already done) {n_before}, failed 0" in capsys.readouterr().out
    assert run_pre(["--input_dir", src, "--output_dir", clean, "--workers", "0"]) == 0
    assert_same_outputs(killed, clean)
    assert not list(killed.rglob("*.tmp")) and not list(clean.rglob("*.tmp"))


def _no_work(*a, **k):
    raise AssertionError("work started before the output location was checked")


def test_unwritable_output_dir_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from utils import run_main

    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "x.wav", tone(220, 0.2), 16000)
    monkeypatch.setattr(preprocess, "load_and_check", _no_work)
    monkeypatch.setattr(preprocess, "find_audio_files", _no_work)
    (tmp_path / "file.txt").write_text("x")
    under_file = tmp_path / "file.txt" / "out"
    with pytest.raises(SystemExit) as e:
        run_main(lambda _: run_pre(["--input_dir", src, "--output_dir", under_file]))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output_dir" in err[0] and "is a file, not a folder" in err[0]
    with pytest.raises(UserError, match="is a file; give a folder"):  # a file where the folder should go
        run_pre(["--input_dir", src, "--output_dir", tmp_path / "file.txt"])
    # read-only location (CI runs as root, where chmod does not deny): deny through os.access
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(UserError) as e:
        run_pre(["--input_dir", src, "--output_dir", tmp_path / "ro" / "out"])
    assert "cannot write in" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "in"]  # nothing created


def test_threads_flag_sets_torch_threads(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "x.wav", tone(220, 0.2), 16000)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_pre(["--input_dir", src, "--output_dir", tmp_path / "o", "--workers", "0", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "o" / "x.pt").is_file()
