"""transfer.py: auto-adjust pure functions, pitch tracking through the whole product, chunking, levels,
error paths.

Oracles: analytic signals with known f0, CREPE (torchcrepe via features.compute_f0) run on the output,
exact arithmetic for the octave rule and the quantile map, soundfile for what was written. The model is
a small one trained here for a few dozen steps on plucked harmonic tones (MIDI 40-52), with the
training-set statistics in its config computed by data.dataset_statistics, as train.py does.
Tests run with one torch thread (conftest `single_thread`).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import features
import notes
import pipeline
import transfer
from conftest import run_cli
from utils import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]
SR = features.SAMPLE_RATE

# ---------------------------------------------------------------------------------------------------
# Fixtures: audio and a tiny trained model (shared with test_evaluate.py)
# ---------------------------------------------------------------------------------------------------


def pluck(midi: float, seconds: float, rng: np.random.Generator, n_harm: int = 25) -> np.ndarray:
    """Plucked-string-like tone: harmonics 1/k, higher partials decaying faster; damped 0.15 s before the end."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    x = np.zeros_like(t)
    for k in range(1, n_harm + 1):
        if k * f0 < SR / 2 - 500:
            x += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k * np.exp(-t * (1.5 + 0.6 * k))
    x *= 0.3 * np.minimum(1.0, t / 0.005) * np.clip((seconds - 0.15 - t) / 0.05, 0.0, 1.0)  # damped, then silence
    return x.astype(np.float32)


def sung_tone(f0_hz: float = 220.0, seconds: float = 2.5, vibrato_cents: float = 40.0, rate_hz: float = 5.5,
              pad_s: float = 0.3, amp: float = 0.2):
    """Vibrato 'voice': harmonics shaped by two formants (700, 1200 Hz), with silence around it.

    Returns (audio float32 [T], true f0 Hz [T] (0 in the silent padding)).
    """
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = f0_hz * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * rate_hz * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = np.zeros(n)
    for k in range(1, 25):
        fk = k * f0_hz
        if fk > SR / 2 - 1000:
            break
        g = 1 / (1 + ((fk - 700) / 150) ** 2) + 0.5 / (1 + ((fk - 1200) / 200) ** 2) + 0.05 / k
        x += g * np.sin(k * phase)
    env = np.minimum(1, np.minimum(t, t[-1] - t) / 0.05)
    x = amp * x / np.abs(x).max() * env
    pad = np.zeros(int(pad_s * SR))
    return (np.concatenate([pad, x, pad]).astype(np.float32),
            np.concatenate([pad, f0, pad]))


_CACHE: dict = {}


def tiny_checkpoint(directory: Path) -> Path:
    """Train (once per session) and save a small NeuralGuitar; returns the .pth path."""
    if "ckpt" in _CACHE:
        return _CACHE["ckpt"]
    import data
    import loss
    import model as model_mod

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feats, audios = [], []
    for i in range(8):
        midi = 40 + 12 * i / 7
        a = pluck(midi, 0.5, rng)
        f = features.n_frames(a.size)
        feats.append({"loudness_db": torch.from_numpy(features.compute_loudness(a)),
                      "f0_hz": torch.full((f,), 440.0 * 2 ** ((midi - 69) / 12)),
                      "periodicity": torch.ones(f)})
        audios.append(a)
    stats = data.dataset_statistics(feats)
    cfg = model_mod.build_config(hidden_size=32, n_harmonics=40, n_noise_bands=17, mlp_layers=1,
                                 reverb=True, reverb_seconds=0.1, decoder_stride=1, **stats)  # stride 1: fits in 25 steps
    net = model_mod.NeuralGuitar(cfg)
    # the reverb IR stays at its quiet initial value: a few steps at this learning rate would turn it
    # into loud random noise that smears the pitch (a trained model learns it slowly)
    opt = torch.optim.Adam([p for n, p in net.named_parameters() if not n.startswith("reverb")], lr=5e-3)
    mss = loss.MultiResolutionSTFTLoss()
    audio = torch.from_numpy(np.stack(audios))
    f0 = torch.stack([f["f0_hz"] for f in feats])
    ld = torch.stack([f["loudness_db"] for f in feats])
    for _ in range(25):
        opt.zero_grad()
        out = net(f0, ld)["audio"][:, : audio.shape[1]]
        mss(out, audio).backward()
        opt.step()
    path = Path(directory) / "tiny.pth"
    atomic_torch_save({"model": net.state_dict(), "config": net.config, "version": 1}, path)
    _CACHE["ckpt"] = path
    return path


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def voice_file(tmp_path_factory):
    x, f0 = sung_tone()
    path = tmp_path_factory.mktemp("voice") / "voice.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    return path, x, f0


