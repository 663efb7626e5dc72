"""make_soundfont_data.py: random phrases, MIDI rendering through the real `fluidsynth`, error paths.

Oracles: fluidsynth itself (renders our MIDI file; its shell lists the SoundFont's presets) and a
YIN pitch estimate of the rendered audio (checked here on analytic tones) against the MIDI ground truth. Rendering tests skip
with a reason when fluidsynth or the FluidR3 GM SoundFont is not installed (CI installs both).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import make_soundfont_data as msd
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
SF2 = msd.DEFAULT_SOUNDFONT
HAVE_FLUIDSYNTH = shutil.which("fluidsynth") is not None
HAVE_SF2 = Path(SF2).is_file()
needs_render = pytest.mark.skipif(
    not (HAVE_FLUIDSYNTH and HAVE_SF2),
    reason=f"needs the fluidsynth command and {SF2} (apt-get install fluidsynth fluid-soundfont-gm)")

# Seed 8 with a 2.5 s phrase gives three legato notes a semitone apart (55, 54, 55): a pitch error
# of half a semitone would already be caught.
RENDER_ARGS = ["--seed", "8", "--minutes", "0.03", "--phrase_seconds", "2.5", "2.5",
               "--tail_seconds", "0.5", "--sample_rate", "22050"]


def test_phrases_are_monophonic_in_range_and_varied():
    low, high = 40, 76
    counts = dict(legato=0, repeat=0, step=0, leap=0, rest=0)
    velocities, durations = set(), set()
    for i in range(30):
        notes, duration_ms = msd.make_phrase(0, i, low, high, 8.0, 20.0, 1.0)
        assert notes and duration_ms <= 20_000
        assert duration_ms == notes[-1].offset_ms + 1000  # release tail after the last note-off
        for n in notes:
            assert low <= n.pitch <= high and 1 <= n.velocity <= 127 and n.onset_ms < n.offset_ms
            velocities.add(n.velocity)
            durations.add(n.offset_ms - n.onset_ms)
        for a, b in zip(notes, notes[1:]):
            assert a.offset_ms <= b.onset_ms, "notes overlap: not monophonic"
            interval = abs(b.pitch - a.pitch)
            counts["legato"] += a.offset_ms == b.onset_ms
            counts["rest"] += b.onset_ms - a.offset_ms >= 300
            counts["repeat"] += interval == 0
            counts["step"] += 1 <= interval <= 2
            counts["leap"] += interval >= 5
    assert all(v >= 10 for v in counts.values()), counts
    assert len(velocities) >= 30 and len(durations) >= 100


def test_same_seed_same_phrase_other_seed_differs():
    a = [msd.make_phrase(0, i, 40, 76, 8.0, 20.0, 1.0) for i in range(3)]
    b = [msd.make_phrase(0, i, 40, 76, 8.0, 20.0, 1.0) for i in range(3)]
    c = [msd.make_phrase(1, i, 40, 76, 8.0, 20.0, 1.0) for i in range(3)]
    assert a == b
    assert all(x != y for x, y in zip(a, c))
    assert msd.midi_bytes(a[0][0], 27, a[0][1]) == msd.midi_bytes(b[0][0], 27, b[0][1])


def _run_script(args, env):
    return subprocess.run([sys.executable, str(ROOT / "make_soundfont_data.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_missing_fluidsynth_exits_1_with_one_line(tmp_path):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    out = tmp_path / "out"
    proc = _run_script(["--minutes", "0.05", "--output_dir", str(out)], {**os.environ, "PATH": str(empty)})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "fluidsynth" in lines[0] and "apt-get install fluidsynth fluid-soundfont-gm" in lines[0]
    assert not out.exists()


def test_missing_soundfont_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        msd.main(["--soundfont", str(tmp_path / "nope.sf2"), "--output_dir", str(tmp_path / "out")])
    assert "apt-get install fluidsynth fluid-soundfont-gm" in str(e.value)
    if HAVE_FLUIDSYNTH:
        assert "nope.sf2" in str(e.value)
    assert not (tmp_path / "out").exists()


@needs_render
def test_preset_names_match_fluidsynths_listing():
    """Our sf2 reader and 0-based program numbers agree with fluidsynth's own `inst 1` listing."""
    proc = subprocess.run(["fluidsynth", "-n", "-q", "-a", "file", "-o", "audio.file.name=/dev/null", SF2],
                          input="inst 1\nquit\n", capture_output=True, text=True, timeout=60)
    listed = {}
    for line in proc.stdout.splitlines():
        head, _, name = line.strip().partition(" ")
        if len(head) == 7 and head[3] == "-" and head.replace("-", "").isdigit():
            listed[(int(head[:3]), int(head[4:]))] = name.strip()
    assert len(listed) > 100, proc.stdout[-500:]
    presets = msd.read_sf2_presets(SF2)
    assert {k: v for k, v in presets.items() if k in listed} == listed
    assert presets[(0, 27)] == "Clean Guitar"  # GM 28 "Electric Guitar (clean)", 0-based 27
    assert presets[(0, 53)] == "Ohh Voices"  # GM 54 "Voice Oohs", 0-based 53


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    if not (HAVE_FLUIDSYNTH and HAVE_SF2):
        pytest.skip(f"needs the fluidsynth command and {SF2} (apt-get install fluidsynth fluid-soundfont-gm)")
    out = tmp_path_factory.mktemp("soundfont")
    assert msd.main([*RENDER_ARGS, "--also_program", "53", "--output_dir", str(out)]) == 0
    return out


