"""Notes in frame features: which frames are sung (or played) notes, where one note ends and the next
begins, the plucked-note loudness envelope, and the auto-adjust that turns a voice's frames into a
guitar's (`adjust_features`: octave, loudness map, pluck envelope, held pitch).

Shared by transfer.py and evaluate.py (the voice's notes, the auto-adjust) and data.py (the training
guitar's notes, from which the plucked-note curve statistic is learned), so the statistic and its use
agree. Pure numpy functions on [F] frame arrays at features.FRAME_RATE (Hz, dB, periodicity 0..1).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

import features
from utils import UserError

SMOOTH_FRAMES = 7             # median filter on periodicity (28 ms)
MAX_GAP_FRAMES = 5            # note gaps up to 20 ms are closed
MIN_NOTE_FRAMES = 12          # notes shorter than 48 ms are dropped
MIN_NOTE_CHANGE_FRAMES = 8    # a pitch change must hold 32 ms to start a new note
ABS_FLOOR_DB = features.SILENCE_DB   # -70 dB: below this a frame is never a note
PLUCK_DECAY_DB_PER_S = 20.0   # fixed decay without a learned curve (chosen on held-out pairs: README)
N_QUANTILES = 101             # loudness quantiles 0..100 %
EDGE_RAMP_FRAMES = 5          # 20 ms ramps between note and non-note loudness (auto-adjust)
PLUCK_ATTACK_FRAMES = 13      # a note's onset level is its maximum over its first 52 ms
ONSET_RISE_DB = 20.0          # a sung note after a rest starts where its loudness rose to within 20 dB of its onset ...
ONSET_RISE_FRAMES = 25        # ... looking back at most 100 ms (the periodicity-based start comes late on a slow attack)
CAP_DIP_FRAMES = 50           # the sustain cap ignores dips of the sung loudness shorter than 200 ms ...
ACCENT_DB = 6.0               # ... and a pluck's onset exceeds the cap by at most 6 dB, ...
ACCENT_TAU_FRAMES = 10        # ... an excess that decays with a 40 ms time constant
RELEASE_FRAMES = 3            # a note that follows another without a rest: the one before falls over 12 ms ...
RELEASE_DB = 20.0             # ... by up to 20 dB before the new pluck


def _runs(mask: np.ndarray):
    """(start, stop) of every run of True in a bool [F] array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[::2], edges[1::2]))


FLOOR_RELATIVE_DB = 40.0  # note frames: at most this far below the 99th-percentile loudness


def default_floor_db(loudness_db: np.ndarray, relative_db: float = FLOOR_RELATIVE_DB) -> float:
    """Loudness floor for notes: `relative_db` below the 99th-percentile loudness, at least -70 dB."""
    return max(ABS_FLOOR_DB, float(np.percentile(loudness_db, 99)) - relative_db)


def detect_notes(periodicity: np.ndarray, loudness_db: np.ndarray, threshold: float = 0.5,
                 floor_db: float | None = None, smooth_frames: int = SMOOTH_FRAMES,
                 max_gap_frames: int = MAX_GAP_FRAMES, min_note_frames: int = MIN_NOTE_FRAMES) -> np.ndarray:
    """Frames that belong to sung/hummed notes.

    Args:
        periodicity: [F] CREPE confidence 0..1. loudness_db: [F] A-weighted loudness, dB.
        threshold: periodicity (after a `smooth_frames` median filter) needed for a note frame.
        floor_db: loudness needed; None = `default_floor_db(loudness_db)`.
        max_gap_frames: gaps of at most this many frames between note frames are filled.
        min_note_frames: runs shorter than this (after filling) are dropped.
    Returns:
        bool [F].
    """
    from scipy.ndimage import median_filter

    per = np.asarray(periodicity, np.float32)
    loud = np.asarray(loudness_db, np.float32)
    if per.size == 0:
        return np.zeros(0, bool)
    if smooth_frames > 1:
        per = median_filter(per, size=smooth_frames, mode="nearest")
    floor = default_floor_db(loud) if floor_db is None else floor_db
    note = (per >= threshold) & (loud >= floor)
    # close short gaps between notes (never extend past the first/last note)
    gaps = _runs(~note)
    for a, b in gaps:
        if a > 0 and b < len(note) and b - a <= max_gap_frames:
            note[a:b] = True
    for a, b in _runs(note):
        if b - a < min_note_frames:
            note[a:b] = False
    return note


def note_segments(note: np.ndarray, f0_hz: np.ndarray, min_frames: int = MIN_NOTE_CHANGE_FRAMES) -> list:
    """Split note runs into single notes: a new note starts where the pitch, rounded to the nearest
    semitone, leaves the current note's and then stays for at least `min_frames` frames (vibrato and slides inside a
    note do not split it). Returns [(start, end)] frame ranges, end exclusive."""
    midi = np.round(features.hz_to_midi(np.maximum(np.asarray(f0_hz, np.float64), 1.0)))
    segments = []
    for a, b in _runs(np.asarray(note, bool)):
        start, current = a, midi[a]
        for i in range(a + 1, b):
            if midi[i] != current and np.all(midi[i:min(i + min_frames, b)] == midi[i]):
                segments.append((start, i))
                start, current = i, midi[i]
        segments.append((start, b))
    return segments


