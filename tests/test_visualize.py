"""visualize_features.py: the QC plot is written atomically, decodes, and is not blank; NaN frames are
gaps; unusable files and output folders are one line each, checked before any work."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import features as fx  # noqa: E402
import visualize_features as vis  # noqa: E402
from utils import UserError, atomic_torch_save, run_main, torch_load  # noqa: E402


def pluck(hz, seconds, sr=16000, seed=0):
    """Karplus-Strong plucked string."""
    n, N = int(seconds * sr), int(round(sr / hz))
    exc = np.zeros(n)
    exc[:N] = np.random.default_rng(seed).uniform(-1, 1, N)
    a = np.zeros(N + 2)
    a[[0, N, N + 1]] = [1.0, -0.498, -0.498]
    return ss.lfilter([1.0], a, exc)


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    x = np.concatenate([pluck(196, 0.5), np.zeros(2000), pluck(294, 0.5, seed=1)])
    x = (0.5 * x / np.abs(x).max()).astype(np.float32)
    feats = fx.extract_features(x, "tiny", "cpu")
    import torch

    d = {"audio": torch.from_numpy(x), **feats, "sample_rate": 16000, "frame_rate": 250, "hop": 64,
         "source": "melody.wav", "crepe_model": "tiny", "version": fx.FEATURE_VERSION}
    path = tmp_path_factory.mktemp("feat") / "melody.pt"
    atomic_torch_save(d, path)
    return path


def check_png(path):
    import matplotlib.pyplot as plt

    assert path.stat().st_size > 30_000
    img = plt.imread(path)  # raises if the PNG does not decode
    assert img.shape[0] >= 800 and img.shape[1] >= 1200
    assert img[..., :3].std() > 0.1  # not a blank page
    assert not list(path.parent.glob("*.tmp"))


def test_single_file(feature_file, tmp_path, capsys):
    assert vis.main(["--file", str(feature_file), "--output_dir", str(tmp_path / "vis")]) == 0
    check_png(tmp_path / "vis" / "melody.png")
    assert "wrote" in capsys.readouterr().out
    s = vis.summary(vis.load_features(feature_file))
    assert 0.5 < s["voiced_ratio"] <= 1.0
    assert 180 < s["f0_lo"] < 210 and 280 < s["f0_hi"] < 310  # G3 .. D4


def test_all_folder_mirrors_subfolders_and_reports_bad_files(feature_file, tmp_path, capsys):
    root = tmp_path / "processed"
    (root / "sub").mkdir(parents=True)
    (root / "a.pt").write_bytes(feature_file.read_bytes())
    (root / "sub" / "b.pt").write_bytes(feature_file.read_bytes())
    (root / "broken.pt").write_bytes(b"not a torch file")
    assert vis.main(["--all", str(root), "--output_dir", str(tmp_path / "vis")]) == 0
    check_png(tmp_path / "vis" / "a.png")
    check_png(tmp_path / "vis" / "sub" / "b.png")
    assert not (tmp_path / "vis" / "broken.png").exists()
    assert "broken.pt: not a feature file from preprocess.py (not a torch file)" in capsys.readouterr().out


def test_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        vis.main(["--file", str(tmp_path / "missing.pt")])
    with pytest.raises(UserError, match="no .pt files"):
        vis.main(["--all", str(tmp_path)])


def variant(feature_file, path, **changes):
    """A copy of the fixture's feature file at `path` with some entries replaced."""
    d = torch_load(feature_file)
    d.update(changes)
    atomic_torch_save(d, path)
    return d


