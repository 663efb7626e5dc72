"""model.py: config handling, checkpoint round trip, chunked rendering == forward, and a learning
sanity check (a small model fits a Karplus-Strong pluck). Small sizes throughout (CPU, seconds)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import loss as loss_mod
import model as model_mod
import utils

SR, HOP = 16000, 64
pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = dict(hidden_size=32, mlp_layers=1, n_harmonics=20, n_noise_bands=17, reverb_seconds=0.05,
             transformer_layers=2, transformer_heads=2, attention_window=8)


def small_model(decoder="gru", seed=0, **overrides) -> model_mod.NeuralGuitar:
    torch.manual_seed(seed)
    return model_mod.NeuralGuitar(model_mod.build_config(**{**SMALL, "decoder": decoder, **overrides})).eval()


def controls(F: int, B: int = 1, seed: int = 0):
    """Plausible inputs: f0 glides 100 -> 1200 Hz with vibrato (Hz), loudness -70..-10 dB."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(F) / 250.0
    f0 = 100 * 12 ** (torch.arange(F) / max(F - 1, 1)) * 2 ** (0.3 / 12 * torch.sin(2 * math.pi * 5 * t))
    loud = -40 + 30 * torch.sin(2 * math.pi * 0.7 * t) + torch.randn(B, F, generator=g)
    return f0.expand(B, F).contiguous(), loud


def white(F: int, B: int = 1, seed: int = 0):
    return torch.rand(B, F * HOP, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["gru", "transformer"])
def test_forward_shapes_and_finite(decoder):
    m = small_model(decoder)
    F, B = 50, 2
    f0, loud = controls(F, B)
    with torch.no_grad():
        out = m(f0, loud, white_noise=white(F, B))
    for key in ("audio", "harmonic", "noise"):
        assert out[key].shape == (B, F * HOP) and torch.isfinite(out[key]).all(), key
    assert out["amplitude"].shape == (B, F, 1)
    assert out["harmonic_distribution"].shape == (B, F, 20)
    assert out["noise_magnitudes"].shape == (B, F, 17)
    assert (out["amplitude"] > 0).all() and out["audio"].abs().max() > 0
    # white_noise=None draws fresh noise: still the right shape
    with torch.no_grad():
        assert m(f0, loud)["audio"].shape == (B, F * HOP)


def test_build_config_rejects_unknown_keys_and_bad_decoder():
    cfg = model_mod.build_config(hidden_size=64)
    assert cfg["hidden_size"] == 64 and set(cfg) == set(model_mod.DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="hiden_size"):
        model_mod.build_config(hiden_size=64)
    with pytest.raises(ValueError):
        model_mod.build_config(decoder="lstm")
    assert model_mod.DEFAULT_CONFIG["hidden_size"] == 512  # defaults are not mutated by overrides


@pytest.mark.parametrize("decoder", ["gru", "transformer"])
def test_checkpoint_round_trip_gives_identical_output(tmp_path, decoder):
    stats = dict(loudness_mean=-31.5, loudness_std=11.0, mean_midi=52.25,
                 loudness_quantiles=[float(q) for q in np.linspace(-80, -5, 101)])
    m = small_model(decoder, seed=3, **stats)
    with torch.no_grad():  # make the learnable synth parts non-default as well
        m.harmonic.log_inharmonicity.fill_(math.log(2e-4))
        m.reverb.ir.mul_(50.0)
    path = tmp_path / "ckpt.pth"
    utils.atomic_torch_save({"model": m.state_dict(), "config": m.config, "version": model_mod.MODEL_VERSION},
                            path)
    loaded = model_mod.load_model(path, "cpu")
    assert not loaded.training
    assert loaded.config == m.config and loaded.config["loudness_quantiles"] == stats["loudness_quantiles"]
    F = 80
    f0, loud = controls(F)
    w = white(F)
    with torch.no_grad():
        assert torch.equal(m(f0, loud, white_noise=w)["audio"], loaded(f0, loud, white_noise=w)["audio"])