def note_onset(loudness_db: np.ndarray, attack_frames: int = PLUCK_ATTACK_FRAMES) -> tuple[int, float]:
    """A note's onset: (frame, level) of the maximum of its loudness over its first `attack_frames` frames.

    loudness_db: [n] dB, the frames of one note (n >= 1). Returns (index 0..attack_frames-1, dB).
    Used for sung notes (transfer) and for the training set's guitar notes (data.py) alike.
    """
    head = np.asarray(loudness_db, np.float64)[:max(1, int(attack_frames))]
    k = int(np.argmax(head))
    return k, float(head[k])


def mean_midi(f0_hz: np.ndarray, mask: np.ndarray) -> float:
    """Mean MIDI pitch of the frames in `mask` ([F] Hz, bool [F]): the input's (transfer.py) and the
    training set's (data.dataset_statistics, `mean_midi`) pitch, one definition."""
    f0 = np.asarray(f0_hz, np.float64)[np.asarray(mask, bool)]
    return float(np.mean(features.hz_to_midi(f0)))


def loudness_quantiles(loudness_db: np.ndarray, n: int = N_QUANTILES) -> np.ndarray:
    """The 0..100 % quantiles (`n` evenly spaced levels) of loudness values, dB [n]: the input's
    (transfer.py) and the training set's (data.dataset_statistics, `loudness_quantiles`)."""
    return np.quantile(np.asarray(loudness_db, np.float64), np.linspace(0.0, 1.0, n))


def note_midi(f0_hz: np.ndarray) -> float:
    """A note's pitch: the median MIDI number of its frames' f0 ([n] Hz, floored at 1 Hz)."""
    return float(np.median(features.hz_to_midi(np.maximum(np.asarray(f0_hz, np.float64), 1.0))))


def pluck_band(band_edges_midi, midi: float) -> int:
    """Pitch band of a note: the number of band edges (MIDI, ascending) at or below `midi`, 0..len(edges)."""
    return int(np.searchsorted(np.asarray(band_edges_midi, np.float64), midi, side="right"))


def pluck_curve(n_frames: int, midi: float, learned: dict | None = None,
                decay_db_per_s: float = PLUCK_DECAY_DB_PER_S) -> np.ndarray:
    """A plucked note's loudness relative to its onset level, dB [n_frames], frames 0..n-1 after its onset.

    learned: a config's `pluck_envelope` (data.pluck_envelope_statistic): the curve of the pitch band that
    holds `midi` (`curves_db[band]`, frame t since the onset), continued past its last frame by a straight
    line of the band's `tail_db_per_s`. None: a straight decay of `decay_db_per_s` dB/s from 0 dB.
    """
    t = np.arange(int(n_frames), dtype=np.float64)
    if learned is None:
        return -float(decay_db_per_s) * t / features.FRAME_RATE
    band = pluck_band(learned["band_edges_midi"], midi)
    curve = np.asarray(learned["curves_db"][band], np.float64)
    tail = float(learned["tail_db_per_s"][band]) / features.FRAME_RATE
    last = curve.size - 1
    return np.where(t <= last, curve[np.minimum(t, last).astype(np.int64)], curve[last] + tail * (t - last))


def note_start(loudness_db: np.ndarray, start: int, stop: int, earliest: int,
               rise_db: float = ONSET_RISE_DB, max_frames: int = ONSET_RISE_FRAMES,
               attack_frames: int = PLUCK_ATTACK_FRAMES) -> int:
    """Where a note that follows a rest really starts: the earliest frame, at most `max_frames` before
    `start` and not before `earliest`, from which on the loudness stays within `rise_db` of the note's onset
    level (`note_onset` of frames start..stop). loudness_db: [F] dB, the sung loudness (unmapped).

    Why: a note is detected where CREPE's periodicity passes the threshold, which on a slow sung attack is
    up to 60 ms after the loudness has risen; a plucked note's attack belongs where the sound begins.
    """
    x = np.asarray(loudness_db, np.float64)
    level = note_onset(x[start:stop], attack_frames)[1]
    s = int(start)
    lo = max(int(earliest), s - int(max_frames))
    while s - 1 >= lo and x[s - 1] > level - rise_db:
        s -= 1
    return s


def close_dips(loudness_db: np.ndarray, frames: int = CAP_DIP_FRAMES) -> np.ndarray:
    """Fill the dips of a note's loudness ([n] dB) that are shorter than `frames` frames (a grey closing:
    the running maximum over `frames` frames, then the running minimum). The note's end counts as a fall,
    not a dip: its final fade is kept. [n] dB -> [n] dB (float64), >= the input."""
    from scipy.ndimage import grey_closing

    v = np.asarray(loudness_db, np.float64)
    q = min(int(frames), v.size)
    if q <= 1:
        return v.copy()
    padded = np.concatenate([v, np.full(q, v.min() - 100.0)])   # silence after the note: a fade is no dip
    return np.maximum(grey_closing(padded, size=q, mode="nearest")[:v.size], v)