def cli(argv, monkeypatch, capsys):
    return run_cli(transfer.main, argv, monkeypatch, capsys)


# ---------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------

def test_auto_octave_moves_notes_into_the_instrument_range():
    """Hand-counted: notes inside [40, 76] per shift; the smallest shift of the best count wins."""
    assert notes.auto_octave([45, 50, 60, 70], 40, 76) == 0           # already in range: never moved
    assert notes.auto_octave([76, 77, 79, 81], 40, 76) == -1          # 1 fits at 0, all 4 one octave down
    assert notes.auto_octave([20, 22, 25, 30], 40, 76) == 2           # sung two octaves low: lifted
    assert notes.auto_octave([38, 50, 66, 79], 40, 76) == 0           # 2 inside at 0, at -1 and at +1: keeps 0
    assert notes.auto_octave([], 40, 76) == 0
    assert notes.config_pitch_range({}) == notes.DEFAULT_PITCH_RANGE_MIDI
    assert notes.config_pitch_range({"pitch_range_midi": [45.0, 70.0]}) == (45.0, 70.0)
    # through adjust_features on an input whose note frames sit at MIDI 87 (D#6), range E2..E5 by default
    F = 500
    f0 = np.full(F, 440.0 * 2 ** (18 / 12), np.float32)
    loud = np.full(F, -20.0, np.float32)
    per = np.full(F, 0.9, np.float32)
    cfg = {"mean_midi": 52.0, "loudness_quantiles": list(np.linspace(-60, -10, 101)),
           "loudness_mean": -30.0, "loudness_std": 10.0}
    f0_out, _, info = notes.adjust_features(f0, loud, per, cfg)
    assert info["octave"] == -1 and info["semitones"] == -12.0
    np.testing.assert_allclose(f0_out, f0 / 2, rtol=1e-6)
    # a training range that starts at E5 (76) lifts E4 (64) one octave, and D#6 (87) stays
    f0_e4 = np.full(F, 440.0 * 2 ** (-5 / 12), np.float32)
    assert notes.adjust_features(f0_e4, loud, per, {**cfg, "pitch_range_midi": [76.0, 90.0]})[2]["octave"] == 1
    assert notes.adjust_features(f0, loud, per, {**cfg, "pitch_range_midi": [76.0, 90.0]})[2]["octave"] == 0
    f0_out, _, info = notes.adjust_features(f0, loud, per, cfg, notes.AdjustSettings(octave=1, semitones=-3))
    np.testing.assert_allclose(f0_out, f0 * 2 ** (9 / 12), rtol=1e-6)


def test_quantile_map_sends_input_quantiles_to_training_quantiles():
    rng = np.random.default_rng(1)
    x = rng.normal(-30, 8, 5000)
    q_in = notes.loudness_quantiles(x)
    q_train = np.sort(rng.uniform(-70, 0, 101))
    assert np.array_equal(notes.quantile_map(q_in, q_in, q_train), q_train)
    # the mapped distribution has the training quantiles (up to interpolation between levels)
    np.testing.assert_allclose(notes.loudness_quantiles(notes.quantile_map(x, q_in, q_train)), q_train,
                               atol=0.05)
    # monotone, and held at the ends outside the input range
    y = notes.quantile_map(np.linspace(-100, 50, 400), q_in, q_train)
    assert np.all(np.diff(y) >= 0) and y[0] == q_train[0] and y[-1] == q_train[-1]
    # capped slope: a steady hum (1 dB range) is stretched at most 2x, its median lands on the training median
    hum = rng.uniform(-20.5, -19.5, 2000)
    q_hum = notes.loudness_quantiles(hum)
    y = notes.quantile_map(hum, q_hum, q_train, max_slope=2.0)
    assert np.ptp(y) <= 2 * np.ptp(hum) + 1e-9 and abs(np.median(y) - q_train[50]) < 0.05
    assert np.all(np.diff(notes.quantile_map(np.sort(hum), q_hum, q_train, max_slope=2.0)) >= 0)
    # a cap the map never reaches changes nothing
    np.testing.assert_allclose(notes.quantile_map(q_in, q_in, q_train, max_slope=1e9), q_train, atol=1e-9)
    # ties (a loudness shared by many frames) do not break it
    assert np.isfinite(notes.quantile_map([-80.0, -10.0], [-80.0, -80.0, 0.0], [-60.0, -50.0, 0.0])).all()


