"""features.py against independent oracles: analytic signals, librosa, mir_eval.

CREPE `tiny` everywhere except one short `full` test (the full model runs ~30 frames/s on 2 CPU cores).
"""
import subprocess
import sys
from pathlib import Path

import librosa
import mir_eval
import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import features as fx  # noqa: E402
from utils import UserError  # noqa: E402

SR = fx.SAMPLE_RATE
ROOT = Path(__file__).resolve().parents[1]


def sine(hz, seconds, amp=0.5, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def vibrato(hz, seconds, depth_cents=50.0, rate=5.5, amp=0.5):
    """Sine whose frequency swings +-depth_cents around hz; returns (audio [T], true f0 per sample [T])."""
    t = np.arange(int(seconds * SR)) / SR
    f = hz * 2.0 ** (depth_cents / 1200.0 * np.sin(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    return (amp * np.sin(phase)).astype(np.float32), f


def raw_pitch_accuracy(f0_est, f0_true, tol=20.0):
    """mir_eval raw pitch accuracy on the control grid (every reference frame voiced)."""
    ref = mir_eval.melody.hz2cents(np.asarray(f0_true, dtype=np.float64))
    est = mir_eval.melody.hz2cents(np.asarray(f0_est, dtype=np.float64))
    ones = np.ones_like(ref)
    return mir_eval.melody.raw_pitch_accuracy(ones, ref, ones, est, cent_tolerance=tol)


def librosa_loudness(x):
    """Independent DDSP-v2 loudness: librosa STFT (centred, zero padding) of x zero-padded to a multiple
    of 64, A-weighted power, mean over bins, dB, floor -80; first ceil(T/64) frames."""
    F = -(-len(x) // 64)
    xp = np.pad(x.astype(np.float64), (0, F * 64 - len(x)))
    S = librosa.stft(xp, n_fft=512, hop_length=64, window="hann", center=True, pad_mode="constant")
    freqs = librosa.fft_frequencies(sr=SR, n_fft=512)
    with np.errstate(divide="ignore"):
        w = 10 ** (librosa.A_weighting(freqs) / 10)
    p = (np.abs(S) ** 2 * w[:, None]).mean(axis=0)
    return np.maximum(10 * np.log10(np.maximum(p, 1e-20)), -80.0)[:F]


# ----------------------------------------------------------------------------------------------- frames

@pytest.mark.parametrize("T", [0, 1, 63, 64, 65, 1000, 16000, 16001])
def test_frame_count_rule(T):
    assert fx.n_frames(T) == int(np.ceil(T / 64))
    x = np.zeros(T, dtype=np.float32)
    assert fx.compute_loudness(x).shape == (fx.n_frames(T),)


def test_frame_i_is_centred_on_sample_i_times_hop():
    for k in (0, 5, 37):
        x = np.zeros(64 * 50 + 17, dtype=np.float32)
        x[64 * k] = 1.0  # a click exactly on frame k's centre
        loud = fx.compute_loudness(x)
        assert int(np.argmax(loud)) == k
        # Hann window: the click is equally far from frames k-1 and k+1
        if k > 0:
            assert loud[k - 1] == pytest.approx(loud[k + 1], abs=1e-3)


def test_f0_frame_count_matches_loudness():
    for T in (1, 700, 16000 + 33):
        x = sine(200, T / SR)[:T] if T > 1 else np.zeros(1, np.float32)
        f0, per = fx.compute_f0(x, "tiny")
        assert f0.shape == per.shape == (fx.n_frames(T),)
        assert f0.dtype == per.dtype == np.float32


# --------------------------------------------------------------------------------------------- loudness

def test_loudness_matches_independent_librosa_computation():
    rng = np.random.default_rng(0)
    T = SR // 2 + 37  # not a multiple of the hop
    x = sine(440, T / SR, 0.3)[:T] + sine(2500, T / SR, 0.05)[:T] + 0.01 * rng.standard_normal(T).astype(np.float32)
    x[: SR // 8] = 0.0  # include digital silence (floor) and its edge
    ours = fx.compute_loudness(x)
    ref = librosa_loudness(x)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 0.1
    assert ours[:10].max() == pytest.approx(-80.0)


def test_a_weighting_equals_librosa():
    freqs = np.concatenate([[0.0, 1.0, 10.0], librosa.fft_frequencies(sr=SR, n_fft=512), [20000.0]])
    with np.errstate(divide="ignore"):
        ref = librosa.A_weighting(freqs)
    assert np.allclose(fx.a_weighting_db(freqs), ref, atol=1e-9, rtol=0)
    assert abs(fx.a_weighting_db(np.array([1000.0]))[0]) < 0.01      # 0 dB at 1 kHz


def test_loudness_does_not_import_librosa():
    """live.py's memory: features (loudness) and the streaming engine load without librosa (and numba)."""
    code = ("import sys, numpy as np, features, streaming; features.compute_loudness(np.ones(4096, np.float32)); "
            "print(sorted(m for m in ('librosa', 'numba') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_loudness_drops_6_02_db_per_halving_of_amplitude():
    levels = [fx.compute_loudness(sine(1000, 0.25, amp))[10:-10].mean() for amp in (0.8, 0.4, 0.2, 0.1)]
    steps = -np.diff(levels)
    np.testing.assert_allclose(steps, 20 * np.log10(2), atol=0.01)
    # absolute level: 1 kHz has 0 dB A-weighting; |X|^2 of a Hann-windowed sine summed over its main lobe
    # is (A*N/4)^2 * 1.5, averaged over 257 bins.
    expected = 10 * np.log10((0.8 * 512 / 4) ** 2 * 1.5 / 257)
    assert levels[0] == pytest.approx(expected, abs=0.2)


def test_loudness_chunking_is_exact():
    x = np.random.default_rng(2).standard_normal(3000 + 5).astype(np.float32)
    np.testing.assert_array_equal(fx.compute_loudness(x, chunk_frames=7), fx.compute_loudness(x))


def test_loudness_torch_batched_and_device():
    x = np.stack([sine(300, 0.2, a) for a in (0.1, 0.5, 0.0)])  # [3, T]
    ref = np.stack([fx.compute_loudness(row) for row in x])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        t = torch.from_numpy(x).to(dev).reshape(3, 1, -1)
        out = fx.compute_loudness(t)
        assert isinstance(out, torch.Tensor) and out.device.type == dev and out.shape == (3, 1, ref.shape[-1])
        np.testing.assert_allclose(out.reshape(3, -1).cpu().numpy(), ref, atol=1e-3)


# ------------------------------------------------------------------------------------------------- f0

@pytest.mark.parametrize("hz", [110.0, 440.0])
def test_f0_sine_within_20_cents(hz):
    x = sine(hz, 1.0)
    f0, per = fx.compute_f0(x, "tiny")
    assert raw_pitch_accuracy(f0, np.full_like(f0, hz)) >= 0.95
    assert np.median(per) > 0.5


@pytest.mark.parametrize("hop", [fx.CREPE_HOP, fx.HOP])
def test_f0_vibrato_within_20_cents(hop):
    x, f = vibrato(220.0, 1.5)
    f0, per = fx.compute_f0(x, "tiny", hop=hop)
    truth = f[:: fx.HOP][: len(f0)]
    assert raw_pitch_accuracy(f0, truth) >= 0.95


def test_f0_melody_with_large_jumps():
    """Notes 3-19 semitones apart: the decoder must follow each note, not glide or stick."""
    notes, dur = [220, 330, 196, 440, 147, 294, 110, 262, 523, 82], 0.3
    f = np.concatenate([np.full(int(dur * SR), n, float) for n in notes])
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = (0.25 * sum(np.sin(k * phase) / k for k in range(1, 6))).astype(np.float32)
    f0, _ = fx.compute_f0(x, "tiny")
    truth = f[:: fx.HOP][: len(f0)]
    assert raw_pitch_accuracy(f0, truth, tol=50) >= 0.85
    t = np.arange(len(f0)) * fx.HOP / SR
    settled = (t % dur > 0.08) & (t % dur < dur - 0.04)  # away from the note changes
    assert raw_pitch_accuracy(f0[settled], truth[settled], tol=20) >= 0.95


def test_viterbi_matches_librosa():
    rng = np.random.default_rng(0)
    lo, S, N = 40, 120, 200
    P = rng.random((N, S)) ** 6
    P /= P.sum(axis=1, keepdims=True)
    ours = fx._viterbi(np.log(P), lo, 11) + lo
    ii = np.arange(360)
    trans = np.maximum(12 - np.abs(ii[:, None] - ii[None, :]), 0).astype(float)
    trans /= trans.sum(axis=1, keepdims=True)  # torchcrepe's matrix
    full = np.zeros((360, N))
    full[lo:lo + S] = P.T
    assert np.array_equal(ours, librosa.sequence.viterbi(full, trans))


def test_f0_full_model_short_sine():
    x = sine(330.0, 0.4)
    f0, per = fx.compute_f0(x, "full")
    assert raw_pitch_accuracy(f0, np.full_like(f0, 330.0)) >= 0.95
    assert np.median(per) > 0.8


def test_f0_is_deterministic():
    x, _ = vibrato(180.0, 0.3)
    a = fx.compute_f0(x, "tiny")
    b = fx.compute_f0(x, "tiny")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_periodicity_low_on_white_noise_and_zero_on_silence():
    noise = (0.3 * np.random.default_rng(1).standard_normal(SR)).astype(np.float32)
    _, per = fx.compute_f0(noise, "tiny")
    assert np.median(per) < 0.3
    f0, per = fx.compute_f0(np.zeros(SR // 2, np.float32), "tiny")
    assert np.all(per == 0) and np.all(f0 == fx.F0_MIN_HZ)


def test_silence_is_skipped_and_f0_held_through_pauses():
    note1, pause, note2 = sine(196.0, 0.5), np.zeros(SR // 2, np.float32), sine(330.0, 0.5)
    x = np.concatenate([note1, pause, note2])
    f0, per, stats = fx.compute_f0(x, "tiny", return_stats=True)
    # the 0.5 s pause minus a CREPE half-window (+ half a loudness window) on each side is skipped
    assert stats["evaluated_frames"] <= stats["crepe_frames"] - 35
    t = np.arange(len(f0)) * fx.HOP / SR
    inside = (t > 0.6) & (t < 0.9)  # whole CREPE window inside the pause
    assert np.all(per[inside] == 0)
    cents = 1200 * np.log2(f0[inside] / 196.0)
    assert np.max(np.abs(cents)) < 20  # held at the previous note, no wandering
    assert raw_pitch_accuracy(f0[t > 1.1], np.full(int(np.sum(t > 1.1)), 330.0)) >= 0.95
    # the same audio without the skip gives the same notes (the skip changes nothing audible)
    f0_all, _ = fx.compute_f0(x, "tiny", skip_silence=False)
    sel = (t < 0.45) | (t > 1.1)
    assert np.median(np.abs(1200 * np.log2(f0[sel] / f0_all[sel]))) < 5


def test_extract_features_schema():
    x = sine(250.0, 0.3)
    d = fx.extract_features(x, "tiny", "cpu", 64)
    F = fx.n_frames(len(x))
    assert set(d) == {"f0_hz", "periodicity", "loudness_db"}
    for v in d.values():
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.shape == (F,)


# ------------------------------------------------------------------------------------------- loading

def test_load_audio_stereo_44k_24bit(tmp_path):
    sr = 44100
    t = np.arange(int(0.5 * sr)) / sr
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], 1), sr, subtype="PCM_24")
    x = fx.load_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 0.5 * SR) <= 1
    mid = x[2000:-2000]
    assert np.max(np.abs(mid)) == pytest.approx(0.4, abs=0.01)  # mono = mean of channels
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    assert np.fft.rfftfreq(len(mid), 1 / SR)[np.argmax(spec)] == pytest.approx(440, abs=3)


@pytest.mark.parametrize("subtype,ext,fmt", [("PCM_U8", "wav", "WAV"), ("PCM_16", "flac", "FLAC"),
                                             ("VORBIS", "ogg", "OGG"), ("PCM_16", "aiff", "AIFF")])
def test_load_audio_formats(tmp_path, subtype, ext, fmt):
    p = tmp_path / f"x.{ext}"
    sf.write(p, sine(300, 0.2, 0.5, sr=22050), 22050, subtype=subtype, format=fmt)
    x = fx.load_audio(p)
    assert abs(len(x) - 0.2 * SR) <= 1 and np.max(np.abs(x)) == pytest.approx(0.5, abs=0.05)


def test_load_audio_errors_are_one_line_user_errors(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\nsecond line\n")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    for p in (text, empty):
        with pytest.raises(UserError) as e:
            fx.load_audio(p)
        msg = str(e.value)
        assert msg.startswith(f"{p}: not a readable audio file (") and "\n" not in msg
    with pytest.raises(UserError, match="file not found"):
        fx.load_audio(tmp_path / "missing.wav")


@pytest.mark.parametrize("ext", fx.AUDIO_EXTENSIONS)
def test_every_listed_extension_is_read(tmp_path, ext):
    """AUDIO_EXTENSIONS is the one list every script accepts: each must really load (files written by
    libsndfile itself, mp3 included), with the sine's pitch intact."""
    p = tmp_path / f"x{ext}"
    fmt = {".aif": "AIFF", ".mp3": "MP3", ".ogg": "OGG"}.get(ext)
    sf.write(p, sine(300, 0.5, 0.5, sr=22050), 22050, format=fmt or ext[1:].upper())
    x = fx.load_audio(p)
    assert abs(len(x) - 0.5 * SR) <= 0.06 * SR                 # mp3 adds encoder delay/padding
    mid = x[2000:-2000]
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    assert np.fft.rfftfreq(len(mid), 1 / SR)[np.argmax(spec)] == pytest.approx(300, abs=3)


def test_load_audio_folder_says_folder(tmp_path):
    with pytest.raises(UserError) as e:
        fx.load_audio(tmp_path)
    assert "is a folder" in str(e.value) and "not found" not in str(e.value) and "\n" not in str(e.value)


def test_truncated_wav_warns_once_and_loads_what_is_there(tmp_path, capsys):
    x = sine(300, 2.0, 0.5)
    full = tmp_path / "full.wav"
    sf.write(full, x, SR, subtype="PCM_16")
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])                       # header still says 2 s
    assert fx.wav_header_frames(full) == x.size == fx.wav_header_frames(cut)
    y = fx.load_audio(full)
    assert capsys.readouterr().err == ""                          # an intact file: no warning
    y = fx.load_audio(cut)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and str(cut) in err[0]
    assert "shorter than its header" in err[0] and "2.00 s" in err[0]
    n = (len(data) // 2 - 44) // 2                                # 16-bit mono after a 44-byte header
    assert y.size == n
    np.testing.assert_allclose(y, x[:n], atol=1 / 32768)
    # other formats (no RIFF header) are not second-guessed
    assert fx.wav_header_frames(tmp_path / "missing.wav") is None
    flac = tmp_path / "x.flac"
    sf.write(flac, x, SR)
    assert fx.wav_header_frames(flac) is None


def test_note_helpers():
    assert fx.hz_to_midi(440.0) == pytest.approx(69.0)
    assert fx.midi_to_hz(69.0) == pytest.approx(440.0) and fx.midi_to_hz(57.0) == pytest.approx(220.0)
    midi = np.array([28.0, 40.3, 81.0])  # round trip, numpy and torch
    np.testing.assert_allclose(fx.hz_to_midi(fx.midi_to_hz(midi)), midi, rtol=1e-12)
    torch.testing.assert_close(fx.midi_to_hz(torch.tensor([69.0, 81.0])), torch.tensor([440.0, 880.0]))
    assert fx.midi_to_note_name(40) == "E2"
    assert fx.midi_to_note_name(69.2) == "A4+20c"
    assert fx.midi_to_note_name(69.2, cents=False) == "A4"
