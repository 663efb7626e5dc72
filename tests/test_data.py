"""data.py: aligned crops, deterministic file split, statistics, silence, schema errors.

Feature files are written directly in the preprocess.py schema from analytic signals (no CREPE).
"""
import hashlib
import shutil

import librosa
import numpy as np
import pytest
import torch

import features
from conftest import sine
from data import NeuralGuitarDataset, dataset_statistics, load_feature_file, split_files
from utils import UserError

SR, HOP, FR = features.SAMPLE_RATE, features.HOP, features.FRAME_RATE


def write_features(path, audio, f0_hz, loudness_db=None, periodicity=None, version=None, **extra):
    """Write a feature file in preprocess.py's schema (loudness from features.compute_loudness)."""
    audio = np.asarray(audio, np.float32)
    F = features.n_frames(audio.size)
    f0 = np.broadcast_to(np.asarray(f0_hz, np.float32), (F,)).copy()
    loud = features.compute_loudness(audio) if loudness_db is None else \
        np.broadcast_to(np.asarray(loudness_db, np.float32), (F,)).copy()
    per = np.ones(F, np.float32) if periodicity is None else np.asarray(periodicity, np.float32)
    d = {"audio": torch.from_numpy(audio), "f0_hz": torch.from_numpy(f0), "periodicity": torch.from_numpy(per),
         "loudness_db": torch.from_numpy(np.asarray(loud, np.float32)), "sample_rate": SR, "frame_rate": FR,
         "hop": HOP, "source": str(path.name), "crepe_model": "none",
         "version": features.FEATURE_VERSION if version is None else version}
    d.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(d, path)
    return d


def zero_crossing_hz(x):
    """Frequency of a clean sine from its rising zero crossings (interpolated)."""
    idx = np.nonzero((x[:-1] < 0) & (x[1:] >= 0))[0]
    frac = -x[idx] / (x[idx + 1] - x[idx])
    t = idx + frac
    return SR * (len(t) - 1) / (t[-1] - t[0])


def test_crops_align_audio_and_features(tmp_path):
    # 220 Hz for 1.3 s, then 440 Hz: the change is at frame 325 = sample 20800 in the file
    change_frame = int(1.3 * FR)
    audio = np.concatenate([sine(220, 1.3), sine(440, 1.3)])
    f0 = np.where(np.arange(features.n_frames(audio.size)) < change_frame, 220.0, 440.0)
    write_features(tmp_path / "tone.pt", audio, f0)
    ds = NeuralGuitarDataset(tmp_path, crop_seconds=1.0, split="train", val_fraction=0.0)
    assert len(ds) == 2  # 650 frames // 250
    seen = 0
    for epoch in range(30):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["audio"].shape == (SR,) and item["f0_hz"].shape == (FR,)
            jumps = np.nonzero(np.diff(item["f0_hz"].numpy()))[0]
            if len(jumps) == 0:
                continue
            k = int(jumps[0]) + 1  # first 440 Hz frame within the crop
            if not 40 <= k <= FR - 40:
                continue
            a = item["audio"].numpy()
            s = k * HOP  # the same place in samples
            assert zero_crossing_hz(a[s - 600: s - 8]) == pytest.approx(220, rel=0.01)
            assert zero_crossing_hz(a[s + 8: s + 600]) == pytest.approx(440, rel=0.01)
            seen += 1
    assert seen >= 3


def test_crop_is_exact_slice(tmp_path):
    # f0 encodes the frame index, audio is a ramp: every crop must be audio[s*64 : s*64 + 16000]
    T = int(2.5 * SR)
    ramp = np.arange(T, dtype=np.float64) / T
    F = features.n_frames(T)
    write_features(tmp_path / "ramp.pt", ramp, 100.0 + np.arange(F), loudness_db=-20.0)
    ds = NeuralGuitarDataset(tmp_path, crop_seconds=1.0, split="train", val_fraction=0.0, seed=3)
    starts = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            s = int(round(item["f0_hz"][0].item() - 100.0))
            starts.add(s)
            assert 0 <= s <= F - FR
            np.testing.assert_array_equal(item["f0_hz"].numpy(), 100.0 + np.arange(s, s + FR))
            np.testing.assert_allclose(item["audio"].numpy(), ramp[s * HOP: s * HOP + SR].astype(np.float32))
            assert item["mask"].sum() == FR
    assert len(starts) > 5  # crops really move around
    # same (seed, epoch, index) -> same crop; a new dataset object agrees
    ds2 = NeuralGuitarDataset(tmp_path, crop_seconds=1.0, split="train", val_fraction=0.0, seed=3)
    ds.set_epoch(4), ds2.set_epoch(4)
    assert torch.equal(ds[1]["audio"], ds2[1]["audio"])


