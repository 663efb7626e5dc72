"""Notes in frame features: which frames are sung (or played) notes, where one note ends and the next
begins, and the plucked-note loudness envelope.

Shared by transfer.py (the voice's notes, its pluck envelope) and data.py (the training guitar's notes,
from which the plucked-note curve statistic is learned), so the statistic and its use agree. Pure
numpy functions on [F] frame arrays at features.FRAME_RATE (Hz, dB, periodicity 0..1).
"""
from __future__ import annotations

import numpy as np

import features

SMOOTH_FRAMES = 7             # median filter on periodicity (28 ms)
MAX_GAP_FRAMES = 5            # note gaps up to 20 ms are closed
MIN_NOTE_FRAMES = 12          # notes shorter than 48 ms are dropped
MIN_NOTE_CHANGE_FRAMES = 8    # a pitch change must hold 32 ms to start a new note
ABS_FLOOR_DB = features.SILENCE_DB   # -70 dB: below this a frame is never a note
PLUCK_DECAY_DB_PER_S = 20.0   # fixed decay without a learned curve; on held-out FluidR3 pairs 20 beat 10, 30, 45 dB/s
PLUCK_ATTACK_FRAMES = 13      # a note's onset level is its maximum over its first 52 ms


def _runs(mask: np.ndarray):
    """(start, stop) of every run of True in a bool [F] array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[::2], edges[1::2]))


def default_floor_db(loudness_db: np.ndarray, relative_db: float = 40.0) -> float:
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


def pluck_envelope(loudness_db: np.ndarray, note: np.ndarray, f0_hz: np.ndarray, learned: dict | None = None,
                   decay_db_per_s: float = PLUCK_DECAY_DB_PER_S,
                   attack_frames: int = PLUCK_ATTACK_FRAMES) -> np.ndarray:
    """Replace each sung note's loudness by a plucked string's. [F] dB -> [F] dB (float64).

    Per note (`note_segments`): onset (k, level) = `note_onset` of the sung loudness; the note becomes
    level + `pluck_curve` (the learned curve of its pitch band, or a straight `decay_db_per_s` decay when
    `learned` is None), and from frame k on it is capped at the sung loudness, so the guitar note ends or
    fades when the singer does. `learned` brings its own `attack_frames` (the statistic's onset rule).
    Non-note frames are returned unchanged. f0_hz: [F] Hz (picks each note's pitch band).

    Why: a hummed note swells and sustains, a plucked guitar note starts at its loudest and decays;
    rendering the voice's own envelope sounds like a bowed guitar. The cap: a sung note's end (the
    singer stops or fades) is where the played note was released; without it the curve of a held note
    rings on through the voice's release (measured variants: README, Design notes, "Pluck envelope").
    """
    x = np.asarray(loudness_db, np.float64)
    f0 = np.asarray(f0_hz, np.float64)
    out = x.copy()
    if learned is not None:
        attack_frames = int(learned["attack_frames"])
    for a, b in note_segments(note, f0):
        k, level = note_onset(x[a:b], attack_frames)
        y = level + pluck_curve(b - a, note_midi(f0[a:b]), learned, decay_db_per_s)
        y[k:] = np.minimum(y[k:], x[a + k:b])
        out[a:b] = y
    return out
