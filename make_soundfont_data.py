"""Render a training set of random monophonic melodies from a SoundFont with the `fluidsynth` command.

Each phrase is a random melody (stepwise motion and leaps in a random key and scale, varied note
lengths, velocities, rests, legato and repeated notes) that is written as a Standard MIDI File and
rendered offline by fluidsynth. Per phrase the output folder gets

    <out>/<name>.mid    the MIDI file that was rendered (format 0, channel 1, 1 tick = 1 ms)
    <out>/<name>.wav    mono 16-bit WAV at --sample_rate, exactly `duration_s` long
    <out>/<name>.json   ground truth: notes [{onset_s, offset_s, pitch (MIDI), velocity}], duration_s, ...

`--also_program 53` renders the SAME phrases with another General MIDI program into
`<out>/program53/` (same names), e.g. Voice Oohs -> Clean Guitar pairs for transfer evaluation.

Phrases are reproducible: phrase i depends only on (--seed, i) and the note-range / length flags, so
a larger --minutes only adds phrases. A phrase whose three files already exist with the same notes
and render settings is skipped, so an interrupted run continues where it stopped.

Programs are 0-based General MIDI numbers (bank 0): 27 = Electric Guitar (clean) ("Clean Guitar" in
FluidR3_GM), 53 = Voice Oohs ("Ohh Voices" in FluidR3_GM). `--list_programs` prints the SoundFont's
own preset names.

Design notes: fluidsynth's reverb and chorus are off by default. The model has its own learnable
reverb, and chorus adds detuned copies that blur the pitch ground truth; turn them on with
--reverb / --chorus. fluidsynth renders 32-bit float (no clipping inside the renderer); the stereo
output is averaged to mono and cut or zero-padded to the MIDI file's length, which already contains
--tail_seconds of release after the last note-off, so note tails are not cut.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from utils import HelpFormatter, UserError, atomic_path, atomic_write_wav, check_output_path, run_main

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
INSTALL_HINT = "install it with: sudo apt-get install fluidsynth fluid-soundfont-gm"
DATA_VERSION = 1
TICKS_PER_SECOND = 1000  # MIDI: 1000 ticks per quarter note at 60 bpm -> 1 tick = 1 ms

# Sane default note ranges (MIDI numbers, inclusive) by General MIDI program (0-based).
_PROGRAM_RANGES = [
    (range(24, 32), (40, 76), "guitars: E2..E5"),
    (range(32, 40), (28, 60), "basses: E1..C4"),
    (range(52, 55), (48, 72), "voices/choir: C3..C5"),
]
_OTHER_RANGE = ((48, 72), "other programs: C3..C5")

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "natural_minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
    "chromatic": tuple(range(12)),
}
_SCALE_WEIGHTS = np.array([3, 3, 1, 1, 2, 3, 2, 1], dtype=float)

# Note slot lengths in beats and their probabilities.
_BEATS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0])
_BEAT_P = np.array([0.08, 0.24, 0.06, 0.26, 0.08, 0.16, 0.06, 0.06])
_BEAT_P = _BEAT_P / _BEAT_P.sum()


def default_note_range(program: int) -> tuple[int, int]:
    """(low, high) MIDI notes used when --low_note / --high_note are not given."""
    for programs, note_range, _ in _PROGRAM_RANGES:
        if program in programs:
            return note_range
    return _OTHER_RANGE[0]


# ----------------------------------------------------------------------------------------- notes

@dataclass(frozen=True)
class Note:
    """One note. Times are integer milliseconds from the start of the file (= MIDI ticks)."""

    onset_ms: int
    offset_ms: int
    pitch: int  # MIDI note number
    velocity: int  # 1..127

    def to_json(self) -> dict:
        return {"onset_s": self.onset_ms / 1000.0, "offset_s": self.offset_ms / 1000.0,
                "pitch": self.pitch, "velocity": self.velocity}


def _scale_pitches(rng: np.random.Generator, low_note: int, high_note: int) -> list[int]:
    """The MIDI notes in [low_note, high_note] of a random scale in a random key (every semitone when the
    range is so narrow that it misses the scale)."""
    scale_name = list(SCALES)[rng.choice(len(SCALES), p=_SCALE_WEIGHTS / _SCALE_WEIGHTS.sum())]
    key = int(rng.integers(12))
    pitches = [p for p in range(low_note, high_note + 1) if (p - key) % 12 in SCALES[scale_name]]
    return pitches or list(range(low_note, high_note + 1))


def _next_index(rng: np.random.Generator, idx: int, n: int) -> int:
    """Melodic motion over a list of `n` pitches: repeat, step, skip or leap up or down from `idx`,
    bouncing off the ends of the list."""
    r = rng.random()
    if r < 0.12:
        step = 0  # repeated note
    elif r < 0.60:
        step = 1  # scale step
    elif r < 0.80:
        step = 2
    else:
        step = int(rng.integers(3, 8))  # leap of a 4th..octave or so
    step *= 1 if rng.random() < 0.5 else -1
    idx += step
    if idx < 0 or idx >= n:  # bounce off the range edges
        idx -= 2 * step
    return min(max(idx, 0), n - 1)


def _sounding_ms(rng: np.random.Generator, slot: int) -> int:
    """How long a note sounds within its `slot` (ms): legato (the whole slot), detached or staccato."""
    a = rng.random()
    if a < 0.45:
        sounding = slot  # legato: ends exactly where the next note (or rest) begins
    elif a < 0.80:
        sounding = int(slot * rng.uniform(0.6, 0.95))  # detached
    else:
        sounding = int(slot * rng.uniform(0.25, 0.6))  # staccato
    return max(40, min(sounding, slot))


def make_phrase(seed: int, index: int, low_note: int, high_note: int,
                min_seconds: float, max_seconds: float, tail_seconds: float) -> tuple[list[Note], int]:
    """Random monophonic melody number `index` for `seed`.

    Returns (notes sorted by onset, duration_ms of the file including the release tail). Notes never
    overlap (offset <= next onset); "legato" notes end exactly where the next one starts. Pitches
    stay in [low_note, high_note]. Depends only on the arguments (numpy Generator seeded by
    [seed, index]), so the same arguments always give the same phrase.
    """
    rng = np.random.default_rng([seed, index])
    target_ms = int(round(1000 * rng.uniform(min_seconds, max_seconds)))
    tail_ms = int(round(1000 * tail_seconds))
    end_limit = target_ms - tail_ms  # last note-off must come before this
    pitches = _scale_pitches(rng, low_note, high_note)
    n = len(pitches)
    idx = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4 + 1)))  # start in the middle half
    beat_ms = 60000.0 / rng.uniform(70.0, 150.0)
    base_velocity = float(rng.integers(55, 111))
    t = int(rng.integers(100, 500))  # lead-in silence
    notes: list[Note] = []
    while True:
        slot = max(60, int(round(rng.choice(_BEATS, p=_BEAT_P) * beat_ms * rng.uniform(0.97, 1.03))))
        if t + slot > end_limit:
            break
        if notes:
            idx = _next_index(rng, idx, n)
        sounding = _sounding_ms(rng, slot)
        base_velocity = float(np.clip(base_velocity + rng.normal(0.0, 4.0), 40, 120))
        velocity = int(np.clip(round(base_velocity + rng.normal(0.0, 10.0)), 20, 127))
        notes.append(Note(t, t + sounding, pitches[idx], velocity))
        t += slot
        if rng.random() < 0.15:  # rest
            t += int(round(rng.choice([0.5, 1.0, 2.0]) * beat_ms))
    if not notes:  # phrase too short for any slot: one note filling what there is
        t0 = min(100, max(0, end_limit // 4))
        notes.append(Note(t0, max(t0 + 40, end_limit), pitches[idx], int(base_velocity)))
    return notes, notes[-1].offset_ms + tail_ms


# ------------------------------------------------------------------------------------------ MIDI

def _vlq(value: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_bytes(notes: list[Note], program: int, end_ms: int, channel: int = 0) -> bytes:
    """Standard MIDI File (format 0, one track) for monophonic `notes` on `channel` with `program`.

    Tempo 60 bpm and 1000 ticks per quarter note, so one tick is one millisecond. At equal times a
    note-off is written before a note-on (repeated / legato notes never overlap). The End of Track
    event sits at `end_ms`, after the release tail.
    """
    events: list[tuple[int, int, bytes]] = []  # (tick, order, bytes); order 0 = note-off first
    for note in notes:
        events.append((note.onset_ms, 1, bytes([0x90 | channel, note.pitch, note.velocity])))
        events.append((note.offset_ms, 0, bytes([0x80 | channel, note.pitch, 64])))
    events.sort(key=lambda e: (e[0], e[1]))
    track = bytearray()
    track += _vlq(0) + b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big")  # 1 s per quarter note
    track += _vlq(0) + bytes([0xC0 | channel, program])
    now = 0
    for tick, _, data in events:
        track += _vlq(tick - now) + data
        now = tick
    track += _vlq(max(0, end_ms - now)) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_SECOND)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


# ------------------------------------------------------------------------------------ SoundFont

def read_sf2_presets(path: str | os.PathLike) -> dict[tuple[int, int], str]:
    """Preset names of a SoundFont 2 file: {(bank, program): name}, read from its `phdr` chunk."""
    presets: dict[tuple[int, int], str] = {}
    try:
        with open(path, "rb") as f:
            riff, size, form = struct.unpack("<4sI4s", f.read(12))
            if riff != b"RIFF" or form != b"sfbk":
                raise ValueError("not a RIFF sfbk file")
            pos, end = 12, 8 + size
            while pos + 8 <= end:
                f.seek(pos)
                cid, csize = struct.unpack("<4sI", f.read(8))
                if cid == b"LIST" and f.read(4) == b"pdta":
                    sub, sub_end = pos + 12, pos + 8 + csize
                    while sub + 8 <= sub_end:
                        f.seek(sub)
                        sid, ssize = struct.unpack("<4sI", f.read(8))
                        if sid == b"phdr":
                            data = f.read(ssize)
                            for off in range(0, len(data) - 38, 38):  # the last record is "EOP"
                                name, program, bank = struct.unpack_from("<20sHH", data, off)
                                presets[(bank, program)] = name.split(b"\0")[0].decode("latin-1").strip()
                            return presets
                        sub += 8 + ssize + (ssize & 1)
                pos += 8 + csize + (csize & 1)
    except (OSError, ValueError, struct.error) as e:
        raise UserError(f"--soundfont {path}: cannot read it as a SoundFont 2 file ({e}); "
                        f"pass a .sf2 file or {INSTALL_HINT}") from None
    raise UserError(f"--soundfont {path}: no preset headers found; pass a valid .sf2 file")


def find_fluidsynth() -> str:
    """Path of the fluidsynth executable, or UserError with the install command."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise UserError(f"the `fluidsynth` command was not found on PATH; {INSTALL_HINT}")
    return exe