def yin_f0(x: np.ndarray, sr: int, fmin: float = 50.0, fmax: float = 2000.0, threshold: float = 0.1) -> float:
    """Pitch (Hz) of a steady segment `x` [T] by YIN (de Cheveigne & Kawahara 2002): the first lag
    where the cumulative-mean-normalised difference function dips below `threshold`, refined by a
    parabola. Time-domain, so a weak fundamental (low guitar notes) does not cause octave errors.
    numpy only: librosa's pyin/yin would spend 20-40 s compiling numba code in a fresh venv."""
    x = np.asarray(x, np.float64) - np.mean(x)
    tau_min, tau_max = int(sr / fmax), int(np.ceil(sr / fmin)) + 1
    w = len(x) - tau_max
    assert w >= tau_max, "segment too short for fmin"
    r = np.correlate(x, x[:w], mode="valid")  # r[t] = sum_j x[j] x[j+t], t = 0..tau_max
    e = np.concatenate([[0.0], np.cumsum(x ** 2)])
    d = e[w] + (e[w:w + tau_max + 1] - e[:tau_max + 1]) - 2 * r  # d[t] = sum_j (x[j] - x[j+t])^2
    cmnd = np.ones_like(d)
    cmnd[1:] = d[1:] * np.arange(1, len(d)) / np.maximum(np.cumsum(d[1:]), 1e-12)
    below = np.nonzero(cmnd[tau_min:tau_max] < threshold)[0]
    t = tau_min + (int(below[0]) if len(below) else int(np.argmin(cmnd[tau_min:tau_max])))
    while t + 1 < tau_max and cmnd[t + 1] < cmnd[t]:
        t += 1
    a, b, c = cmnd[t - 1:t + 2]
    return sr / (t + 0.5 * (a - c) / (a - 2 * b + c))


@pytest.mark.parametrize("f0", [82.41, 196.0, 659.26])  # guitar E2, G3, E5
def test_yin_oracle_on_missing_fundamental_tones(f0):
    sr = 22050
    t = np.arange(int(0.3 * sr)) / sr
    tone = sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(2, 7))  # harmonics 2..6 only
    assert abs(1200 * np.log2(yin_f0(tone, sr) / f0)) < 5


