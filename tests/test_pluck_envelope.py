"""The learned plucked-note envelope: the training-set statistic (data.pluck_envelope_statistic), its use
in transfer.py's pluck envelope, and recomputing it for an existing checkpoint (train.py --update_stats).

Oracles: synthetic training sets whose notes decay at known rates (straight lines in dB after a known
attack), so the statistic must give back those curves; a sustained hum, whose plucked rendering must then
follow the stored curve exactly (and stop where the hum stops); the statistics of the same files computed
directly by data.dataset_statistics. Feature dicts are built here (no audio, no CREPE), so this is fast.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import data
import features
import notes
import transfer
from conftest import run_cli
from test_data import write_features

FR = features.FRAME_RATE
ROOT = Path(__file__).resolve().parents[1]
ATTACK_DB = (-9.0, -6.0, -3.0)        # the synthetic notes rise for 3 frames, then decay from their peak
LOW, HIGH = 45.0, 70.0                # MIDI pitches of the two groups of synthetic notes
RATES = {LOW: 12.0, HIGH: 30.0}       # their decay, dB/s


def midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def decaying_notes(midi: float, rate_db_per_s: float, n_notes: int, rng, max_seconds: float) -> dict:
    """Feature dict of one file: `n_notes` notes at `midi`, each 3 attack frames (ATTACK_DB below its
    peak), then a straight decay of `rate_db_per_s` from a random peak level (-10..-5 dB), lengths
    0.5..max_seconds, +-0.2 dB noise; 0.3 s of silence (-80 dB, periodicity 0) between notes."""
    f0, per, loud = [], [], []
    gap = int(0.3 * FR)
    for _ in range(n_notes):
        n = int(rng.uniform(0.5, max_seconds) * FR)
        peak = rng.uniform(-10.0, -5.0)
        t = np.arange(n - len(ATTACK_DB))
        env = np.concatenate([peak + np.array(ATTACK_DB), peak - rate_db_per_s * t / FR])
        loud += [np.full(gap, -80.0), env + rng.uniform(-0.2, 0.2, n)]
        per += [np.zeros(gap), np.ones(n)]
        f0 += [np.full(gap + n, midi_hz(midi))]
    loud.append(np.full(gap, -80.0))
    per.append(np.zeros(gap))
    f0.append(np.full(gap, midi_hz(midi)))
    return {k: torch.from_numpy(np.concatenate(v).astype(np.float32))
            for k, v in (("f0_hz", f0), ("periodicity", per), ("loudness_db", loud))}


def expected_curve(rate_db_per_s: float, n_frames: int) -> np.ndarray:
    """The synthetic notes' loudness relative to their peak, dB [n_frames] from the note's first frame."""
    t = np.arange(n_frames)
    k = len(ATTACK_DB)
    return np.where(t < k, np.array(ATTACK_DB + (0.0,))[np.minimum(t, k)], -rate_db_per_s * (t - k) / FR)


@pytest.fixture(scope="module")
def plucked_set():
    """60 low notes decaying 12 dB/s and 60 high ones decaying 30 dB/s, in 6 files."""
    rng = np.random.default_rng(0)
    return [decaying_notes(LOW, RATES[LOW], 20, rng, 1.6) for _ in range(3)] + \
           [decaying_notes(HIGH, RATES[HIGH], 20, rng, 1.0) for _ in range(3)]


def test_statistic_recovers_known_attack_and_decay_per_pitch_band(plucked_set):
    stat = data.pluck_envelope_statistic(plucked_set)
    assert stat["attack_frames"] == notes.PLUCK_ATTACK_FRAMES
    assert stat["notes"] == [60, 60]                    # 120 notes, 50 per band at least: two bands
    assert len(stat["band_edges_midi"]) == 1 and LOW < stat["band_edges_midi"][0] < HIGH
    for band, midi in enumerate((LOW, HIGH)):
        curve = np.asarray(stat["curves_db"][band])
        assert curve.size >= 0.5 * FR                   # runs while >= 20 notes sound (all last 0.5 s)
        np.testing.assert_allclose(curve, expected_curve(RATES[midi], curve.size), atol=0.3)
        assert stat["tail_db_per_s"][band] == pytest.approx(-RATES[midi], abs=1.0)
        # the transfer side: the band of that pitch, continued past the curve at the learned decay
        long = notes.pluck_curve(curve.size + FR, midi, stat)
        np.testing.assert_allclose(long, expected_curve(RATES[midi], long.size), atol=1.0)
    # dataset_statistics carries it into the model config, as plain Python numbers
    assert data.dataset_statistics(plucked_set)["pluck_envelope"] == stat


def test_statistic_without_notes_is_none_and_transfer_falls_back():
    silent = {"f0_hz": torch.full((500,), 200.0), "periodicity": torch.zeros(500),
              "loudness_db": torch.full((500,), -30.0)}
    with pytest.warns(UserWarning, match="no notes"):
        assert data.pluck_envelope_statistic([silent]) is None
    np.testing.assert_allclose(notes.pluck_curve(250, 60.0, None, decay_db_per_s=20.0),
                               -20.0 * np.arange(250) / FR)


def hum(f0_hz: float, seconds: float = 1.5, level_db: float = -20.0):
    """Features of a sustained hum: 0.2 s silence, a 5-frame swell, `seconds` steady, a 0.2 s fade to
    -60 dB, 0.2 s silence. Returns (f0 [F], loudness [F], periodicity [F], (start, fade_start) frames)."""
    pre, swell, steady, fade = int(0.2 * FR), 5, int(seconds * FR), int(0.2 * FR)
    loud = np.concatenate([np.full(pre, -80.0), np.linspace(level_db - 10, level_db, swell),
                           np.full(steady, level_db), np.linspace(level_db, -60.0, fade), np.full(pre, -80.0)])
    per = np.where(loud > -70, 0.9, 0.05)
    return np.full(loud.size, f0_hz), loud, per, (pre, pre + swell + steady)


def test_transfer_of_a_sustained_hum_follows_the_stored_curve_and_stops_with_it(plucked_set):
    stat = data.pluck_envelope_statistic(plucked_set)
    cfg = {"mean_midi": 57.0, "loudness_quantiles": list(np.linspace(-30.0, 0.0, 101)),
           "loudness_mean": -15.0, "loudness_std": 10.0, "pluck_envelope": stat}
    for midi in (LOW + 5, HIGH):                        # hums in the low and in the high band
        f0, loud, per, (a, fade) = hum(midi_hz(midi), seconds=1.2)
        _, out, info = transfer.adjust_features(f0, loud, per, cfg, transfer.AdjustSettings(octave=0))
        _, sung, _ = transfer.adjust_features(f0, loud, per, cfg, transfer.AdjustSettings(octave=0, envelope="voice"))
        assert info["envelope"] == "pluck, learned (2 pitch bands)"
        assert info["note_mask"][a] and info["note_mask"][fade - 1]
        onset = sung[a:a + notes.PLUCK_ATTACK_FRAMES].max()      # the sung onset level (steady hum)
        want = onset + notes.pluck_curve(fade - a, midi, stat)
        assert want.min() > -features.LOUDNESS_RANGE_DB + 1          # not clipped at the -80 dB floor
        np.testing.assert_allclose(out[a:fade], want, atol=1e-4)    # the band's curve from the onset
        band_rate = RATES[LOW if midi < stat["band_edges_midi"][0] else HIGH]
        drop = out[a + len(ATTACK_DB)] - out[a + len(ATTACK_DB) + FR]  # 1 s after the attack peak
        assert drop == pytest.approx(band_rate, abs=1.0)
        assert np.all(out[fade:] <= sung[fade:] + 1e-4)             # never above the sung loudness
    # the singer stops (a fast fade) while the curve still rings: the note stops with the voice
    f0, loud, per, (a, fade) = hum(midi_hz(LOW), seconds=0.6, level_db=-10.0)
    note = loud > -70
    out = notes.pluck_envelope(loud, note, f0, stat)
    ring = -10.0 + notes.pluck_curve(note.sum(), LOW, stat)      # the curve alone, from the onset
    k = 4                                                           # the hum peaks at the end of its 5-frame swell
    np.testing.assert_allclose(out[note][k:], np.minimum(ring[k:], loud[note][k:]))
    assert out[fade + 40] == loud[fade + 40] < ring[fade + 40 - a] - 20
    # an explicit --pluck_decay, or a checkpoint without the statistic: the fixed straight decay
    f0, loud, per, (a, fade) = hum(midi_hz(57.0))
    for c, s in ((cfg, transfer.AdjustSettings(octave=0, pluck_decay_db_per_s=20.0)),
                 ({k: v for k, v in cfg.items() if k != "pluck_envelope"}, transfer.AdjustSettings(octave=0))):
        _, out, info = transfer.adjust_features(f0, loud, per, c, s)
        assert info["envelope"] == "pluck, 20 dB/s"
        np.testing.assert_allclose(out[a:fade] - out[a:fade].max(), -20.0 * np.arange(fade - a) / FR, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Recomputing the statistics of an existing checkpoint: train.py --update_stats
# ---------------------------------------------------------------------------------------------------

def feature_folder(root: Path, plucked_set) -> Path:
    """The plucked set as preprocess.py feature files (audio: silence of the right length)."""
    for i, f in enumerate(plucked_set):
        F = f["f0_hz"].numel()
        write_features(root / f"take_{i}.pt", np.zeros(F * features.HOP, np.float32), f["f0_hz"].numpy(),
                       loudness_db=f["loudness_db"].numpy(), periodicity=f["periodicity"].numpy())
    return root


def test_update_stats_adds_the_statistic_and_keeps_everything_else(plucked_set, tmp_path, monkeypatch, capsys):
    import train
    from utils import atomic_torch_save

    folder = feature_folder(tmp_path / "feats", plucked_set)
    stats = data.NeuralGuitarDataset(folder, split="train", val_fraction=0.1).stats
    assert stats["pluck_envelope"] is not None
    old_config = {k: v for k, v in stats.items() if k != "pluck_envelope"}   # trained before it existed
    ckpt = {"model": {"w": torch.arange(6.0)}, "config": {"hidden_size": 8, **old_config},
            "optimizer": {"state": {}}, "epoch": 3}
    path = tmp_path / "old.pth"
    atomic_torch_save(ckpt, path)
    code, out, _ = run_cli(train.main, ["--data_dir", folder, "--update_stats", path], monkeypatch, capsys)
    assert code == 0 and "updated pluck_envelope" in out
    new = torch.load(path, weights_only=True)
    assert new["config"] == {"hidden_size": 8, **stats}                      # added; the rest as it was
    assert torch.equal(new["model"]["w"], ckpt["model"]["w"]) and new["epoch"] == 3 and "optimizer" in new
    code, out, _ = run_cli(train.main, ["--data_dir", folder, "--update_stats", path], monkeypatch, capsys)
    assert code == 0 and "nothing changed" in out                            # idempotent
    # another data set (or split) than the model was trained on: one line, exit 1, file untouched
    ckpt["config"]["loudness_mean"] += 1.0
    atomic_torch_save(ckpt, path)
    before = path.read_bytes()
    code, _, err = run_cli(train.main, ["--data_dir", folder, "--update_stats", path], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "loudness_mean" in err and str(path) in err
    assert path.read_bytes() == before
    code, _, err = run_cli(train.main, ["--data_dir", folder, "--update_stats", tmp_path / "nope.pth"],
                           monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "nope.pth" in err


def test_bundled_model_carries_the_statistic_of_its_training_data():
    cfg = torch.load(ROOT / "pretrained" / "guitar_demo.pth", weights_only=True)["config"]
    stat = cfg["pluck_envelope"]
    assert stat is not None and len(stat["curves_db"]) == len(stat["band_edges_midi"]) + 1
    assert np.all(np.diff(stat["band_edges_midi"]) > 0) and all(t <= 0 for t in stat["tail_db_per_s"])
    for curve in stat["curves_db"]:
        curve = np.asarray(curve)
        assert curve.size > FR and np.all(curve[:stat["attack_frames"]] <= 0)   # onset = max of the attack
        assert curve[FR] < curve[stat["attack_frames"]] - 3                      # a plucked note decays
    folder = ROOT / "data" / "processed" / "guitar_train"
    if not folder.is_dir():
        pytest.skip(f"{folder} not here (README, The bundled model, makes it); stored statistic not re-checked")
    assert data.NeuralGuitarDataset(folder, split="train", val_fraction=0.1).stats["pluck_envelope"] == stat