def render_midi(exe: str, soundfont: str, midi_path: Path, wav_path: Path, sample_rate: int,
                gain: float, reverb: bool, chorus: bool) -> None:
    """Run fluidsynth's offline renderer: MIDI file -> stereo float32 WAV at `wav_path`."""
    cmd = [exe, "-n", "-i", "-q", "-g", str(gain), "-r", str(sample_rate),
           "-R", "1" if reverb else "0", "-C", "1" if chorus else "0",
           "-T", "wav", "-O", "float", "-F", str(wav_path), soundfont, str(midi_path)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0 or not wav_path.exists() or wav_path.stat().st_size <= 44:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"fluidsynth failed on {midi_path} (exit {proc.returncode}): {tail[0]}")


# ------------------------------------------------------------------------------------------ main

def _parse_programs(values: list[str] | None) -> list[int]:
    out: list[int] = []
    for value in values or []:
        for part in value.split(","):
            if part.strip():
                try:
                    out.append(int(part))
                except ValueError:
                    raise UserError(f"--also_program {value!r}: expected program numbers 0..127, "
                                    "e.g. --also_program 53 or --also_program 52,53") from None
    return list(dict.fromkeys(out))


def build_parser() -> argparse.ArgumentParser:
    ranges = "; ".join(f"{desc} ({lo}..{hi})" for _, (lo, hi), desc in _PROGRAM_RANGES)
    ranges += f"; {_OTHER_RANGE[1]} ({_OTHER_RANGE[0][0]}..{_OTHER_RANGE[0][1]})"
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\nExample:\n  ./venv/bin/python make_soundfont_data.py "
        "--program 27 --also_program 53 --minutes 3 --seed 1 --output_dir data/soundfont/eval",
        formatter_class=HelpFormatter)
    p.add_argument("--soundfont", default=DEFAULT_SOUNDFONT, help="SoundFont (.sf2) to render with")
    p.add_argument("--program", type=int, default=27,
                   help="General MIDI program, 0-based, bank 0 (27 = Electric Guitar clean, 53 = Voice Oohs)")
    p.add_argument("--also_program", action="append", metavar="N[,N...]",
                   help="also render the same phrases with these programs into <output_dir>/program<N>/ "
                        "(repeatable or comma list)")
    p.add_argument("--output_dir", default="data/soundfont/guitar_train", help="output folder")
    p.add_argument("--minutes", type=float, default=20.0, help="total audio to render (per program)")
    p.add_argument("--phrase_seconds", type=float, nargs=2, default=[8.0, 20.0], metavar=("MIN", "MAX"),
                   help="each phrase (one file) aims at a random length in this range, release tail included; "
                        "it ends --tail_seconds after its last note, so it can come out a few seconds shorter")
    p.add_argument("--low_note", type=int, default=None,
                   help=f"lowest MIDI note; default by --program: {ranges}")
    p.add_argument("--high_note", type=int, default=None, help="highest MIDI note; default by --program")
    p.add_argument("--seed", type=int, default=0, help="phrase i is a function of (seed, i)")
    p.add_argument("--sample_rate", type=int, default=44100, help="fluidsynth sample rate (-r), Hz")
    p.add_argument("--gain", type=float, default=1.0,
                   help="fluidsynth master gain (-g, 0..10); 1.0 keeps FluidR3 guitar at velocity 127 below 0 dBFS")
    p.add_argument("--tail_seconds", type=float, default=1.0,
                   help="silence after the last note-off so the release is not cut")
    p.add_argument("--reverb", action="store_true", help="turn fluidsynth's reverb on")
    p.add_argument("--chorus", action="store_true", help="turn fluidsynth's chorus on")
    p.add_argument("--prefix", default="phrase", help="file names are <prefix>_s<seed>_<index>")
    p.add_argument("--list_programs", action="store_true",
                   help="print the SoundFont's bank-0 preset names and exit")
    return p


