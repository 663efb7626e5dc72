"""notes.track_notes on a synthetic sung melody with known notes, and notes.auto_octave.

Oracle: the melody is built here frame by frame (features.FRAME_RATE) from a known note list, so each
note's onset is known exactly; onsets are compared with mir_eval.onset-style matching (30 ms).
"""
from __future__ import annotations

import numpy as np

import features
import notes

FR = features.FRAME_RATE


def sung_melody(vibrato_cents: float = 50.0, vibrato_hz: float = 5.5):
    """(f0_hz [F], periodicity [F], loudness_db [F], onsets_s [5]) of a sung phrase:
    C4 with vibrato (0.2-0.8 s) -> legato step to D4 (0.8-1.3 s) -> legato slide to E4 through D#4
    (1.3-1.8 s, a 60 ms slide) -> E4 again after a 20 dB loudness dip (1.8-2.3 s, a re-attack) -> rest ->
    G4 scooped up from F4 over 100 ms (2.5-3.0 s) -> silence to 3.3 s."""
    t = np.arange(int(3.3 * FR)) / FR
    midi = np.full(t.size, 60.0)
    loud = np.full(t.size, -80.0)
    per = np.zeros(t.size)
    sung = (t >= 0.2) & (t < 2.3) | (t >= 2.5) & (t < 3.0)
    loud[sung], per[sung] = -20.0, 0.9
    midi[(t >= 0.2) & (t < 0.8)] += vibrato_cents / 100.0 * np.sin(2 * np.pi * vibrato_hz * t[(t >= 0.2) & (t < 0.8)])
    midi[(t >= 0.8) & (t < 1.3)] = 62.0
    slide = (t >= 1.3) & (t < 1.36)
    midi[slide] = np.linspace(62.0, 64.0, slide.sum())
    midi[(t >= 1.36) & (t < 2.3)] = 64.0
    dip = np.abs(t - 1.8) < 0.04
    loud[dip] = -20.0 - 20.0 * (1.0 - np.abs(t[dip] - 1.8) / 0.04)      # V-shaped dip, -40 dB at 1.8 s
    scoop = (t >= 2.5) & (t < 2.6)
    midi[scoop] = np.linspace(65.0, 67.0, scoop.sum())
    midi[(t >= 2.6) & (t < 3.0)] = 67.0
    loud[(t >= 0.2) & (t < 0.24)] = np.linspace(-50.0, -20.0, 10)         # a sung attack
    return features.midi_to_hz(midi), per, loud, np.array([0.2, 0.8, 1.3, 1.8, 2.5])


def onsets_of(segments, loud):
    """Each tracked note's onset (s): its start, moved to the loudness rise for a note after a rest (as
    notes.pluck_envelope places the pluck)."""
    out, previous_end = [], 0
    for a, b in segments:
        s = a if a == previous_end else notes.note_start(loud, a, b, previous_end)
        out.append(s / FR)
        previous_end = b
    return np.array(out)


def test_one_onset_per_sung_note_and_none_from_vibrato_or_slides():
    f0, per, loud, truth = sung_melody()
    est = onsets_of(notes.track_notes(f0, per, loud), loud)
    assert est.size == truth.size, est
    np.testing.assert_allclose(est, truth, atol=0.03)


def test_deep_fast_vibrato_does_not_split_a_note():
    for cents, hz in ((100.0, 5.0), (80.0, 6.5)):
        f0, per, loud, truth = sung_melody(cents, hz)
        est = onsets_of(notes.track_notes(f0, per, loud), loud)
        assert est.size == truth.size and np.all(np.abs(est - truth) < 0.03), (cents, hz, est)


def test_legato_step_starts_where_the_periodicity_dip_begins():
    """The pitch track moves 40 ms after the sung change (the new pitch takes over late on a slow
    attack), while the periodicity dips from the change on: the note starts at the dip's start."""
    f0, per, loud, truth = sung_melody()
    t = np.arange(f0.size) / FR
    midi = features.hz_to_midi(f0)
    midi[(t >= 0.8) & (t < 0.84)] = 60.0                                 # pitch still C4 until 0.84 s
    per[(t >= 0.8) & (t < 0.86)] = 0.5                                   # the transition: less periodic
    est = onsets_of(notes.track_notes(features.midi_to_hz(midi), per, loud), loud)
    assert est.size == truth.size and np.all(np.abs(est - truth) < 0.03) and abs(est[1] - 0.8) < 0.012, est
    per[(t >= 0.8) & (t < 0.86)] = 0.9                                   # no dip: the pitch change decides
    est = onsets_of(notes.track_notes(features.midi_to_hz(midi), per, loud), loud)
    assert abs(est[1] - 0.84) < 0.012, est