def test_split_deterministic_disjoint_and_stable(tmp_path):
    names = [f"player{i % 3}/take_{i:02d}.pt" for i in range(20)]
    for n in names:
        write_features(tmp_path / "a" / n, sine(220, 0.2), 220.0)
    tr = NeuralGuitarDataset(tmp_path / "a", crop_seconds=0.1, split="train", val_fraction=0.25)
    va = NeuralGuitarDataset(tmp_path / "a", crop_seconds=0.1, split="val", val_fraction=0.25, seed=7)
    assert set(tr.files).isdisjoint(va.files) and set(tr.files) | set(va.files) == set(names)
    # the documented rule, recomputed independently: SHA-1 of the relative POSIX path < val_fraction
    expected = sorted(n for n in names if int(hashlib.sha1(n.encode()).hexdigest()[:16], 16) / 2 ** 64 < 0.25)
    assert va.files == expected and 0 < len(expected) < 20
    # another machine / folder: same split
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    va2 = NeuralGuitarDataset(tmp_path / "elsewhere" / "b", crop_seconds=0.1, split="val", val_fraction=0.25)
    assert va2.files == va.files
    # two files: each split gets one, whatever the hashes say
    for frac in (1e-9, 0.999):
        tr2, va2 = split_files(["x.pt", "y.pt"], frac)
        assert len(tr2) == 1 and len(va2) == 1


def test_statistics_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    files = {}
    for i in range(4):
        F = 300 + 50 * i
        loud = rng.uniform(-90, 0, F).astype(np.float32)
        loud[:40] = -80.0  # silence
        f0 = rng.uniform(80, 900, F).astype(np.float32)
        per = rng.uniform(0, 1, F).astype(np.float32)
        files[f"f{i}.pt"] = (loud, f0, per)
        write_features(tmp_path / f"f{i}.pt", np.zeros(F * HOP), f0, loudness_db=loud, periodicity=per)
    tr = NeuralGuitarDataset(tmp_path, crop_seconds=0.5, split="train", val_fraction=0.3)
    va = NeuralGuitarDataset(tmp_path, crop_seconds=0.5, split="val", val_fraction=0.3)
    assert tr.files and va.files
    loud = np.concatenate([files[n][0] for n in tr.files]).astype(np.float64)
    f0 = np.concatenate([files[n][1] for n in tr.files]).astype(np.float64)
    per = np.concatenate([files[n][2] for n in tr.files])
    loud_on = loud[loud >= -70.0]
    stats = tr.stats
    assert stats["loudness_mean"] == pytest.approx(loud_on.mean(), abs=1e-4)
    assert stats["loudness_std"] == pytest.approx(loud_on.std(), abs=1e-4)
    np.testing.assert_allclose(stats["loudness_quantiles"], np.percentile(loud_on, np.arange(101)), atol=1e-4)
    assert len(stats["loudness_quantiles"]) == 101
    assert stats["mean_midi"] == pytest.approx(librosa.hz_to_midi(f0[per >= 0.5]).mean(), abs=1e-4)
    assert va.stats == stats  # the val dataset reports the TRAIN statistics too
    assert dataset_statistics([tmp_path / n for n in tr.files]) == stats
    voiced_midi = librosa.hz_to_midi(f0[per >= 0.5])
    np.testing.assert_allclose(stats["pitch_range_midi"], np.percentile(voiced_midi, [5, 95]), atol=1e-4)
    assert all(isinstance(v, float) for k, v in stats.items()
               if k not in ("loudness_quantiles", "pitch_range_midi", "pluck_envelope"))
    assert stats["pluck_envelope"] is None or isinstance(stats["pluck_envelope"], dict)  # tests/test_pluck_envelope.py