def test_load_model_errors_are_user_errors(tmp_path):
    with pytest.raises(utils.UserError, match="not found"):
        model_mod.load_model(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(utils.UserError):
        model_mod.load_model(junk)
    no_cfg = tmp_path / "nocfg.pth"
    utils.atomic_torch_save({"model": {}}, no_cfg)
    with pytest.raises(utils.UserError, match="config"):
        model_mod.load_model(no_cfg)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder,F,chunk", [("gru", 300, 37), ("transformer", 300, 37), ("gru", 40, 1)])
def test_render_chunked_equals_forward(decoder, F, chunk):
    m = small_model(decoder, seed=1, noise_bias=0.0)  # loud noise, so its FIR margins matter
    with torch.no_grad():
        m.reverb.ir.mul_(100.0)  # an audible room, so the carried tail matters
    f0, loud = controls(F, seed=2)
    w = white(F, seed=2)
    done = []
    with torch.no_grad():
        full = m(f0, loud, white_noise=w)["audio"]
        chunked = m.render_chunked(f0[0], loud[0], chunk_frames=chunk, white_noise=w, progress=done.append)
    assert chunked.shape == full.shape == (1, F * HOP)
    assert done[-1] == F and done == sorted(done)
    err = (chunked - full).abs()[0]
    assert err.max() < 1e-5, err.max()
    # no discontinuity at the seams: the sample-to-sample step there is the same as in the unchunked
    # render (and not larger than the largest step anywhere)
    seams = torch.arange(max(chunk, 2), F, max(chunk, 2)) * HOP
    step_c = (chunked[0, seams] - chunked[0, seams - 1]).abs()
    step_f = (full[0, seams] - full[0, seams - 1]).abs()
    assert torch.allclose(step_c, step_f, atol=2e-5)
    assert step_c.max() <= full[0].diff().abs().max() + 2e-5


def test_render_chunked_two_minutes_completes():
    m = small_model("gru", hidden_size=16, reverb_seconds=1.0)
    F = 120 * 250
    t = torch.arange(F) / 250.0
    f0 = 196.0 * 2 ** (torch.floor(t) % 12 / 12)  # a chromatic scale, one note per second
    loud = -30 + 20 * torch.cos(2 * math.pi * t)
    with torch.no_grad():
        y = m.render_chunked(f0, loud, chunk_frames=2500)
    assert y.shape == (1, F * HOP) and torch.isfinite(y).all() and y.abs().max() > 0


# ------------------------------------------------------------------------------------------------
def _loudness_db(audio: np.ndarray) -> np.ndarray:
    """features.compute_loudness when features.py imports; otherwise the DDSP v2 definition with
    librosa (A-weighted power, n_fft 512, hop 64, centred, mean over bins, dB, floor -80)."""
    try:
        import features
        return np.asarray(features.compute_loudness(audio))
    except ImportError:
        import librosa
        F = math.ceil(len(audio) / HOP)
        x = np.pad(audio, (0, F * HOP - len(audio)))
        spec = np.abs(librosa.stft(x, n_fft=512, hop_length=HOP, center=True, pad_mode="constant")) ** 2
        weight = 10 ** (librosa.A_weighting(librosa.fft_frequencies(sr=SR, n_fft=512)) / 10)
        power = (spec * weight[:, None]).mean(0)[:F]
        return np.maximum(10 * np.log10(np.maximum(power, 1e-20)), -80.0).astype(np.float32)


def test_small_model_learns_a_plucked_string(pluck):
    """Fit one 1 s Karplus-Strong pluck (known f0) with a small GRU model: Adam (lr 1e-3) must halve
    the multi-resolution STFT loss within 300 steps."""
    f0_hz = 196.0
    audio = torch.tensor(pluck(f0_hz, 1.0, decay=0.996))[None]
    loud = torch.tensor(_loudness_db(audio[0].numpy()))[None]
    F = loud.shape[1]
    assert F == SR // HOP and loud.max() > -30
    torch.manual_seed(0)
    cfg = model_mod.build_config(hidden_size=64, mlp_layers=2, n_harmonics=40, n_noise_bands=33, reverb=False,
                                 loudness_mean=float(loud.mean()), loudness_std=float(loud.std()))
    m = model_mod.NeuralGuitar(cfg).train()
    crit = loss_mod.MultiResolutionSTFTLoss()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    f0 = torch.full((1, F), f0_hz)
    w = white(F, seed=1)
    losses = []
    for _ in range(300):
        value = crit(m(f0, loud, white_noise=w)["audio"], audio)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
        assert math.isfinite(losses[-1])
        if losses[-1] <= 0.5 * losses[0]:
            break
    assert min(losses) <= 0.5 * losses[0], (losses[0], min(losses), len(losses))
