"""streaming.py: the causal block engine, against offline definitions (model.render_chunked, synth.fft_convolve,
the analytic f0 of test signals)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import features
import model as model_lib
import streaming
import synth
from pipeline import DEFAULT_CHECKPOINT
from conftest import SR, vibrato_sine


def small_model(stride: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    cfg = model_lib.build_config(hidden_size=32, mlp_layers=1, n_harmonics=30, decoder_stride=stride,
                                 reverb_seconds=0.1)
    m = model_lib.NeuralGuitar(cfg).eval()
    with torch.no_grad():
        m.reverb.ir.mul_(100.0)       # an audible room, so the partitioned reverb matters
    return m


def run(engine, x: np.ndarray, block: int) -> np.ndarray:
    n = -(-x.size // block) * block
    x = np.concatenate([x, np.zeros(n - x.size, np.float32)])
    return np.concatenate([engine.process(x[i:i + block]) for i in range(0, n, block)])


def voice(seconds: float = 1.2, f0: float = 220.0, start: float = 0.2) -> np.ndarray:
    """Silence, then a vibrato tone with a few harmonics (a crude sung note), float32 at 16 kHz."""
    tone, _ = vibrato_sine(f0, seconds, amplitude=0.2)
    tone = tone + 0.5 * vibrato_sine(2 * f0, seconds, amplitude=0.1)[0]
    return np.concatenate([np.zeros(int(start * SR), np.float32), tone]).astype(np.float32)


def test_partitioned_convolver_equals_fft_convolve():
    rng = np.random.default_rng(0)
    kernel = torch.from_numpy(rng.standard_normal(1000).astype(np.float32)) * 0.1
    x = torch.from_numpy(rng.standard_normal(64 * 40).astype(np.float32))
    conv = streaming.PartitionedConvolver(kernel, 64)
    y = torch.cat([conv.process(x[i:i + 64]) for i in range(0, x.numel(), 64)])
    ref = synth.fft_convolve(x[None], kernel)[0, :x.numel()]
    assert torch.allclose(y, ref, atol=1e-4), float((y - ref).abs().max())


@pytest.mark.parametrize("stride", [4, 1])
def test_block_size_invariance_and_offline_equality(stride, single_thread):
    """Blocks of 64, 256 and 1024 give the same audio, each `latency_samples` late (512 for a block that is
    not whole steps, 384 for whole steps), and that audio is the offline renderer's."""
    m = small_model(stride)
    x = voice()
    outs, lat = {}, {}
    for block in (64, 256, 1024):
        engine = streaming.StreamingTransfer(m, block, record=(block == 256))
        lat[block] = engine.latency_samples
        outs[block] = run(engine, x, block)[lat[block]:][:x.size - 512]
        if block == 256:
            trace = engine.features_trace()
    assert lat == {64: 512, 256: 384, 1024: 384}
    assert np.abs(outs[256]).max() > 1e-3
    for block in (64, 1024):
        assert np.abs(outs[block] - outs[256]).max() < 1e-4, block
    # the stream equals the offline renderer fed the same (causal) features and noise, `latency_samples` later
    ref = m.render_chunked(torch.from_numpy(trace["f0_hz"]), torch.from_numpy(trace["loudness_db"]),
                           white_noise=torch.from_numpy(trace["white"])[None])[0].numpy()
    n = min(ref.size, outs[256].size)
    assert np.abs(outs[256][:n] - ref[:n]).max() < 1e-4
    y = run(streaming.StreamingTransfer(m, 256), x, 256)
    assert np.abs(y[:lat[256]]).max() < 1e-6     # nothing before the input could have caused it


@pytest.mark.parametrize("block", [64, 128, 256, 320, 1024])
def test_latency_samples_is_the_smallest_that_works(block, single_thread):
    """One HOP less latency and some block would need audio the engine has not computed yet (an error)."""
    m, x = small_model(1), voice(0.6)
    engine = streaming.StreamingTransfer(m, block)
    run(engine, x, block)
    engine.latency_samples -= features.HOP
    engine.reset()
    with pytest.raises(RuntimeError, match="latency_samples too small"):
        run(engine, x, block)