def pluck_envelope(loudness_db: np.ndarray, note: np.ndarray, f0_hz: np.ndarray, learned: dict | None = None,
                   decay_db_per_s: float = PLUCK_DECAY_DB_PER_S, attack_frames: int = PLUCK_ATTACK_FRAMES,
                   sung_loudness_db: np.ndarray | None = None, dip_frames: int = CAP_DIP_FRAMES,
                   accent_db: float = ACCENT_DB, accent_tau_frames: float = ACCENT_TAU_FRAMES,
                   segments: list | None = None, release_frames: int = RELEASE_FRAMES,
                   release_db: float = RELEASE_DB) -> np.ndarray:
    """Replace each sung note's loudness by a plucked string's. [F] dB -> [F] dB (float64).

    Per note (`segments` [(a, b)], e.g. `track_notes`; None: `note_segments`, frames a..b): onset (k, level) = `note_onset` of `loudness_db`; a note after a
    rest starts at `note_start` of `sung_loudness_db` (the unmapped voice; None: at a). The note's onset
    level is moved by one offset per file, so that the median onset level of its notes equals the training
    notes' (`learned["onset_db_median"]`; no offset without it), and from its start the note follows
    that level + `pluck_curve` (the learned curve of its pitch band, or a straight `decay_db_per_s` decay
    when `learned` is None). From frame a + k on it is capped by the running minimum of `loudness_db`
    since a + k (the sung loudness, mapped but not offset) after `close_dips` (dips shorter than
    `dip_frames` filled), so the guitar note ends or fades when the singer does, never swells back, and a
    momentary dip does not end it; the cap is raised by an attack accent of `accent_db` that decays as
    exp(-t / `accent_tau_frames`) from a + k, and the frames before a + k are capped at the cap's first
    value + `accent_db`: the onset offset can lift an onset at most `accent_db` above the sung level, and
    the note falls from there to the cap within ~100 ms instead of in one frame. A note that starts where
    the one before ends (legato) gets a release first: the last `release_frames` frames of the note before
    (at most its length) fall linearly by up to `release_db`.
    `learned` brings its own `attack_frames` (the statistic's onset rule).
    Frames outside notes (except those before a note's start) are returned unchanged. f0_hz: [F] Hz.

    Why: a hummed note swells and sustains, a plucked guitar note starts at its loudest and decays;
    rendering the voice's own envelope sounds like a bowed guitar. The loudness map matches the voice's
    note frames to the training notes' frames, which are mostly decaying sustain, so a sung onset lands
    below a guitar onset: the onset offset puts it where training onsets are, the cap keeps the sustain
    where the map put it. A sung note's end is where the played note was released; the running minimum
    keeps vibrato and swells inside the sung note out of the guitar (measured variants: docs/experiments.md,
    "Pluck envelope ablation"). The raw running minimum locked a note at a brief dip of the voice (a breath,
    a consonant), and the raw offset put a loud note's onset far above the voice for 50 ms and dropped it
    in one frame: the dip filling and the bounded, decaying accent remove both. A guitarist's pick stops the
    string before it plucks the next note; without that release a legato change was a few dB step in the
    synth's sustain, which a listener (and an onset detector) hardly hears as a new note.
    """
    x = np.asarray(loudness_db, np.float64)
    f0 = np.asarray(f0_hz, np.float64)
    sung = None if sung_loudness_db is None else np.asarray(sung_loudness_db, np.float64)
    out = x.copy()
    if learned is not None:
        attack_frames = int(learned["attack_frames"])
    if segments is None:
        segments = note_segments(note, f0)
    onsets = [note_onset(x[a:b], attack_frames) for a, b in segments]
    offset = 0.0
    if learned is not None and learned.get("onset_db_median") is not None and onsets:
        offset = float(learned["onset_db_median"]) - float(np.median([level for _, level in onsets]))
    previous_start = previous_end = 0
    for (a, b), (k, level) in zip(segments, onsets):
        s = a
        if sung is not None and a != previous_end:
            s = note_start(sung, a, b, previous_end, attack_frames=attack_frames)
        y = level + offset + pluck_curve(b - s, note_midi(f0[a:b]), learned, decay_db_per_s)
        kk = a + k - s
        cap = np.minimum.accumulate(close_dips(x[a + k:b], dip_frames))
        y[:kk] = np.minimum(y[:kk], cap[0] + accent_db)
        accent = accent_db * np.exp(-np.arange(cap.size) / max(float(accent_tau_frames), 1e-9))
        y[kk:] = np.minimum(y[kk:], cap + accent)
        out[s:b] = y
        if s == previous_end and s > 0:                              # legato: the pick stops the string first
            _legato_release(out, s, min(int(release_frames), s - previous_start), release_db)
        previous_start, previous_end = s, b
    return out


def _legato_release(loudness_db: np.ndarray, start: int, frames: int, release_db: float) -> None:
    """In place: the `frames` frames of `loudness_db` ([F] dB) before frame `start` fall linearly by up to
    `release_db` dB (the caller bounds `frames` by the previous note's length); nothing when frames <= 0."""
    if frames > 0:
        loudness_db[start - frames:start] -= np.linspace(release_db / frames, release_db, frames)


