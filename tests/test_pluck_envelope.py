"""The learned plucked-note envelope: the training-set statistic (data.pluck_envelope_statistic), its use
in transfer.py's pluck envelope, and recomputing it for an existing checkpoint (update_stats.py).

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
from conftest import run_cli
from test_data import write_features

FR = features.FRAME_RATE
ROOT = Path(__file__).resolve().parents[1]
ATTACK_DB = (-9.0, -6.0, -3.0)        # the synthetic notes rise for 3 frames, then decay from their peak
LOW, HIGH = 45.0, 70.0                # MIDI pitches of the two groups of synthetic notes
RATES = {LOW: 12.0, HIGH: 30.0}       # their decay, dB/s
ACCENT, TAU = 6.0, 10.0               # a pluck's onset accent over the sustain cap: 6 dB, decaying e^(-t / 10 frames)


def accent(n: int) -> np.ndarray:
    """The accent [n] dB that the sustain cap is raised by, frames 0..n-1 after the onset peak."""
    return ACCENT * np.exp(-np.arange(n) / TAU)


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


def test_statistic_without_notes_is_none_and_transfer_falls_back(caplog):
    silent = {"f0_hz": torch.full((500,), 200.0), "periodicity": torch.zeros(500),
              "loudness_db": torch.full((500,), -30.0)}
    with caplog.at_level("WARNING", logger="data"):
        assert data.pluck_envelope_statistic([silent]) is None
    assert any("no notes found" in r.getMessage() for r in caplog.records)
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
    k = 4                                               # the hum peaks at the end of its 5-frame swell
    for midi in (LOW + 5, HIGH):                        # hums in the low and in the high band
        f0, loud, per, (a, fade) = hum(midi_hz(midi), seconds=1.2)
        _, out, info = notes.adjust_features(f0, loud, per, cfg, notes.AdjustSettings(octave=0))
        _, sung, _ = notes.adjust_features(f0, loud, per, cfg, notes.AdjustSettings(octave=0, envelope="voice"))
        assert info["envelope"] == "pluck, learned (2 pitch bands)"
        assert info["note_mask"][a] and info["note_mask"][fade - 1] and not info["note_mask"][a - 1]
        # one note: its onset lands on the training notes' median onset level, then the band's curve ...
        want = stat["onset_db_median"] + notes.pluck_curve(fade - a, midi, stat)
        assert want.min() > -features.LOUDNESS_RANGE_DB + 1          # not clipped at the -80 dB floor
        # (the frames before the sung peak at most ACCENT above it)
        np.testing.assert_allclose(out[a:a + k], np.minimum(want[:k], sung[a + k] + ACCENT), atol=1e-4)
        # ... capped from the sung peak on by the sung loudness (steady, then fading: never rising) plus the
        # decaying onset accent
        assert np.all(np.diff(sung[a + k:fade]) <= 1e-6)
        np.testing.assert_allclose(out[a + k:fade], np.minimum(want[k:], sung[a + k:fade] + accent(fade - a - k)),
                                   atol=1e-4)
        assert np.all(out[a + k + 100:] <= sung[a + k + 100:] + 1e-3)  # once the accent decayed: never above the voice
        # an older statistic without the onset level: the note starts at the sung onset, and below the
        # steady hum the curve decays at the band's rate
        old = {key: v for key, v in stat.items() if key != "onset_db_median"}
        _, out, _ = notes.adjust_features(f0, loud, per, {**cfg, "pluck_envelope": old},
                                             notes.AdjustSettings(octave=0))
        want = sung[a + k] + notes.pluck_curve(fade - a, midi, stat)
        want[k:] = np.minimum(want[k:], sung[a + k:fade] + accent(fade - a - k))
        np.testing.assert_allclose(out[a:fade], want, atol=1e-4)
        band_rate = RATES[LOW if midi < stat["band_edges_midi"][0] else HIGH]
        drop = out[a + len(ATTACK_DB)] - out[a + len(ATTACK_DB) + FR]  # 1 s after the attack peak
        assert drop == pytest.approx(band_rate, abs=1.0)
    # the singer stops (a fast fade) while the curve still rings: the note stops with the voice
    f0, loud, per, (a, fade) = hum(midi_hz(LOW), seconds=0.6, level_db=-10.0)
    note = loud > -70
    out = notes.pluck_envelope(loud, note, f0, stat)
    ring = stat["onset_db_median"] + notes.pluck_curve(note.sum(), LOW, stat)  # the curve alone, from the onset
    np.testing.assert_allclose(out[note][k:], np.minimum(ring[k:], loud[note][k:] + accent(note.sum() - k)))
    assert out[fade + 40] == pytest.approx(loud[fade + 40], abs=1e-6) and loud[fade + 40] < ring[fade + 40 - a] - 20
    # an explicit --pluck_decay, or a checkpoint without the statistic: the fixed straight decay
    f0, loud, per, (a, fade) = hum(midi_hz(57.0))
    for c, s in ((cfg, notes.AdjustSettings(octave=0, pluck_decay_db_per_s=20.0)),
                 ({k: v for k, v in cfg.items() if k != "pluck_envelope"}, notes.AdjustSettings(octave=0))):
        _, out, info = notes.adjust_features(f0, loud, per, c, s)
        assert info["envelope"] == "pluck, 20 dB/s"
        np.testing.assert_allclose(out[a:fade] - out[a:fade].max(), -20.0 * np.arange(fade - a) / FR, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Recomputing the statistics of an existing checkpoint: update_stats.py
# ---------------------------------------------------------------------------------------------------

def feature_folder(root: Path, plucked_set) -> Path:
    """The plucked set as preprocess.py feature files (audio: silence of the right length)."""
    for i, f in enumerate(plucked_set):
        F = f["f0_hz"].numel()
        write_features(root / f"take_{i}.pt", np.zeros(F * features.HOP, np.float32), f["f0_hz"].numpy(),
                       loudness_db=f["loudness_db"].numpy(), periodicity=f["periodicity"].numpy())
    return root


def test_update_stats_adds_the_statistic_and_keeps_everything_else(plucked_set, tmp_path, monkeypatch, capsys):
    import update_stats
    from utils import atomic_torch_save

    folder = feature_folder(tmp_path / "feats", plucked_set)
    stats = data.NeuralGuitarDataset(folder, split="train", val_fraction=0.1).stats
    assert stats["pluck_envelope"] is not None
    old_config = {k: v for k, v in stats.items() if k != "pluck_envelope"}   # trained before it existed
    ckpt = {"model": {"w": torch.arange(6.0)}, "config": {"hidden_size": 8, **old_config},
            "optimizer": {"state": {}}, "epoch": 3}
    path = tmp_path / "old.pth"
    atomic_torch_save(ckpt, path)
    code, out, _ = run_cli(update_stats.main, [path, "--data_dir", folder], monkeypatch, capsys)
    assert code == 0 and "updated pluck_envelope" in out
    new = torch.load(path, weights_only=True)
    assert new["config"] == {"hidden_size": 8, **stats}                      # added; the rest as it was
    assert torch.equal(new["model"]["w"], ckpt["model"]["w"]) and new["epoch"] == 3 and "optimizer" in new
    code, out, _ = run_cli(update_stats.main, [path, "--data_dir", folder], monkeypatch, capsys)
    assert code == 0 and "nothing changed" in out                            # idempotent
    # another data set (or split) than the model was trained on: one line, exit 1, file untouched
    ckpt["config"]["loudness_mean"] += 1.0
    atomic_torch_save(ckpt, path)
    before = path.read_bytes()
    code, _, err = run_cli(update_stats.main, [path, "--data_dir", folder], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "loudness_mean" in err and str(path) in err
    assert path.read_bytes() == before
    code, _, err = run_cli(update_stats.main, [tmp_path / "nope.pth", "--data_dir", folder],
                           monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "nope.pth" in err
    code, out, _ = run_cli(update_stats.main, ["--help"], monkeypatch, capsys)
    assert code == 0 and "--data_dir" in out and "(default: 0.1)" in out


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
    fresh = data.NeuralGuitarDataset(folder, split="train", val_fraction=0.1).stats["pluck_envelope"]
    assert fresh.keys() == stat.keys() and len(fresh["curves_db"]) == len(stat["curves_db"])
    for key in stat:                        # CREPE's float32 results differ in the last digits across CPUs
        rows = zip(fresh[key], stat[key]) if key == "curves_db" else [(fresh[key], stat[key])]
        for a, b in rows:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3, err_msg=key)


# ---- onset level, note start, running-minimum cap, onset accent, held pitch -------------------------------------------

LINEAR = {"attack_frames": 13, "band_edges_midi": [], "curves_db": [[-0.1 * t for t in range(500)]],
          "tail_db_per_s": [-25.0], "notes": [100], "onset_db_median": -5.0}   # -25 dB/s from the onset


def test_notes_start_at_the_training_onset_median_and_never_swell_back():
    """Two sung notes peaking at -10 and -20 dB after a 4-frame rise (median onset -15) with a training
    median onset of -5 dB: both onsets are raised 10 dB, but at most ACCENT above the sung peak; from the
    sung peak on they are capped by the running minimum of the sung loudness (+ the decaying accent)."""
    F = 700
    note = np.zeros(F, bool)
    note[100:300] = note[400:600] = True
    loud = np.full(F, -70.0)
    loud[100:300] = -10.0
    loud[400:600] = -20.0
    loud[100:104] = [-14.0, -13.0, -12.0, -11.0]
    loud[400:404] = [-24.0, -23.0, -22.0, -21.0]
    loud[150:230] = -30.0                  # a long (320 ms) dip inside the first note: the sung loudness comes back ...
    f0 = np.full(F, midi_hz(60.0))
    out = notes.pluck_envelope(loud, note, f0, LINEAR)
    t = np.arange(200)
    acc = np.concatenate([np.full(4, ACCENT), accent(196)])   # the accent: flat before the sung peak (frame 4)
    # onset -10 + 10 dB, then -25 dB/s, capped at the sung -10 dB + the accent: 0 dB would be 10 dB above the
    # voice, the note plays -4 dB (6 above) until the sung peak and decays from there toward -10 dB ...
    first = np.minimum(0.0 - 0.1 * t, -10.0 + acc)
    first[50:] = -30.0 + acc[50:]          # ... in the dip, and not louder afterwards (a string does not swell back)
    np.testing.assert_allclose(out[100:300], first)
    assert first[0] == -4.0 and first[4] == -4.0 and -10.0 < first[49] < -9.9
    second = np.minimum(-10.0 - 0.1 * t, -20.0 + acc)   # -20 + 10 dB, at most -14
    np.testing.assert_allclose(out[400:600], second)
    np.testing.assert_array_equal(out[~note], loud[~note])
    # without a training onset level (an older statistic, or the fixed decay) the onset stays where sung
    old = {k: v for k, v in LINEAR.items() if k != "onset_db_median"}
    np.testing.assert_allclose(notes.pluck_envelope(loud, note, f0, old)[400:600], -20.0 - 0.1 * t)


def test_a_brief_dip_of_the_voice_does_not_end_the_note():
    """A sung note held at -10 dB, 2 s, with one dip to -40 dB: up to 196 ms (a breath, a consonant) the
    guitar note rings on along its curve; from 200 ms on the singer has let go: the note drops to the dip
    and stays there. The note's final fade is still followed (it is not a dip)."""
    slow = {**LINEAR, "curves_db": [[-0.02 * t for t in range(600)]], "tail_db_per_s": [-5.0],
            "onset_db_median": -10.0}                        # -5 dB/s, onsets kept where sung (offset 0)
    F, a, b = 700, 50, 600
    note = np.zeros(F, bool)
    note[a:b] = True
    f0 = np.full(F, midi_hz(60.0))
    t = np.arange(b - a)
    ring = -10.0 - 0.02 * t                                  # the plucked note without any cap
    fade = np.linspace(-10.0, -60.0, 20)
    for dip_frames, ends in ((5, False), (25, False), (49, False), (50, True), (100, True)):
        loud = np.full(F, -75.0)
        loud[a:b] = -10.0
        loud[b - 20:b] = fade
        loud[200:200 + dip_frames] = -40.0
        out = notes.pluck_envelope(loud, note, f0, slow)
        if not ends:
            np.testing.assert_allclose(out[a:b - 20], ring[:-20])        # the dip is not heard at all
            np.testing.assert_allclose(out[b - 20:b], np.minimum(ring[-20:], fade + accent(b - a)[-20:]))
            assert out[b - 1] < -59.0                                      # and the note ends with the voice
        else:
            np.testing.assert_allclose(out[a:200], ring[:150])
            # dropped at the dip, for good (then the final fade)
            np.testing.assert_allclose(out[200:b], np.minimum(ring[150:], np.minimum(-40.0, loud[200:b])), atol=1e-6)
    # the raw running minimum (the previous rule) locked the note at any dip, however short: a 20 ms dip
    loud = np.full(F, -75.0)
    loud[a:b] = -10.0
    loud[200:205] = -40.0
    assert notes.pluck_envelope(loud, note, f0, slow, dip_frames=1)[300] == pytest.approx(-40.0, abs=1e-6)
    assert notes.pluck_envelope(loud, note, f0, slow)[300] == pytest.approx(ring[250])