def _check_args(args, programs: list[int]) -> None:
    for program in programs:
        if not 0 <= program <= 127:
            raise UserError(f"program {program}: General MIDI programs are 0..127 (0-based)")
    if not 0 <= args.low_note <= args.high_note <= 127:
        raise UserError(f"--low_note {args.low_note} --high_note {args.high_note}: need 0 <= low <= high <= 127")
    lo, hi = args.phrase_seconds
    if not 0 < lo <= hi:
        raise UserError(f"--phrase_seconds {lo} {hi}: need 0 < MIN <= MAX")
    if args.tail_seconds < 0 or args.tail_seconds >= lo:
        raise UserError(f"--tail_seconds {args.tail_seconds}: need 0 <= tail < --phrase_seconds MIN ({lo})")
    if args.minutes <= 0:
        raise UserError(f"--minutes {args.minutes}: must be > 0")
    if not 8000 <= args.sample_rate <= 96000:
        raise UserError(f"--sample_rate {args.sample_rate}: fluidsynth supports 8000..96000 Hz")
    if not 0 < args.gain < 10:
        raise UserError(f"--gain {args.gain}: fluidsynth needs 0 < gain < 10")


_MEASURED = ("rms", "peak", "scale")  # JSON keys measured from the audio, not part of the request


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Phrase(NamedTuple):
    """One planned phrase: its index (for the seed), file name stem, notes and file length (ms)."""

    index: int
    name: str
    notes: list[Note]
    duration_ms: int