def hold_note_pitch(f0_hz: np.ndarray, note: np.ndarray, segments: list | None = None) -> np.ndarray:
    """Each note (`segments` [(a, b)], e.g. `track_notes`; None: `note_segments`) held at its own pitch (`note_midi`, the median of its frames in MIDI), as a
    fretted string holds it; frames outside notes unchanged. [F] Hz -> [F] Hz (float64).

    Why: a sung note wavers (vibrato, scoops, drift) where a fretted guitar note is steady; the segments
    are the same notes the pluck envelope plays, so every pluck gets one pitch.
    """
    f0 = np.asarray(f0_hz, np.float64)
    out = f0.copy()
    for a, b in note_segments(note, f0) if segments is None else segments:
        out[a:b] = features.midi_to_hz(note_midi(f0[a:b]))
    return out


# ------------------------------------------------------------------------------------------------
# Note tracking: one sung note = one pluck
# ------------------------------------------------------------------------------------------------

TRACK_GAP_FRAMES = 15          # note_tracks: gaps in the note frames up to 60 ms are closed (a sung note's
                               # periodicity dips on breathy or choral voices), a real rest is longer
PITCH_SMOOTH_FRAMES = 11       # median filter on the sung pitch (44 ms): CREPE's octave slips and glitches
VIBRATO_FRAMES = 50            # moving average over 200 ms: one cycle of a 5 Hz vibrato averages out, and a
                               # pitch step becomes a 200 ms ramp centred on the step
CHANGE_SEMITONES = 0.6         # a new note where the averaged pitch 100 ms after minus 100 ms before moves this much
MIN_SEGMENT_FRAMES = 15        # a pitch segment shorter than 60 ms is a slide or a scoop, not a note
PITCH_BACKTRACK_SEMITONES = 0.3  # a legato note starts where the pitch first left the previous note by this
BACKTRACK_FRAMES = 20          # ... looking back at most 80 ms from the change
TRANSITION_DROP = 0.05         # a legato change starts where the periodicity first fell this far below the
                               # previous note's median periodicity ...
TRANSITION_FRAMES = 25         # ... looking back at most 100 ms from the pitch change ...
TRANSITION_AHEAD_FRAMES = 5    # ... from the periodicity minimum within 20 ms after the change or before it
DIP_DB = 12.0                  # a re-attack on the same pitch: the loudness falls this much and rises again
DIP_SMOOTH_FRAMES = 5          # loudness smoothing for the dip search (20 ms)
DIP_SPAN_FRAMES = 40           # ... the fall and the rise within 160 ms on either side of the dip


def pitch_change_strength(midi: np.ndarray, window: int = VIBRATO_FRAMES) -> np.ndarray:
    """How far the sung pitch moves across each frame, semitones [n] (signed): the `window`-frame moving
    average of the median-smoothed pitch, `window // 2` frames after minus `window // 2` frames before.
    midi: [n] fractional MIDI of one note run. A step of D semitones gives a peak of D at the step; a
    vibrato whose period is `window` frames gives ~0; no absolute tuning is assumed (a detuned singer or
    choir whose notes sit between semitones is tracked as well as one at A440)."""
    from scipy.ndimage import median_filter, uniform_filter1d

    m = median_filter(np.asarray(midi, np.float64), size=PITCH_SMOOTH_FRAMES, mode="nearest")
    avg = uniform_filter1d(m, size=window, mode="nearest")
    h = window // 2
    padded = np.concatenate([np.full(h, avg[0]), avg, np.full(h, avg[-1])])
    return padded[2 * h:] - padded[:-2 * h] if h > 0 else np.zeros_like(avg)


def _merge_short(bounds: list, min_frames: int) -> list:
    """Drop boundaries that make a segment shorter than `min_frames` (segments [b_i, b_i+1)); the first
    and last boundaries (the run's ends) stay. Short pieces join the preceding segment."""
    out = [bounds[0]]
    for b in bounds[1:-1]:
        if b - out[-1] >= min_frames and bounds[-1] - b >= min_frames:
            out.append(b)
    return out + [bounds[-1]]


def pitch_changes(midi: np.ndarray, change: float = CHANGE_SEMITONES,
                  min_frames: int = MIN_SEGMENT_FRAMES) -> list:
    """Frames (indices into one note run's [n] MIDI pitch) where a new sung pitch starts: peaks of
    |`pitch_change_strength`| of at least `change` semitones; pieces shorter than `min_frames`, or with
    fewer than `min_frames` frames near their median pitch (a slide, a scoop), merged into the next;
    each change moved back to where the (median-smoothed) pitch first left the previous piece's median
    by more than PITCH_BACKTRACK_SEMITONES and more than that piece's own vibrato reached (at most
    BACKTRACK_FRAMES back): the audible start of a legato step."""
    from scipy.ndimage import median_filter
    from scipy.signal import find_peaks

    m = median_filter(np.asarray(midi, np.float64), size=PITCH_SMOOTH_FRAMES, mode="nearest")
    strength = np.abs(pitch_change_strength(midi))
    peaks = find_peaks(np.concatenate([[0.0], strength, [0.0]]), height=change, distance=min_frames)[0] - 1
    bounds = _merge_short([0] + [int(p) for p in peaks] + [len(m)], min_frames)
    bounds = [b for i, b in enumerate(bounds)
              if i in (0, len(bounds) - 1) or _stable_frames(m[bounds[i - 1]:b]) >= min_frames]
    starts = []
    for prev, b in zip(bounds[:-2], bounds[1:-1]):
        ref = np.median(m[prev:b])
        body = m[prev:max(prev + 1, b - BACKTRACK_FRAMES)]
        threshold = max(PITCH_BACKTRACK_SEMITONES, float(np.max(np.abs(body - ref))))   # its vibrato's reach
        s = b
        while s - 1 >= max(prev + 1, b - BACKTRACK_FRAMES) and abs(m[s - 1] - ref) > threshold:
            s -= 1
        starts.append(s)
    return starts