def test_mean_midi_counts_frames_at_the_voiced_threshold():
    """A frame is voiced at periodicity >= features.VOICED_THRESHOLD (0.5), the rule features.py uses."""
    n = 300
    f0 = np.repeat([220.0, 880.0, 110.0], n).astype(np.float32)            # A3, A5, A2
    per = np.repeat([1.0, features.VOICED_THRESHOLD, 0.49], n).astype(np.float32)
    feat = {"f0_hz": torch.from_numpy(f0), "periodicity": torch.from_numpy(per),
            "loudness_db": torch.full((3 * n,), -20.0)}
    want = librosa.hz_to_midi(np.array([220.0, 880.0])).mean()             # A3 and A5, not A2: 69.0
    assert dataset_statistics([feat])["mean_midi"] == pytest.approx(want, abs=1e-6)


def test_silent_crops_are_never_drawn(tmp_path, caplog):
    audio = np.concatenate([sine(330, 0.6), np.zeros(int(3.0 * SR))])
    write_features(tmp_path / "mostly_silent.pt", audio, 330.0)
    ds = NeuralGuitarDataset(tmp_path, crop_seconds=0.5, split="train", val_fraction=0.0)
    assert features.compute_loudness(audio)[300:].max() < features.SILENCE_DB  # the tail really is silent
    for epoch in range(20):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            assert ds[i]["loudness_db"].max() >= features.SILENCE_DB
    # validation tiles: only the non-silent ones
    write_features(tmp_path / "v" / "a.pt", audio, 330.0)
    write_features(tmp_path / "v" / "b.pt", audio, 330.0)
    va = NeuralGuitarDataset(tmp_path / "v", crop_seconds=0.5, split="val", val_fraction=0.5)
    assert 1 <= len(va) <= 2 and all(va[i]["loudness_db"].max() >= features.SILENCE_DB for i in range(len(va)))
    # a file that is silent throughout is left out with a warning; only silent files -> UserError
    write_features(tmp_path / "w" / "loud.pt", audio, 330.0)
    write_features(tmp_path / "w" / "silent.pt", np.zeros(SR), 100.0)
    with caplog.at_level("WARNING", logger="data"):
        tr = NeuralGuitarDataset(tmp_path / "w", crop_seconds=0.5, split="train", val_fraction=0.0)
    assert tr.names == ["loud.pt"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'w' / 'silent.pt'}: silent throughout (below {features.SILENCE_DB} dB); left out of the train split"]
    (tmp_path / "w" / "loud.pt").unlink()
    with pytest.raises(UserError, match="silent"):
        NeuralGuitarDataset(tmp_path / "w", crop_seconds=0.5, split="train", val_fraction=0.0)


def test_short_file_is_padded_with_mask(tmp_path):
    audio = sine(200, 0.6)  # 150 frames, crop is 250
    write_features(tmp_path / "short.pt", audio, 200.0)
    ds = NeuralGuitarDataset(tmp_path, crop_seconds=1.0, split="train", val_fraction=0.0)
    assert len(ds) == 1
    item = ds[0]
    assert item["audio"].shape == (SR,) and item["mask"].shape == (FR,)
    assert item["mask"][:150].eq(1).all() and item["mask"][150:].eq(0).all()
    np.testing.assert_allclose(item["audio"][:audio.size].numpy(), audio.astype(np.float32))
    assert item["audio"][150 * HOP:].abs().max() == 0
    assert torch.isfinite(item["f0_hz"]).all() and item["f0_hz"][150:].eq(200.0).all()
    assert item["loudness_db"][150:].max() < features.SILENCE_DB


def test_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        NeuralGuitarDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .pt feature files"):
        NeuralGuitarDataset(tmp_path / "empty")
    old = tmp_path / "old" / "x.pt"
    write_features(old, sine(220, 0.5), 220.0, version=0)
    with pytest.raises(UserError) as e:
        NeuralGuitarDataset(tmp_path / "old")
    assert "older preprocess.py" in str(e.value) and "re-run preprocess.py" in str(e.value)
    assert "x.pt" in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "nan" / "n.pt"
    a = sine(220, 0.5)
    a[100] = np.nan
    write_features(bad, a, 220.0, loudness_db=-20.0)
    with pytest.raises(UserError, match="NaN"):
        load_feature_file(bad)
    junk = tmp_path / "junk" / "j.pt"
    junk.parent.mkdir()
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="preprocess.py"):
        NeuralGuitarDataset(tmp_path / "junk")