def plan_phrases(args) -> list[Phrase]:
    """Phrases 0, 1, ... until their total length reaches --minutes."""
    plan: list[Phrase] = []
    total_ms, target_ms = 0, args.minutes * 60_000
    while total_ms < target_ms:
        i = len(plan)
        notes, duration_ms = make_phrase(args.seed, i, args.low_note, args.high_note,
                                         args.phrase_seconds[0], args.phrase_seconds[1], args.tail_seconds)
        plan.append(Phrase(i, f"{args.prefix}_s{args.seed}_{i:04d}", notes, duration_ms))
        total_ms += duration_ms
    return plan


def load_presets(soundfont: str) -> dict[tuple[int, int], str]:
    """{(bank, program): name} of the SoundFont file, or UserError (not found, not a SoundFont)."""
    if not Path(soundfont).is_file():
        raise UserError(f"--soundfont {soundfont}: file not found; {INSTALL_HINT} (or pass --soundfont PATH.sf2)")
    return read_sf2_presets(soundfont)


def resolve_programs(args, presets: dict) -> list[int]:
    """[--program, *--also_program] after filling in the note range defaults and checking every flag."""
    programs = [args.program] + _parse_programs(args.also_program)
    lo_default, hi_default = default_note_range(args.program)
    args.low_note = lo_default if args.low_note is None else args.low_note
    args.high_note = hi_default if args.high_note is None else args.high_note
    _check_args(args, programs)
    for program in programs:
        if (0, program) not in presets:
            raise UserError(f"program {program}: {args.soundfont} has no bank-0 preset with that number; "
                            "see --list_programs")
    return programs