def transition_start(periodicity: np.ndarray, change: int, previous: int, drop: float = TRANSITION_DROP,
                     frames: int = TRANSITION_FRAMES) -> int:
    """Where a legato note change found at frame `change` (`pitch_changes`) began, by the periodicity
    ([n] 0..1, one note run; the previous note starts at frame `previous`): from the periodicity minimum
    within `frames` frames before the change to TRANSITION_AHEAD_FRAMES after it, back to the first frame
    that is more than `drop` below the previous note's level (at most `frames` frames before the change,
    never within the previous note's first MIN_SEGMENT_FRAMES: its own onset); `change` itself where the
    periodicity does not dip. The level is the median periodicity of the previous note's frames before
    that window (for a short note only its first MIN_SEGMENT_FRAMES, so a breathy onset longer than half
    of them lowers it). Returns a frame index <= change.

    Why: while a singer moves from one pitch to the next, the old and the new pitch overlap (or the voice
    glides) and the sound is less periodic; that starts when the new note starts, while the pitch track
    (a median over both) moves only once the new pitch dominates, 30-60 ms later on a slow attack.
    """
    p = np.asarray(periodicity, np.float64)
    lo = min(change, max(int(previous) + MIN_SEGMENT_FRAMES, change - int(frames)))
    level = float(np.median(p[previous:max(lo, previous + 1)]))
    s = lo + int(np.argmin(p[lo:change + TRANSITION_AHEAD_FRAMES]))
    if p[s] >= level - drop:          # no dip: the change starts where the pitch moved
        return change
    s = min(s, change)
    while s - 1 >= lo and p[s - 1] < level - drop:
        s -= 1
    return s


def _stable_frames(midi: np.ndarray) -> int:
    """Frames of a pitch piece ([n] MIDI) within PITCH_BACKTRACK_SEMITONES of its median: a slide or a
    scoop has few, a held note (vibrato averaged by the caller's median filter or not) has many."""
    m = np.asarray(midi, np.float64)
    return int(np.sum(np.abs(m - np.median(m)) <= PITCH_BACKTRACK_SEMITONES)) if m.size else 0


def reattacks(loudness_db: np.ndarray, dip_db: float = DIP_DB, span: int = DIP_SPAN_FRAMES) -> list:
    """Frames (indices into one note's [n] loudness, dB) where the loudness has a dip of at least `dip_db`
    below its maximum within `span` frames before AND within `span` frames after (a re-attack, a breath or
    a consonant): the dip's minimum, one per dip, at least `span` frames from the note's ends' peaks."""
    from scipy.ndimage import uniform_filter1d

    x = uniform_filter1d(np.asarray(loudness_db, np.float64), DIP_SMOOTH_FRAMES, mode="nearest")
    n = x.size
    out = []
    for i in range(1, n - 1):
        if not (x[i] <= x[i - 1] and x[i] < x[i + 1]):
            continue
        before = x[max(0, i - span):i].max()
        after = x[i + 1:min(n, i + 1 + span)].max()
        if before - x[i] >= dip_db and after - x[i] >= dip_db and (not out or i - out[-1] >= MIN_SEGMENT_FRAMES):
            out.append(i)
    return out


def track_notes(f0_hz: np.ndarray, periodicity: np.ndarray, loudness_db: np.ndarray,
                note: np.ndarray | None = None, gap_frames: int = TRACK_GAP_FRAMES) -> list:
    """The sung notes: [(start, end)] frame ranges (end exclusive), one per sung note = one pluck.

    Note runs are `detect_notes` frames with gaps up to `gap_frames` closed (or `note`, bool [F]); a run
    is split where the sung pitch moves to a new level (`pitch_changes`: vibrato averages out, scoops and
    slides shorter than MIN_SEGMENT_FRAMES do not split it; the new note starts where the voice's
    periodicity shows the change began, `transition_start`) and where the
    loudness dips and rises again on the same pitch (`reattacks`: a re-attack, a breath, a consonant).
    f0_hz, periodicity, loudness_db: [F] (Hz, 0..1, dB).
    """
    f0 = np.asarray(f0_hz, np.float64)
    per = np.asarray(periodicity, np.float64)
    loud = np.asarray(loudness_db, np.float64)
    if note is None:
        note = detect_notes(per, loud, max_gap_frames=gap_frames)
    midi = features.hz_to_midi(np.maximum(f0, 1.0))
    segments = []
    for a, b in _runs(note):
        changes = pitch_changes(midi[a:b])
        cuts = {a + transition_start(per[a:b], c, prev) for prev, c in zip([0] + changes[:-1], changes)}
        cuts |= {a + c for c in reattacks(loud[a:b])}
        bounds = _merge_short(sorted({a, b} | cuts), MIN_SEGMENT_FRAMES)
        segments += list(zip(bounds[:-1], bounds[1:]))
    return segments