def test_no_jump_at_block_seams(single_thread):
    """A smooth model (3 partials, no noise, no room): the sample-to-sample step across any multiple of 64
    samples (the block seams, and the engine's internal step seams, which sit between them) is no larger than
    1.5 x the largest step within 8 samples of it (frame boundaries are kinks of the amplitude ramps, not jumps)."""
    torch.manual_seed(0)
    cfg = model_lib.build_config(hidden_size=32, mlp_layers=1, n_harmonics=3, noise_bias=-30.0, reverb=False)
    m = model_lib.NeuralGuitar(cfg).eval()
    x = voice(1.0)
    y = run(streaming.StreamingTransfer(m, 256, adjust=False), x, 256)[:x.size]
    d = np.abs(np.diff(y))
    assert d.max() > 1e-4
    for k in range(63 + 64, d.size - 64, 64):          # d[k] = y[64j] - y[64j - 1]
        near = np.concatenate([d[k - 8:k], d[k + 1:k + 9]])
        assert d[k] <= 1.5 * near.max() + 1e-6, (k, d[k], near.max())


def onset_sample(y: np.ndarray, fraction: float = 0.1, win: int = 64) -> int:
    """First sample whose `win`-sample RMS reaches `fraction` of the signal's highest RMS."""
    rms = np.sqrt(np.convolve(y.astype(np.float64) ** 2, np.ones(win) / win, mode="full")[:y.size])
    return int(np.argmax(rms >= fraction * rms.max()))


def test_onset_latency_equals_latency_samples(single_thread):
    """A voice onset in the input comes out `latency_samples` later (within one block), measured on the audio:
    the bundled model, the default tracker, adjust on (gating, loudness map, pluck)."""
    m = model_lib.load_model(DEFAULT_CHECKPOINT)
    x = voice(0.8, 196.0, start=0.3)
    block = 256
    engine = streaming.StreamingTransfer(m, block)
    y = run(engine, x, block)
    lat = onset_sample(y) - onset_sample(x)
    assert abs(lat - engine.latency_samples) <= block, (lat, engine.latency_samples)


@pytest.mark.parametrize("name", ["crepe-tiny", "pesto"])
def test_live_pitch_follows_vibrato_and_glide(name, single_thread):
    """Each evaluation's f0 against the analytic f0 at the centre of the window it reads."""
    import mir_eval

    tracker = features.live_pitch_tracker(name)
    vib, f_vib = vibrato_sine(330.0, 1.5, rate_hz=5.5, depth_cents=80.0, amplitude=0.3)
    t = np.arange(int(1.5 * SR)) / SR
    f_glide = 150.0 * 2.0 ** (t / 1.5)                       # one octave up in 1.5 s
    glide = (0.3 * np.sin(2 * np.pi * np.cumsum(f_glide) / SR)).astype(np.float32)
    for x, f in ((vib, f_vib), (glide, f_glide)):
        ends = np.arange(tracker.window, x.size, 256)
        f0, _ = tracker(torch.from_numpy(np.stack([x[e - tracker.window:e] for e in ends])))
        centre = ends - (tracker.window // 2 if name != "pesto" else tracker.lookahead)
        truth = f[centre]
        cents = 1200 * np.log2(f0 / truth)
        rpa = mir_eval.melody.raw_pitch_accuracy(np.ones(truth.size, bool), 1200 * np.log2(truth / 10.0),
                                                 np.ones(truth.size, bool), 1200 * np.log2(f0 / 10.0))
        assert rpa >= 0.95 and np.median(np.abs(cents)) < 25, (rpa, np.median(np.abs(cents)))
        flat = 1200 * np.log2(f0 / np.median(f0))             # it really moves with the input
        assert np.ptp(flat) > 0.5 * np.ptp(1200 * np.log2(truth / np.median(truth)))


@pytest.mark.parametrize("name", ["crepe-tiny", "pesto"])
def test_live_periodicity_tone_vs_noise(name, single_thread):
    """A vibrato tone reads as periodic (>= 0.6 in every window: above the 0.5 note gate), white noise as not
    (< 0.5 in at least 90 % of the windows)."""
    tracker = features.live_pitch_tracker(name)
    w = tracker.window
    tone = vibrato_sine(250.0, 1.0, amplitude=0.3)[0]
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, SR).astype(np.float32)
    for x, periodic in ((tone, True), (noise, False)):
        _, per = tracker(torch.from_numpy(np.stack([x[e - w:e] for e in range(w, x.size, 512)])))
        assert (per.min() >= 0.6) if periodic else (np.mean(per < 0.5) >= 0.9), (name, periodic, per)