def test_the_attack_accent_is_bounded_and_decays_smoothly():
    """A file whose notes sit 25 dB below the training onsets (onset offset +25 dB): each onset is lifted
    at most ACCENT above the voice, and falls back to the voice's level over ~100 ms, never in one step."""
    loud_stat = {**LINEAR, "curves_db": [[0.0] * 500], "tail_db_per_s": [0.0], "onset_db_median": 0.0}
    F = 800
    note = np.zeros(F, bool)
    note[100:300] = note[400:700] = True
    loud = np.full(F, -75.0)
    loud[100:300] = -30.0
    loud[400:700] = -20.0
    loud[400:406] = np.linspace(-32.0, -22.0, 6)           # a rise: the sung peak (-20) is at frame 406
    f0 = np.full(F, midi_hz(60.0))
    out = notes.pluck_envelope(loud, note, f0, loud_stat)    # median onset -25: offset +25 dB
    np.testing.assert_allclose(out[100:300], -30.0 + accent(200))          # -24 dB at the onset, not -5
    np.testing.assert_allclose(out[400:406], -14.0)                        # before the sung peak: -20 + 6
    np.testing.assert_allclose(out[406:700], -20.0 + accent(294))
    for a, b in ((100, 300), (406, 700)):                                  # from each sung peak on
        y = out[a:b] - loud[a:b]
        assert y.max() <= ACCENT + 1e-9                                    # never more than 6 dB above the voice
        assert -np.diff(out[a:b]).min() >= -1e-9 and np.diff(out[a:b]).min() > -0.6   # falls < 0.6 dB per frame
        assert y[50:].max() < 0.05                                         # back on the voice within 200 ms
    # accent 0: onsets stay at the voice's peak (the offset cannot lift them at all; a pluck starts at its peak)
    want = loud.copy()
    want[400:406] = -20.0
    np.testing.assert_allclose(notes.pluck_envelope(loud, note, f0, loud_stat, accent_db=0.0)[note], want[note])