# ------------------------------------------------------------------------------------------------
# Auto-adjust: a voice's frames -> a guitar's (DDSP timbre-transfer style), from a checkpoint's statistics
# ------------------------------------------------------------------------------------------------

DEFAULT_PITCH_RANGE_MIDI = (40.0, 76.0)   # E2..E5: a standard-tuned guitar's open low E to the 12th fret
                                          # of the high E, for checkpoints without `pitch_range_midi`
PITCH_RANGE_PERCENTILES = (5.0, 95.0)     # the training set's pitch range: these percentiles of voiced f0
MAX_OCTAVES = 3                           # auto octave tries shifts -3..+3
RANGE_TOLERANCE_SEMITONES = 0.5           # a note within half a semitone of the range counts as inside


def pitch_range(f0_hz: np.ndarray, mask: np.ndarray, percentiles=PITCH_RANGE_PERCENTILES) -> list:
    """[low, high] MIDI: the `percentiles` of the pitch of the frames in `mask` ([F] Hz, bool [F]). The
    training set's range (config `pitch_range_midi`, from its voiced frames) that auto octave aims at."""
    midi = features.hz_to_midi(np.maximum(np.asarray(f0_hz, np.float64)[np.asarray(mask, bool)], 1.0))
    return [float(v) for v in np.percentile(midi, percentiles)]


def config_pitch_range(config: dict) -> tuple[float, float]:
    """The instrument's range for auto octave: config `pitch_range_midi` [low, high] (MIDI), or
    DEFAULT_PITCH_RANGE_MIDI for a checkpoint made before the statistic existed."""
    r = config.get("pitch_range_midi")
    return (float(r[0]), float(r[1])) if r is not None and len(r) == 2 else DEFAULT_PITCH_RANGE_MIDI


def auto_octave(note_midis, low: float, high: float, max_octaves: int = MAX_OCTAVES) -> int:
    """One octave shift for a whole file: the k in -max_octaves..max_octaves for which the most notes
    (`note_midis`: [n] MIDI, one per sung note) land inside [low, high] widened by RANGE_TOLERANCE_SEMITONES
    on each side (a lowest note sung a little flat is still that note); on a tie the smallest |k| (so a
    melody already in range is never moved), then the k that puts the median note nearest the range's
    centre. 0 without notes."""
    m = np.asarray(note_midis, np.float64)
    if m.size == 0:
        return 0
    centre, half = 0.5 * (low + high), 0.5 * (high - low) + RANGE_TOLERANCE_SEMITONES

    def key(k):
        inside = int(np.sum(np.abs(m + 12 * k - centre) <= half))
        return (-inside, abs(k), abs(float(np.median(m)) + 12 * k - centre))

    return min(range(-max_octaves, max_octaves + 1), key=key)


def quantile_map(x: np.ndarray, input_quantiles, target_quantiles, max_slope: float | None = None) -> np.ndarray:
    """Map values through the piecewise-linear curve input_quantiles[i] -> target_quantiles[i].

    The i-th input quantile lands exactly on the i-th target quantile; between them the map is linear,
    outside the input range it is held at the end values. Tied input quantiles (a loudness shared by
    many frames) map to the mean of their targets.
    max_slope: if given, each segment's slope (dB out per dB in) is capped at this value and the curve is
    rebuilt from its middle knot (which keeps its target), so an input with a narrow loudness range
    (a steady hum) is not stretched over the whole training range; segments within the cap are unchanged.
    Returns float64 array shaped like `x`.
    """
    xq = np.asarray(input_quantiles, np.float64)
    yq = np.asarray(target_quantiles, np.float64)
    if xq.shape != yq.shape or xq.ndim != 1 or xq.size == 0:
        raise ValueError(f"quantile arrays must be equal-length 1-D, got {xq.shape} and {yq.shape}")
    order = np.argsort(xq, kind="stable")
    xq, yq = xq[order], yq[order]
    ux, inv = np.unique(xq, return_inverse=True)
    uy = np.bincount(inv, weights=yq) / np.bincount(inv)
    if ux.size == 1:
        return np.full(np.shape(x), uy[0])
    if max_slope is not None:
        dy = np.minimum(np.diff(uy), max_slope * np.diff(ux))
        y = np.concatenate([[0.0], np.cumsum(dy)])
        mid = ux.size // 2
        uy = y - y[mid] + uy[mid]
    return np.interp(np.asarray(x, np.float64), ux, uy)