def test_adjust_maps_note_loudness_and_quiets_the_rest():
    F = 1000
    rng = np.random.default_rng(2)
    note = np.zeros(F, bool)
    note[100:400] = note[600:900] = True
    loud = np.where(note, rng.uniform(-35, -5, F), -50.0)
    per = np.where(note, 0.9, 0.1)
    f0 = np.full(F, 200.0)
    q_train = np.linspace(-60, -20, 101)
    cfg = {"mean_midi": 55.0, "loudness_quantiles": list(q_train), "loudness_mean": 0.0, "loudness_std": 1.0}
    _, out, info = notes.adjust_features(f0, loud, per, cfg,
                                            notes.AdjustSettings(max_slope=None, envelope="voice"))
    assert np.array_equal(info["note_mask"], note)
    np.testing.assert_allclose(notes.loudness_quantiles(out[note]), q_train, atol=0.1)
    far = ~note & (notes.note_weight(note) == 0)
    assert np.all(out[far] <= max(q_train[0] - 30, -80) + 1e-4)        # breath/silence pushed far down
    _, raw, info = notes.adjust_features(f0, loud, per, cfg, notes.AdjustSettings(auto=False, loudness_db=3))
    np.testing.assert_allclose(raw, loud + 3, atol=1e-4)
    assert info["octave"] == 0


def test_note_segments_split_on_held_pitch_changes_only():
    F = 300
    note = np.zeros(F, bool)
    note[10:150] = note[200:260] = True
    f0 = np.full(F, 220.0)
    f0[80:150] = 220.0 * 2 ** (2 / 12)                       # a legato step up a whole tone at frame 80
    f0[40:44] = 220.0 * 2 ** (1 / 12)                        # a 16 ms flick: not a new note
    f0[200:260] = 220.0 * 2 ** (0.3 * np.sin(np.arange(60)) / 12)  # vibrato within a semitone
    assert notes.note_segments(note, f0) == [(10, 80), (80, 150), (200, 260)]


def test_pluck_envelope_starts_at_the_onset_level_and_decays():
    F = 500
    note = np.zeros(F, bool)
    note[100:350] = True
    loud = np.where(note, -10.0, -70.0)
    loud[100:110] = np.linspace(-40, -10, 10)                # the sung attack reaches -10 dB and holds
    loud[300:350] = np.linspace(-10, -60, 50)                # then the singer fades out
    out = notes.pluck_envelope(loud, note, np.full(F, 200.0), decay_db_per_s=20.0)  # no learned curve
    t = np.arange(250) / 250.0
    np.testing.assert_allclose(out[100:300], -10.0 - 20.0 * t[:200])   # 1 s later: 20 dB down
    # fades with the voice (the onset accent, 6 dB decaying with a 40 ms time constant, has long decayed)
    np.testing.assert_allclose(out[300:350], np.minimum(-10.0 - 20.0 * t[200:], loud[300:350]), atol=1e-6)
    assert out[349] == pytest.approx(-60.0, abs=1e-6)
    np.testing.assert_array_equal(out[~note], loud[~note])        # outside notes: untouched


def test_detect_notes_closes_gaps_and_drops_blips():
    F = 400
    per = np.zeros(F)
    per[50:150] = 0.9
    per[100:104] = 0.1       # 16 ms dropout inside a note: closed
    per[300:308] = 0.9       # 32 ms blip: dropped
    note = notes.detect_notes(per, np.full(F, -20.0), smooth_frames=1)
    assert note[50:150].all() and not note[:50].any() and not note[150:].any()
    quiet = notes.detect_notes(per, np.full(F, -75.0), smooth_frames=1)
    assert not quiet.any()   # below the -70 dB floor: never a note


# ---------------------------------------------------------------------------------------------------
# The product, end to end
# ---------------------------------------------------------------------------------------------------