def test_a_note_after_a_rest_starts_where_the_sung_loudness_rose():
    F = 400
    sung = np.full(F, -80.0)
    sung[80:100] = np.linspace(-60.0, -22.0, 20)   # a slow sung attack: -60 dB at 80, +2 dB per frame
    sung[100:300] = -20.0
    # periodicity came late: the detected note starts at 100; the loudness was within 20 dB of the onset
    # level (-20) from the first frame above -40, i.e. frame 90 (-40.0 is not above it: 91)
    assert notes.note_start(sung, 100, 300, 0) == 91
    assert notes.note_start(sung, 100, 300, 95) == 95             # never before the previous note's end
    assert notes.note_start(sung, 100, 300, 0, max_frames=5) == 95  # looks back at most max_frames
    note = np.zeros(F, bool)
    note[100:300] = True
    mapped = np.where(note, -20.0, -75.0)                         # what the loudness map made of it
    out = notes.pluck_envelope(mapped, note, np.full(F, midi_hz(60.0)), LINEAR, sung_loudness_db=sung)
    # onset -20 dB sung, +15 dB to the training median (-5), at most ACCENT above the voice (-14): the
    # note runs from frame 91, and from the detected start's onset peak (frame 100) on it is capped at the
    # sung -20 dB + the decaying accent
    np.testing.assert_allclose(out[91:300], np.concatenate([np.full(9, -14.0),
                                                            np.minimum(-5.0 - 0.1 * np.arange(9, 209), -20.0 + accent(200))]))
    np.testing.assert_array_equal(out[:91], mapped[:91])
    # a legato note (it starts where the previous one ends) keeps its start
    note2 = note
    f0 = np.full(F, midi_hz(60.0))
    f0[200:] = midi_hz(62.0)
    assert notes.note_segments(note2, f0) == [(100, 200), (200, 300)]
    out2 = notes.pluck_envelope(mapped, note2, f0, LINEAR, sung_loudness_db=sung)
    np.testing.assert_allclose(out2[200:300], np.minimum(-5.0 - 0.1 * np.arange(100), -20.0 + accent(100)))