def note_weight(note: np.ndarray, ramp_frames: int = EDGE_RAMP_FRAMES) -> np.ndarray:
    """1 on note frames, falling linearly to 0 over `ramp_frames` frames outside them; float64 [F]."""
    from scipy.ndimage import distance_transform_edt

    note = np.asarray(note, bool)
    if note.all() or not note.any():
        return note.astype(np.float64)
    dist = distance_transform_edt(~note)
    return np.clip(1.0 - dist / (ramp_frames + 1.0), 0.0, 1.0)


@dataclass
class AdjustSettings:
    """Options of the auto-adjust (`adjust_features`); the defaults are transfer.py's and evaluate.py's
    flag defaults (`add_adjust_arguments`)."""
    auto: bool = True                           # False: no note gating, auto octave or loudness matching
    octave: int | None = None                   # whole octaves; None: auto_octave into the training set's pitch range
    semitones: float = 0.0                      # extra pitch shift
    loudness_db: float = 0.0                    # offset added to every frame at the end, dB
    note_threshold: float = 0.5                 # CREPE periodicity needed for a note frame
    floor_db: float | None = None               # loudness needed for a note frame; None: default_floor_db
    quiet_db: float = 30.0                      # non-note frames: this far below the softest training notes
    max_slope: float | None = 2.0               # loudness map's slope cap (dB per dB); None: pure quantiles
    envelope: str = "pluck"                     # pluck: pluck_envelope; voice: the voice's own envelope
    pitch: str = "note"                         # note: each note held at its median pitch; voice: as sung
    pluck_decay_db_per_s: float | None = None   # None: the config's learned curve, else a straight decay