def test_engine_rejects_bad_block(single_thread):
    with pytest.raises(ValueError):
        streaming.StreamingTransfer(small_model(4), 100)
    engine = streaming.StreamingTransfer(small_model(4), 128)
    with pytest.raises(ValueError):
        engine.process(np.zeros(64, np.float32))


def test_causal_adjust_gates_and_maps(single_thread):
    """Silence stays quiet, a loud steady note lands inside the training quantiles, an octave shifts f0."""
    cfg = model_lib.build_config(loudness_quantiles=list(np.linspace(-60.0, -10.0, 101)))
    adj = streaming.CausalAdjust(cfg, streaming.LiveSettings(octave=-1, envelope="voice"))
    f0, ld = adj.step(np.full(50, 200.0), np.zeros(50), np.full(50, -75.0))       # unvoiced, quiet
    assert np.all(ld <= -60.0 - 29.0) and np.allclose(f0, 100.0)
    f0, ld = adj.step(np.full(200, 200.0), np.full(200, 0.9), np.full(200, -20.0))  # a sung note
    assert np.all((ld >= -60.0) & (ld <= -10.0))


def test_causal_auto_octave_decides_at_onsets_only(single_thread):
    """Range E2..E5 (a config without pitch_range_midi): a note sung at A5 (MIDI 81) is moved down one octave
    from its onset; a pitch change inside the same note keeps that shift (no change mid-note)."""
    cfg = model_lib.build_config(loudness_quantiles=list(np.linspace(-60.0, -10.0, 101)))
    adj = streaming.CausalAdjust(cfg, streaming.LiveSettings(octave=None, envelope="voice"))
    adj.step(np.full(20, 200.0), np.zeros(20), np.full(20, -75.0))                 # silence first
    f0, _ = adj.step(np.full(40, 880.0), np.full(40, 0.9), np.full(40, -20.0))
    assert np.allclose(f0, 440.0)
    f0, _ = adj.step(np.full(40, 110.0), np.full(40, 0.9), np.full(40, -20.0))     # same note, now low
    assert np.allclose(f0, 55.0)


def test_causal_pluck_envelope_decays_like_the_curve(single_thread):
    """A steady sung note becomes a plucked one: without a learned curve, notes.PLUCK_DECAY_DB_PER_S (a straight
    decay) from the onset; with envelope="voice" it stays level."""
    import notes

    cfg = model_lib.build_config(loudness_quantiles=list(np.linspace(-60.0, -10.0, 101)))
    out = {}
    for env in ("pluck", "voice"):
        adj = streaming.CausalAdjust(cfg, streaming.LiveSettings(envelope=env))
        adj.step(np.full(20, 200.0), np.zeros(20), np.full(20, -75.0))
        out[env] = adj.step(np.full(250, 200.0), np.full(250, 0.9), np.full(250, -20.0))[1]
    drop = out["pluck"][20] - out["pluck"][220]
    assert abs(drop - notes.PLUCK_DECAY_DB_PER_S * 200 / features.FRAME_RATE) < 0.5, drop
    assert np.ptp(out["voice"][20:]) < 0.5