def test_each_note_is_held_at_its_median_pitch():
    F = 300
    note = np.zeros(F, bool)
    note[20:120] = note[120:200] = note[230:280] = True
    midi = np.full(F, 57.0)
    midi[20:120] = 60.0 + 0.4 * np.sin(np.arange(100) / 5.0)          # vibrato around C4
    midi[120:200] = np.concatenate([np.linspace(61.6, 62.0, 10), np.full(70, 62.0)])  # a scoop up to D4
    midi[230:280] = 64.3                                                # a sharp E4
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    out = notes.hold_note_pitch(f0, note)
    for a, b in ((20, 120), (120, 200), (230, 280)):
        np.testing.assert_allclose(out[a:b], 440.0 * 2.0 ** ((np.median(midi[a:b]) - 69.0) / 12.0), rtol=1e-12)
    np.testing.assert_array_equal(out[~note], f0[~note])
    # transfer.py holds note pitches by default (after the octave shift); --pitch voice keeps the voice's
    cfg = {"mean_midi": 60.0, "loudness_quantiles": list(np.linspace(-30.0, 0.0, 101)),
           "loudness_mean": -15.0, "loudness_std": 10.0, "pluck_envelope": LINEAR}
    loud = np.where(note, -20.0, -80.0)
    per = np.where(note, 0.9, 0.0)
    held, _, info = notes.adjust_features(f0, loud, per, cfg, notes.AdjustSettings(octave=1))
    as_sung, _, _ = notes.adjust_features(f0, loud, per, cfg, notes.AdjustSettings(octave=1, pitch="voice"))
    np.testing.assert_allclose(as_sung, 2.0 * f0, rtol=1e-6)
    np.testing.assert_allclose(held, 2.0 * out, rtol=1e-6)
    assert info["pitch"] == "note"