def test_output_tracks_the_sung_pitch(ckpt, voice_file, tmp_path, monkeypatch, capsys):
    path, x, _ = voice_file
    out = tmp_path / "guitar.wav"
    # --envelope voice: sustained output, so the pitch can be measured over whole notes (a pluck decays);
    # --pitch voice: the output follows the sung pitch frame by frame (vibrato included), not each note's median
    code, stdout, _ = cli([path, "-o", out, "--checkpoint", ckpt, "--device", "cpu", "--plot", "--envelope", "voice",
                           "--pitch", "voice"],
                          monkeypatch, capsys)
    assert code == 0 and "real-time factor" in stdout
    y, sr = sf.read(out, dtype="float32")
    assert sr == SR and y.size == x.size
    peak = np.abs(y).max()
    assert 10 ** (-1.5 / 20) < peak <= 10 ** (-1 / 20) + 1e-4          # normalised to -1 dBFS, not clipped
    assert out.with_suffix(".png").stat().st_size > 10_000
    # pitch of the output (CREPE) against the input's CREPE pitch after the applied shift
    fin, pin = features.compute_f0(x, "tiny")
    fout, pout = features.compute_f0(y, "tiny")
    cfg = torch.load(ckpt, weights_only=True)["config"]
    note = notes.detect_notes(pin, features.compute_loudness(x))
    octave = notes.auto_octave([57.0], *notes.config_pitch_range(cfg))  # the 220 Hz (A3) voice's shift
    voiced = note & (pout >= 0.5)
    assert voiced.sum() > 0.8 * note.sum()
    cents = 1200 * np.abs(np.log2(fout[voiced] / (fin[voiced] * 2.0 ** octave)))
    assert np.median(cents) < 20 and np.mean(cents < 50) > 0.95, (np.median(cents), np.mean(cents < 50))
    # non-trivial sound: output energy sits where the notes are
    ly = features.compute_loudness(y)
    assert ly[note].mean() > ly[~note].mean() + 20


def test_chunked_equals_unchunked_through_transfer(ckpt, voice_file):
    from model import load_model

    _, x, _ = voice_file
    net = load_model(ckpt)
    feats = features.extract_features_bounded(x[: SR], "tiny")
    f0, ld, _ = notes.adjust_features(feats["f0_hz"].numpy(), feats["loudness_db"].numpy(),
                                         feats["periodicity"].numpy(), net.config)
    whole = pipeline.render(net, f0, ld, chunk_frames=10 ** 6, seed=3)
    chunked = pipeline.render(net, f0, ld, chunk_frames=37, seed=3)
    np.testing.assert_allclose(chunked, whole, atol=1e-5 * np.abs(whole).max() + 1e-7)
    # and both equal model.forward given the same noise
    noise = torch.rand(1, f0.size * net.hop, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ref = net(torch.from_numpy(f0)[None], torch.from_numpy(ld)[None], noise)["audio"][0].numpy()
    np.testing.assert_allclose(whole, ref, atol=1e-5 * np.abs(ref).max() + 1e-7)


def test_segmented_pitch_analysis_matches_whole_file(voice_file):
    _, x, _ = voice_file
    whole = features.extract_features(x, "tiny")
    seg = features.extract_features_bounded(x, "tiny", segment_frames=200, context_frames=100)
    assert torch.equal(seg["loudness_db"], whole["loudness_db"])
    voiced = whole["periodicity"].numpy() > 0.5
    cents = 1200 * np.abs(np.log2(seg["f0_hz"].numpy() / whole["f0_hz"].numpy()))
    assert np.median(cents[voiced]) < 1 and np.percentile(cents[voiced], 99) < 10


def test_sample_rate_44100_and_gain_is_capped(ckpt, voice_file, tmp_path, monkeypatch, capsys):
    path, x, _ = voice_file
    out = tmp_path / "hi.wav"
    code, _, err = cli([path, "-o", out, "--checkpoint", ckpt, "--device", "cpu", "--sample_rate", "44100",
                        "--gain", "40"], monkeypatch, capsys)
    assert code == 0 and "warning" in err and "--gain" in err
    y, sr = sf.read(out, dtype="float32")
    assert sr == 44100 and abs(y.size - round(x.size * 44100 / SR)) <= 1
    assert np.abs(y).max() <= 10 ** (-1 / 20) + 1e-4


def test_several_inputs_go_to_a_folder(ckpt, voice_file, tmp_path, monkeypatch, capsys):
    path, x, _ = voice_file
    other = tmp_path / "second take.flac"
    sf.write(other, x[: SR], SR)
    code, _, _ = cli([path, other, "-o", tmp_path / "out", "--checkpoint", ckpt, "--device", "cpu"],
                     monkeypatch, capsys)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["second take_guitar.wav", "voice_guitar.wav"]


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, exit 1, nothing written
# ---------------------------------------------------------------------------------------------------

def _bad_inputs(tmp: Path) -> dict:
    rng = np.random.default_rng(5)
    junk = tmp / "junk.wav"
    junk.write_bytes(b"RIFF not really a wave file" * 10)
    files = {"junk": (junk, "not a readable audio file"),
             "silence": (tmp / "silence.wav", "silent"),
             "short": (tmp / "short.wav", "too short"),
             "noise": (tmp / "noise.wav", "no pitched notes")}
    sf.write(files["silence"][0], np.zeros(SR, np.float32), SR)
    sf.write(files["short"][0], sung_tone(seconds=0.1, pad_s=0.0)[0], SR)
    sf.write(files["noise"][0], (0.2 * rng.standard_normal(SR)).astype(np.float32), SR)
    return files


@pytest.mark.parametrize("kind", ["junk", "silence", "short", "noise"])
def test_bad_input_one_line_exit_1_no_output(kind, ckpt, tmp_path, monkeypatch, capsys):
    src, expected = _bad_inputs(tmp_path)[kind]
    out = tmp_path / "o" / "x.wav"
    code, _, err = cli([src, "-o", out, "--checkpoint", ckpt, "--device", "cpu", "--plot"], monkeypatch, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(src) in lines[0], err
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))