def phrase_meta(args, presets: dict, program: int, phrase: Phrase) -> dict:
    """The requested settings and ground truth of one phrase file (its JSON without the measured keys)."""
    return {
        "version": DATA_VERSION, "tool": "make_soundfont_data.py",
        "soundfont": os.path.basename(args.soundfont), "program": program,
        "program_name": presets[(0, program)], "sample_rate": args.sample_rate, "gain": args.gain,
        "reverb": args.reverb, "chorus": args.chorus, "seed": args.seed, "phrase_index": phrase.index,
        "duration_s": phrase.duration_ms / 1000.0, "notes": [n.to_json() for n in phrase.notes],
    }


def render_mono(exe: str, args, mid_path: Path, duration_ms: int) -> np.ndarray:
    """Render the MIDI file with fluidsynth and return mono float32 [n] at --sample_rate, cut or zero-padded
    to exactly `duration_ms`. fluidsynth's stereo file is a temporary next to `mid_path`, always removed."""
    import soundfile as sf

    fd, raw = tempfile.mkstemp(prefix=f".{mid_path.stem}.", suffix=".render.wav", dir=mid_path.parent)
    os.close(fd)
    try:
        render_midi(exe, args.soundfont, mid_path, Path(raw), args.sample_rate, args.gain, args.reverb, args.chorus)
        audio, sr = sf.read(raw, dtype="float32", always_2d=True)
    finally:
        Path(raw).unlink(missing_ok=True)
    if sr != args.sample_rate:
        raise UserError(f"fluidsynth wrote {sr} Hz instead of {args.sample_rate} Hz for {mid_path}")
    n = int(round(duration_ms * args.sample_rate / 1000))
    mono = audio.mean(axis=1)
    return np.pad(mono[:n], (0, max(0, n - len(mono))))