def test_statistic_stores_the_median_onset_level():
    """Three noise-free notes peaking at -20, -10 and -4 dB: the median onset level is -10 dB."""
    gap, n = int(0.3 * FR), int(0.6 * FR)
    loud, per = [], []
    for peak in (-20.0, -4.0, -10.0):
        loud += [np.full(gap, -80.0), peak + expected_curve(12.0, n)]
        per += [np.zeros(gap), np.ones(n)]
    loud, per = np.concatenate(loud + [np.full(gap, -80.0)]), np.concatenate(per + [np.zeros(gap)])
    f = {"f0_hz": torch.full((loud.size,), midi_hz(60.0)), "periodicity": torch.from_numpy(per.astype(np.float32)),
         "loudness_db": torch.from_numpy(loud.astype(np.float32))}
    stat = data.pluck_envelope_statistic([f])
    assert stat["notes"] == [3]
    assert stat["onset_db_median"] == pytest.approx(-10.0, abs=1e-5)


def test_a_legato_note_is_preceded_by_a_release_of_the_note_before():
    """Two legato notes (the second starts where the first ends): the first note's last RELEASE_FRAMES
    frames fall linearly, by RELEASE_DB at the frame before the new pluck; nothing else changes. A note
    after a rest gets no release (there is nothing to stop)."""
    F, r = 400, 3                                       # the defaults: 3 frames (12 ms), 20 dB
    note = np.zeros(F, bool)
    note[100:300] = True
    loud = np.where(note, -20.0, -75.0)
    f0 = np.full(F, midi_hz(60.0))
    f0[200:] = midi_hz(62.0)
    plain = notes.pluck_envelope(loud, note, f0, LINEAR, release_frames=0)
    out = notes.pluck_envelope(loud, note, f0, LINEAR)
    drop = plain - out
    np.testing.assert_allclose(drop[200 - r:200], [20.0 / 3, 40.0 / 3, 20.0])
    drop[200 - r:200] = 0.0
    np.testing.assert_array_equal(drop, 0.0)
    assert out[199] < out[200] - 20.0                   # the pluck starts from the released string
    short = [(100, 102), (102, 300)]                    # a 2-frame note: only its own 2 frames fall
    drop = (notes.pluck_envelope(loud, note, f0, LINEAR, segments=short, release_frames=0)
            - notes.pluck_envelope(loud, note, f0, LINEAR, segments=short))
    np.testing.assert_allclose(drop[100:102], [10.0, 20.0])
    drop[100:102] = 0.0
    np.testing.assert_array_equal(drop, 0.0)
    single = np.full(F, f0[0])                          # one note: no release anywhere
    np.testing.assert_array_equal(notes.pluck_envelope(loud, note, single, LINEAR),
                                  notes.pluck_envelope(loud, note, single, LINEAR, release_frames=0))