def test_all_plots_nan_f0_as_gaps_and_skips_unusable_files_with_one_line_each(feature_file, tmp_path, capsys):

    root, out = tmp_path / "processed", tmp_path / "vis"
    root.mkdir()
    f0 = torch_load(feature_file)["f0_hz"].clone()
    nan_frames = np.arange(40, 60)
    f0[nan_frames] = float("nan")
    variant(feature_file, root / "nan.pt", f0_hz=f0)
    variant(feature_file, root / "short.pt", f0_hz=f0[:-7])
    (root / "empty.pt").write_bytes(b"")
    (root / "text.pt").write_text("hello, not a tensor\n")
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "cut.pt").write_bytes(feature_file.read_bytes()[:3000])  # a zip cut short
    assert vis.main(["--all", str(root), "--output_dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["nan.png"]
    check_png(out / "nan.png")
    assert f"nan.pt: {len(nan_frames)} of {f0.shape[0]} f0_hz frames cannot be drawn" in text
    F, T = f0.shape[0], torch_load(feature_file)["audio"].shape[0]
    reasons = {"short.pt": f"f0_hz has {F - 7} frames but its audio ({T} samples, hop 64) needs {F}",
               "empty.pt": "(empty file)", "text.pt": "(not a torch file)", "random.pt": "(not a torch file)",
               "cut.pt": "(damaged or truncated torch archive)"}
    lines = [l for l in text.splitlines() if l.startswith("  skipped ")]
    assert len(lines) == len(reasons) and "wrote 1 plots" in text and f"skipped {len(reasons)}:" in text
    for name, why in reasons.items():
        line = next(l for l in lines if f"/{name}: " in l)
        assert why in line and line.endswith("re-run preprocess.py for it"), line
    # the NaN frames are gaps, not values: the summary equals the one of the finite frames alone
    d = vis.load_features(root / "nan.pt")
    keep = np.isfinite(d["f0_hz"]) & (d["periodicity"] >= vis.VOICED_THRESHOLD)
    assert np.isnan(d["f0_hz"][nan_frames]).all()
    assert vis.summary(d)["f0_med"] == np.percentile(d["f0_hz"][keep], 50)


def test_nothing_plottable_exits_1_with_one_line(feature_file, tmp_path, capsys):
    root = tmp_path / "processed"
    root.mkdir()
    (root / "empty.pt").write_bytes(b"")
    variant(feature_file, root / "list.pt", audio=[1, 2, 3])
    with pytest.raises(SystemExit) as e:
        run_main(lambda _: vis.main(["--all", str(root), "--output_dir", str(tmp_path / "vis")]))
    assert e.value.code == 1
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    err = [l for l in re.split(r"[\r\n]+", cap.err) if l.startswith("error:")]  # tqdm draws its bar there too
    assert len(err) == 1 and "none of the 2 files could be plotted" in err[0]
    assert "list.pt: not a feature file from preprocess.py (audio is a list, not a tensor)" in cap.out
    assert not (tmp_path / "vis").exists()


def test_single_file_with_wrong_length_is_one_line(feature_file, tmp_path):
    d = variant(feature_file, tmp_path / "long.pt", loudness_db=torch_load(feature_file)["loudness_db"].repeat(2))
    with pytest.raises(UserError) as e:
        vis.main(["--file", str(tmp_path / "long.pt"), "--output_dir", str(tmp_path / "vis")])
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "long.pt") in msg
    assert f"loudness_db has {2 * d['f0_hz'].shape[0]} frames" in msg and "re-run preprocess.py" in msg


def _no_work(*a, **k):
    raise AssertionError("work started before the output location was checked")


def test_unwritable_output_dir_is_one_line_before_any_work(feature_file, tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.setattr(vis, "load_features", _no_work)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        run_main(lambda _: vis.main(["--file", str(feature_file), "--output_dir", str(tmp_path / "file.txt" / "v")]))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output_dir" in err[0] and "is a file, not a folder" in err[0]
    with pytest.raises(UserError, match="is a file; give a folder"):
        vis.main(["--all", str(feature_file.parent), "--output_dir", str(tmp_path / "file.txt")])
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # read-only (root ignores chmod)
    with pytest.raises(UserError) as e:
        vis.main(["--all", str(feature_file.parent), "--output_dir", str(tmp_path / "ro")])
    assert "cannot write in" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
