"""visualize_features.py: the QC plot is written atomically, decodes, and is not blank."""
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import features as fx  # noqa: E402
import visualize_features as vis  # noqa: E402
from utils import UserError, atomic_torch_save  # noqa: E402


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
    assert "broken.pt: not a readable feature file" in capsys.readouterr().out


def test_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        vis.main(["--file", str(tmp_path / "missing.pt")])
    with pytest.raises(UserError, match="no .pt files"):
        vis.main(["--all", str(tmp_path)])