def test_transition_start_level_is_the_previous_notes_median():
    """The previous note's periodicity level is the median of its frames before the look-back window (0.9),
    not its first frame (0.72, a breathy onset), so a dip to 0.7 from frame 17 is the transition; the
    breathy onset itself is never taken for one."""
    p = np.array([0.72] + [0.9] * 16 + [0.7] * 3 + [0.9] * 10)
    assert notes.transition_start(p, change=20, previous=0) == 17
    assert notes.transition_start(np.where(p == 0.7, 0.9, p), change=20, previous=0) == 20   # no dip


def test_transition_start_walks_back_to_the_look_back_limit():
    """A dip that began before the look-back window is cut at the window's first frame, `change - frames`,
    not one later."""
    p = np.full(60, 0.9)
    p[10:31], p[31:41] = 0.5, 0.4                       # dip from frame 10, deepest at 31..40
    assert notes.transition_start(p, change=40, previous=0, frames=25) == 15


def test_pitch_change_walks_back_to_its_look_back_limit(monkeypatch):
    """A 400 ms glide C4 -> E4: the pitch leaves C4 long before the change is detected, so the note start is
    moved back by exactly BACKTRACK_FRAMES (the limit), no frame less."""
    midi = np.concatenate([np.full(150, 60.0), np.linspace(60.0, 64.0, 100), np.full(150, 64.0)])
    limit, start = notes.BACKTRACK_FRAMES, notes.pitch_changes(midi)
    monkeypatch.setattr(notes, "BACKTRACK_FRAMES", 0)                    # no walk-back: the detected change
    detected = notes.pitch_changes(midi)
    assert len(start) == len(detected) == 1 and detected[0] - start[0] == limit


def test_pluck_envelope_and_held_pitch_follow_the_tracked_notes():
    """Through adjust_features: one held pitch per tracked note, and one pluck (a fresh onset) at each."""
    f0, per, loud, truth = sung_melody()
    cfg = {"mean_midi": 60.0, "loudness_quantiles": list(np.linspace(-40.0, 0.0, 101)),
           "loudness_mean": -15.0, "loudness_std": 10.0}
    f0_out, loud_out, info = notes.adjust_features(f0, loud, per, cfg, notes.AdjustSettings(octave=0))
    segments = info["segments"]
    assert len(segments) == truth.size
    for a, b in segments:
        assert np.ptp(f0_out[a:b]) == 0.0                                 # held at one pitch
    midi_out = [features.hz_to_midi(f0_out[a + 1]) for a, b in segments]
    np.testing.assert_allclose(midi_out, [60.0, 62.0, 64.0, 64.0, 67.0], atol=0.1)
    # a pluck decays: the level right after each note start is above the level 150 ms later
    for a, b in segments:
        assert loud_out[a + 3] > loud_out[min(a + 40, b - 1)] + 1.0


def test_auto_octave_keeps_an_in_range_melody_and_lifts_one_sung_two_octaves_low():
    f0, per, loud, _ = sung_melody()                                      # C4..G4: inside E2..E5
    cfg = {"mean_midi": 40.0, "loudness_quantiles": list(np.linspace(-40.0, 0.0, 101)),
           "loudness_mean": -15.0, "loudness_std": 10.0}
    assert notes.adjust_features(f0, loud, per, cfg)[2]["octave"] == 0
    low = f0 / 4.0                                                        # C2..G2: below E2 except G2
    _, _, info = notes.adjust_features(low, loud, per, cfg)
    assert info["octave"] == 1                                            # C3..G3: all inside
    _, _, info = notes.adjust_features(f0 / 8.0, loud, per, cfg)          # C1..G1: three octaves low
    assert info["octave"] == 2
    assert notes.pitch_range(features.midi_to_hz(np.arange(40.0, 77.0)), np.ones(37, bool)) == \
        [float(np.percentile(np.arange(40.0, 77.0), 5)), float(np.percentile(np.arange(40.0, 77.0), 95))]