def _check_pitch_and_timing(wav: Path, meta: dict):
    import soundfile as sf

    audio, sr = sf.read(wav, dtype="float32")
    assert audio.ndim == 1 and sr == meta["sample_rate"] == 22050
    assert len(audio) == round(meta["duration_s"] * sr)
    assert np.sqrt(np.mean(audio ** 2)) > 1e-3, "rendered audio is silent"
    notes = meta["notes"]
    first = int(notes[0]["onset_s"] * sr)
    assert np.max(np.abs(audio[:first])) < 1e-4, "sound before the first note-on"
    assert np.sqrt(np.mean(audio[first:first + sr // 20] ** 2)) > 3e-3, "no sound right after the note-on"
    assert np.max(np.abs(audio[-sr // 20:])) < 1e-3, "release tail cut: still sounding at the end"

    checked = 0
    for note in notes:
        length = note["offset_s"] - note["onset_s"]
        if length < 0.2:
            continue
        # the steady part: after the attack (and a voice's scoop), before the note-off
        segment = audio[int((note["onset_s"] + max(0.06, 0.3 * length)) * sr):int((note["offset_s"] - 0.03) * sr)]
        midi_hz = 440.0 * 2 ** ((note["pitch"] - 69) / 12)
        cents = 1200 * np.log2(yin_f0(segment, sr) / midi_hz)
        assert abs(cents) < 50, f"note {note}: rendered pitch is {cents:+.0f} cents off"
        checked += 1
    assert checked >= 2


@needs_render
def test_render_guitar_pitch_matches_midi(rendered):
    wavs = sorted(rendered.glob("*.wav"))
    assert [w.name for w in wavs] == ["phrase_s8_0000.wav"]
    meta = json.loads(wavs[0].with_suffix(".json").read_text())
    assert meta["program"] == 27 and meta["program_name"] == "Clean Guitar"
    expected, duration_ms = msd.make_phrase(8, 0, 40, 76, 2.5, 2.5, 0.5)
    assert meta["notes"] == [n.to_json() for n in expected]
    assert meta["duration_s"] == duration_ms / 1000
    assert wavs[0].with_suffix(".mid").read_bytes() == msd.midi_bytes(expected, 27, duration_ms)
    _check_pitch_and_timing(wavs[0], meta)


@needs_render
def test_also_program_renders_same_phrase_with_voice(rendered):
    guitar = json.loads((rendered / "phrase_s8_0000.json").read_text())
    voice_wav = rendered / "program53" / "phrase_s8_0000.wav"
    voice = json.loads(voice_wav.with_suffix(".json").read_text())
    assert voice["program"] == 53 and voice["program_name"] == "Ohh Voices"
    assert voice["notes"] == guitar["notes"] and voice["duration_s"] == guitar["duration_s"]
    _check_pitch_and_timing(voice_wav, voice)


@needs_render
def test_rerun_skips_finished_phrases(rendered, capsys):
    before = {p: p.stat().st_mtime_ns for p in rendered.rglob("*.wav")}
    assert msd.main([*RENDER_ARGS, "--also_program", "53", "--output_dir", str(rendered)]) == 0
    assert "rendered 0, skipped (already done) 2" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in rendered.rglob("*.wav")} == before
    assert not [p for p in rendered.rglob("*") if p.name.startswith(".")], "temporary files left behind"


def _no_work(*a, **k):
    raise AssertionError("work started before the output location was checked")


def test_unwritable_output_dir_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """Checked before fluidsynth is even looked for, so this runs without it."""
    from utils import run_main

    monkeypatch.setattr(msd, "find_fluidsynth", _no_work)
    monkeypatch.setattr(msd, "read_sf2_presets", _no_work)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        run_main(lambda _: msd.main(["--output_dir", str(tmp_path / "file.txt" / "out")]))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output_dir" in err[0] and "is a file, not a folder" in err[0]
    with pytest.raises(UserError, match="is a file; give a folder"):
        msd.main(["--output_dir", str(tmp_path / "file.txt")])
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # read-only (root ignores chmod)
    with pytest.raises(UserError) as e:
        msd.main(["--output_dir", str(tmp_path / "ro")])
    assert "cannot write in" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