def adjust_features(f0_hz: np.ndarray, loudness_db: np.ndarray, periodicity: np.ndarray, config: dict,
                    settings: AdjustSettings = AdjustSettings()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Auto-adjust input features toward the training set described by `config`.

    Note frames (`detect_notes`, gaps up to TRACK_GAP_FRAMES closed) and the sung notes in them
    (`track_notes`: one pluck each); pitch shifted by whole octaves (`auto_octave` of the notes into the
    config's `pitch_range_midi`, or settings.octave)
    plus settings.semitones; loudness mapped (`map_loudness`); then each note plucked (`pluck_envelope`)
    and held at its pitch (`hold_note_pitch`) unless settings say "voice". settings.auto False: only the
    explicit octave, semitones and loudness offset.

    Args:
        f0_hz, loudness_db, periodicity: [F] input features (Hz, dB, 0..1).
        config: model config with mean_midi, loudness_quantiles (101 dB values or None),
            loudness_mean/std (used when quantiles are missing), pluck_envelope (or None: fixed decay).
    Returns:
        (f0_hz [F] float32 Hz, loudness_db [F] float32 dB, info dict: note_mask bool [F],
        octave int, semitones float (total shift), input_mean_midi, note_fraction, method str,
        envelope str (e.g. "pluck, learned (6 pitch bands)", "pluck, 20 dB/s", "voice", "none")).
    Raises:
        UserError (without a file name; the caller adds it) when no note frames are found.
    """
    f0 = np.asarray(f0_hz, np.float64)
    loud = np.asarray(loudness_db, np.float64)
    note = detect_notes(periodicity, loud, settings.note_threshold, settings.floor_db, max_gap_frames=TRACK_GAP_FRAMES)
    if not note.any():
        raise UserError(f"no pitched notes found (CREPE periodicity never reaches {settings.note_threshold} "
                        f"for {MIN_NOTE_FRAMES * 4} ms above the loudness floor); give a sung or hummed "
                        f"melody, or lower --note_threshold / --floor_db")
    segments = track_notes(f0, periodicity, loud, note)
    in_midi = mean_midi(f0, note)
    if settings.octave is not None:
        octave = int(settings.octave)
    else:
        octave = (auto_octave([note_midi(f0[a:b]) for a, b in segments], *config_pitch_range(config))
                  if settings.auto else 0)
    shift = 12.0 * octave + float(settings.semitones)
    f0_out = f0 * 2.0 ** (shift / 12.0)
    info = {"note_mask": note, "segments": segments, "octave": octave, "semitones": shift, "input_mean_midi": in_midi,
            "note_fraction": float(note.mean()), "method": "none",
            "envelope": settings.envelope if settings.auto else "none"}
    if not settings.auto:
        loud_out = loud + settings.loudness_db
    else:
        loud_out, info["method"] = map_loudness(loud, note, config, settings)
        if settings.envelope == "pluck":
            fixed = settings.pluck_decay_db_per_s
            learned = config.get("pluck_envelope") if fixed is None else None
            decay = PLUCK_DECAY_DB_PER_S if fixed is None else float(fixed)
            loud_out = pluck_envelope(loud_out, note, f0_out, learned, decay, sung_loudness_db=loud,
                                      segments=segments)
            info["envelope"] = (f"pluck, learned ({len(learned['curves_db'])} pitch bands)" if learned
                                else f"pluck, {decay:g} dB/s")
        if settings.pitch == "note":
            f0_out = hold_note_pitch(f0_out, note, segments)
        info["pitch"] = settings.pitch
        info["input_note_median_db"] = float(np.median(loud[note]))
        info["output_note_median_db"] = float(np.median(loud_out[note]))
    loud_out = np.maximum(loud_out, -features.LOUDNESS_RANGE_DB)
    return f0_out.astype(np.float32), loud_out.astype(np.float32), info


def map_loudness(loud: np.ndarray, note: np.ndarray, config: dict,
                 settings: AdjustSettings = AdjustSettings()) -> tuple[np.ndarray, str]:
    """The auto-adjust's loudness map: [F] dB, bool [F] -> ([F] dB float64, "quantile" or "mean_std").

    Note frames: the input's note-frame quantiles mapped onto the config's `loudness_quantiles`
    (`quantile_map`, slope capped at settings.max_slope); a config without quantiles: mean/std matching.
    Non-note frames (breath, room noise, silence) follow the input's level, offset like the softest
    notes, then pushed settings.quiet_db below the training set's softest note loudness, so they render
    as silence; `note_weight` ramps between the two. Plus settings.loudness_db on every frame.
    """
    q_in = loudness_quantiles(loud[note])
    q_train = config.get("loudness_quantiles")
    if q_train is not None and len(q_train) >= 2:
        q_train = np.asarray(q_train, np.float64)
        if q_train.size != q_in.size:  # resample the training quantiles onto our levels
            q_train = np.interp(np.linspace(0, 1, q_in.size), np.linspace(0, 1, q_train.size), q_train)
        mapped, method = quantile_map(loud, q_in, q_train, settings.max_slope), "quantile"
    else:
        std_in = max(float(loud[note].std()), 1e-3)
        mapped = (loud - loud[note].mean()) / std_in * float(config["loudness_std"]) + float(config["loudness_mean"])
        q_train, method = loudness_quantiles(mapped[note]), "mean_std"
    quiet = np.minimum(loud + (q_train[0] - q_in[0]), q_train[0]) - settings.quiet_db
    weight = note_weight(note)
    return weight * mapped + (1.0 - weight) * quiet + settings.loudness_db, method


def add_adjust_arguments(p: argparse.ArgumentParser) -> None:
    """The auto-adjust flags (transfer.py, evaluate.py --pairs); their defaults are `AdjustSettings`'."""
    d = AdjustSettings()
    p.add_argument("--octave", default="auto" if d.octave is None else str(d.octave),
                   help="octave shift: 'auto' (the one shift for the whole file that puts the most sung notes inside "
                        "the training set's pitch range, config 'pitch_range_midi', default E2..E5; the "
                        "smallest such shift, so a melody already in range is not moved) or an integer")
    p.add_argument("--semitones", type=float, default=d.semitones, help="extra pitch shift in semitones")
    p.add_argument("--loudness_db", type=float, default=d.loudness_db,
                   help="loudness offset (dB) applied after the adjust")
    p.add_argument("--note_threshold", type=float, default=d.note_threshold,
                   help="CREPE periodicity needed for a note frame")
    p.add_argument("--floor_db", type=float, default=d.floor_db,
                   help="loudness (dB) needed for a note frame; default 40 dB below the file's 99th percentile")
    p.add_argument("--max_expand", type=float, default=d.max_slope or 0.0,
                   help="loudness map may stretch input loudness differences at most this much (dB per dB); "
                        "0 = pure quantile matching")
    p.add_argument("--quiet_db", type=float, default=d.quiet_db,
                   help="non-note frames are rendered this far below the training set's softest notes")
    p.add_argument("--envelope", choices=("pluck", "voice"), default=d.envelope,
                   help="pluck: each sung note becomes a plucked note (its onset level, then the training "
                        "set's plucked-note decay curve for its pitch, ending when the sung note ends); "
                        "voice: keep the voice's own swell and sustain (sounds bowed)")
    p.add_argument("--pitch", choices=("note", "voice"), default=d.pitch,
                   help="note: each sung note held at its own (median) pitch, as a fretted string holds it; "
                        "voice: keep the voice's vibrato, scoops and drift")
    p.add_argument("--pluck_decay", type=float, default=d.pluck_decay_db_per_s,
                   help="a straight decay of this many dB/s instead of the checkpoint's learned curve; "
                        f"default: the learned curve (config 'pluck_envelope'), or {PLUCK_DECAY_DB_PER_S:g} "
                        "dB/s for a checkpoint without one")
    p.add_argument("--no_adjust", action="store_true", default=not d.auto,
                   help="no automatic adjust (note gating, auto octave, loudness matching); --octave N, "
                        "--semitones and --loudness_db still apply")


def parse_octave(value: str) -> int | None:
    """--octave: 'auto' -> None, a whole number -> int; anything else a UserError (one line)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--octave {value}: use 'auto' or a whole number such as -1") from None


def adjust_settings(args) -> AdjustSettings:
    """AdjustSettings from the flags of `add_adjust_arguments` (UserError for a bad --octave)."""
    return AdjustSettings(auto=not args.no_adjust, octave=parse_octave(args.octave), semitones=args.semitones,
                          loudness_db=args.loudness_db, note_threshold=args.note_threshold,
                          floor_db=args.floor_db, quiet_db=args.quiet_db,
                          max_slope=args.max_expand if args.max_expand > 0 else None,
                          envelope=args.envelope, pluck_decay_db_per_s=args.pluck_decay, pitch=args.pitch)