def level_and_measure(mono: np.ndarray, meta: dict, wav_path: Path, sample_rate: int) -> np.ndarray:
    """Scale `mono` [n] below 0.999 if it clips (recorded as meta["scale"]) and store its peak and RMS
    (linear, full scale 1.0) in `meta`; notes when it clipped or is still sounding at its end."""
    from tqdm import tqdm

    n = len(mono)
    peak = float(np.max(np.abs(mono))) if n else 0.0
    meta["scale"] = 1.0
    if peak > 0.999:  # keep it unclipped in 16-bit; the JSON's "scale" records the factor
        meta["scale"] = 0.999 / peak
        mono = mono * meta["scale"]
        tqdm.write(f"note: {wav_path} peaked at {peak:.2f}; scaled to 0.999 (lower --gain to avoid)")
    meta["peak"] = float(np.max(np.abs(mono))) if n else 0.0
    meta["rms"] = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2))) if n else 0.0
    last = mono[-max(1, sample_rate // 20):]  # the final 50 ms should be (near) silent
    if n and np.sqrt(np.mean(last.astype(np.float64) ** 2)) > 1e-3 * max(meta["peak"], 1e-9):
        tqdm.write(f"note: {wav_path} is still sounding at its end; raise --tail_seconds")
    return mono


def make_phrase_files(exe: str, args, presets: dict, program: int, folder: Path, phrase: Phrase) -> tuple[dict, bool]:
    """Write `<name>.mid/.wav/.json` of one phrase in `folder` (atomically) unless they already exist with
    the same notes and settings. Returns (its JSON dict, True when rendered now / False when skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = phrase_meta(args, presets, program, phrase)
    wav_path, mid_path, json_path = (folder / f"{phrase.name}{ext}" for ext in (".wav", ".mid", ".json"))
    old = _load_json(json_path)
    if old is not None and wav_path.exists() and mid_path.exists() and \
            {k: v for k, v in old.items() if k not in _MEASURED} == meta:
        return old, False
    with atomic_path(mid_path) as tmp:
        tmp.write_bytes(midi_bytes(phrase.notes, program, phrase.duration_ms))
    mono = render_mono(exe, args, mid_path, phrase.duration_ms)
    mono = level_and_measure(mono, meta, wav_path, args.sample_rate)
    atomic_write_wav(wav_path, mono, args.sample_rate)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
    return meta, True


def report(targets: list[tuple[int, Path]], presets: dict, stats: dict, counts: dict, args,
           plan: list[Phrase]) -> None:
    """Per program: files, minutes, RMS range and peak; files rendered / skipped; then a note on older
    phrases of this seed beyond --minutes."""
    for program, folder in targets:
        rows = np.array(stats[program]).reshape(-1, 3)
        rms_db = 20 * np.log10(np.maximum(rows[:, 1], 1e-9))
        print(f"program {program} ({presets[(0, program)]}): {len(rows)} files, "
              f"{rows[:, 0].sum() / 60:.2f} min, RMS {rms_db.min():.1f}..{rms_db.max():.1f} dBFS, "
              f"max peak {rows[:, 2].max():.3f} -> {folder}")
    print(f"rendered {counts[True]}, skipped (already done) {counts[False]}")
    out_root = Path(args.output_dir)
    planned = {phrase.name for phrase in plan}
    stale = [p for p in out_root.glob(f"{args.prefix}_s{args.seed}_*.json") if p.stem not in planned]
    if stale:
        print(f"note: {out_root} also holds {len(stale)} older phrase(s) of this seed beyond --minutes "
              f"(e.g. {stale[0].name}); delete them if they should not be used")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    if not args.list_programs:
        check_output_path(args.output_dir, "--output_dir", is_dir=True)
    exe = None if args.list_programs else find_fluidsynth()
    presets = load_presets(args.soundfont)
    if args.list_programs:
        for (bank, program), name in sorted(presets.items()):
            if bank == 0:
                print(f"{program:3d}  {name}")
        return 0
    programs = resolve_programs(args, presets)
    plan = plan_phrases(args)
    out_root = Path(args.output_dir)
    targets = [(program, out_root if k == 0 else out_root / f"program{program}") for k, program in enumerate(programs)]
    counts = {True: 0, False: 0}  # rendered now / skipped (already done)
    stats = {program: [] for program in programs}  # (duration_s, rms, peak)
    jobs = [(program, folder, phrase) for phrase in plan for program, folder in targets]
    for program, folder, phrase in tqdm(jobs, desc="phrases", unit="file", dynamic_ncols=True):
        meta, rendered = make_phrase_files(exe, args, presets, program, folder, phrase)
        stats[program].append((meta["duration_s"], meta.get("rms", 0.0), meta.get("peak", 0.0)))
        counts[rendered] += 1
    report(targets, presets, stats, counts, args, plan)
    return 0


if __name__ == "__main__":
    run_main(main)