def test_missing_checkpoint_is_one_line_from_the_real_cli(tmp_path):
    src = tmp_path / "v.wav"
    sf.write(src, sung_tone(seconds=0.5)[0], SR)
    r = subprocess.run([sys.executable, str(ROOT / "transfer.py"), str(src), "-o", str(tmp_path / "o.wav"),
                        "--checkpoint", str(tmp_path / "nope.pth")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nope.pth" in r.stderr and "--checkpoint" in r.stderr
    assert not (tmp_path / "o.wav").exists()


def test_missing_bundled_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "DEFAULT_CHECKPOINT", ROOT / "pretrained" / "not_there_guitar_demo.pth")
    src = tmp_path / "v.wav"
    sf.write(src, sung_tone(seconds=0.5)[0], SR)
    code, _, err = cli([src, "-o", tmp_path / "o.wav"], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "guitar_demo.pth" in err and "--checkpoint" in err
    assert not (tmp_path / "o.wav").exists()


# ---------------------------------------------------------------------------------------------------
# Output locations, formats and inputs checked before the work (issue 14, items 2 and 10)
# ---------------------------------------------------------------------------------------------------

def _no_work(monkeypatch):
    """Make loading the model fail the test: the checks under test must come before any work."""
    import model

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the output location was checked")
    monkeypatch.setattr(model, "load_model", refuse)


def _read_only(monkeypatch, folder: Path):
    """Make `folder` look read-only to os.access (CI runs as root, where chmod does not deny)."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == folder and mode & os.W_OK
                        else real(p, mode, *a, **k))


@pytest.mark.parametrize("case", ["under_a_file", "read_only", "folder_named_wav", "file_as_folder"])
def test_unwritable_output_is_one_line_before_any_work(case, ckpt, voice_file, tmp_path, monkeypatch, capsys):
    path = voice_file[0]
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "results").write_text("a file without an extension")
    (tmp_path / "taken.wav").mkdir()
    (tmp_path / "ro").mkdir()
    out, expected = {"under_a_file": (tmp_path / "notes.txt" / "x.wav", "is a file, not a folder"),
                     "read_only": (tmp_path / "ro" / "x.wav", "cannot write"),
                     "folder_named_wav": (tmp_path / "taken.wav", "is a folder"),
                     "file_as_folder": (tmp_path / "results", "is a file; give a folder")}[case]
    if case == "read_only":
        _read_only(monkeypatch, tmp_path / "ro")
    _no_work(monkeypatch)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = cli([path, "-o", out, "--checkpoint", ckpt, "--device", "cpu"], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert expected in err and "-o" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_output_extension_picks_the_format_or_is_refused(ckpt, voice_file, tmp_path, monkeypatch, capsys):
    path = voice_file[0]
    _no_work(monkeypatch)
    code, _, err = cli([path, "-o", tmp_path / "x.m4a", "--checkpoint", ckpt], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and ".m4a" in err
    assert ".wav" in err and ".flac" in err                      # lists what can be written
    assert not (tmp_path / "x.m4a").exists()                     # no folder named x.m4a
    monkeypatch.undo()
    out = tmp_path / "x.flac"
    code, _, _ = cli([path, "-o", out, "--checkpoint", ckpt, "--device", "cpu"], monkeypatch, capsys)
    assert code == 0 and sf.info(out).format == "FLAC" and sf.info(out).samplerate == SR
    # a folder named like a file: with a trailing slash
    code, _, _ = cli([path, "-o", f"{tmp_path / 'takes.v2'}/", "--checkpoint", ckpt, "--device", "cpu"],
                     monkeypatch, capsys)
    assert code == 0 and (tmp_path / "takes.v2" / "voice_guitar.wav").is_file()


def test_folder_as_input_says_it_is_a_folder(ckpt, tmp_path, monkeypatch, capsys):
    (tmp_path / "takes").mkdir()
    code, _, err = cli([tmp_path / "takes", "-o", tmp_path / "o.wav", "--checkpoint", ckpt, "--device", "cpu"],
                       monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "is a folder" in err and "not found" not in err and "*.wav" in err
    assert not (tmp_path / "o.wav").exists()


def test_mp3_input_is_read(ckpt, voice_file, tmp_path, monkeypatch, capsys):
    assert ".mp3" in features.AUDIO_EXTENSIONS
    _, x, _ = voice_file
    src = tmp_path / "take.mp3"
    sf.write(src, x, SR)                                        # libsndfile's own MP3 encoder
    code, _, _ = cli([src, "-o", tmp_path / "o.wav", "--checkpoint", ckpt, "--device", "cpu"], monkeypatch, capsys)
    assert code == 0 and sf.info(tmp_path / "o.wav").frames == pytest.approx(x.size, abs=2000)


# ---------------------------------------------------------------------------------------------------
# A broken checkpoint: one line naming it, exit 1, nothing written (issue 14, item 4)
# ---------------------------------------------------------------------------------------------------

def broken_checkpoint(good: Path, directory: Path, kind: str) -> Path:
    """A copy of `good` with NaN in a decoder weight ("nan") or a finite reverb IR so large that the
    output overflows to Inf/NaN ("overflow": finite weights, non-finite audio)."""
    ck = torch.load(good, weights_only=True)
    state = dict(ck["model"])
    if kind == "nan":
        name = next(k for k in state if k.endswith("weight") and not k.startswith("reverb"))
        state[name] = torch.full_like(state[name], float("nan"))
    else:
        state["reverb.ir"] = torch.full_like(state["reverb.ir"], 3e38)
    path = Path(directory) / f"broken_{kind}.pth"
    atomic_torch_save({**ck, "model": state}, path)
    return path


@pytest.mark.parametrize("kind", ["nan", "overflow"])
def test_broken_checkpoint_is_one_line_and_writes_nothing(kind, ckpt, voice_file, tmp_path, monkeypatch, capsys):
    bad = broken_checkpoint(ckpt, tmp_path, kind)
    out = tmp_path / "o" / "x.wav"
    code, _, err = cli([voice_file[0], "-o", out, "--checkpoint", bad, "--device", "cpu", "--plot"],
                       monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))


def test_adjust_flag_defaults_are_the_settings_defaults():
    args = transfer.build_parser().parse_args(["in.wav"])
    assert notes.adjust_settings(args) == notes.AdjustSettings()


def test_fx_preset_goes_through_the_amp_and_a_missing_plugin_is_one_line(ckpt, voice_file, tmp_path, monkeypatch,
                                                                          capsys):
    """--fx crunch: the rendered guitar goes through effects.py's crunch amp (the same output as applying the
    preset to the --fx none render's 16 kHz audio, up to the final peak normalisation); --fx_plugin with a
    missing file stops before any work with one line."""
    import effects

    path, x, _ = voice_file
    outs = {}
    for fx in ("none", "crunch"):
        outs[fx] = tmp_path / f"{fx}.wav"
        code, _, _ = cli([path, "-o", outs[fx], "--checkpoint", ckpt, "--device", "cpu", "--fx", fx, "--gain", "0"],
                         monkeypatch, capsys)
        assert code == 0
    dry, _ = sf.read(outs["none"], dtype="float32")
    wet, _ = sf.read(outs["crunch"], dtype="float32")
    want = effects.apply(dry, SR, "crunch")
    want *= 10 ** (-1 / 20) / max(np.abs(want).max(), 10 ** (-1 / 20))  # transfer's -1 dBFS ceiling
    assert np.abs(wet - dry).max() > 0.05
    assert np.abs(wet - want).max() < 2e-3  # 16-bit files in between
    missing = tmp_path / "amp.vst3"
    code, _, err = cli([path, "-o", tmp_path / "p.wav", "--checkpoint", ckpt, "--fx_plugin", missing],
                       monkeypatch, capsys)
    assert code == 1 and str(missing) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.wav").exists()
