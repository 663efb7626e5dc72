"""model.py: config handling, checkpoint round trip, chunked rendering == forward, and a learning
sanity check (a small model fits a Karplus-Strong pluck). Small sizes throughout (CPU, seconds)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lean_layers
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


def _save(path, state_dict, config):
    utils.atomic_torch_save({"model": state_dict, "config": config, "version": model_mod.MODEL_VERSION}, path)
    return path


def test_load_model_names_weights_that_do_not_fit_their_config(tmp_path):
    """Config and weights disagree: one line naming the file, the tensor and both shapes."""
    m = small_model()  # hidden 32, 20 harmonics, 17 noise bands: head has 1 + 20 + 17 = 38 outputs
    path = _save(tmp_path / "k.pth", m.state_dict(), {**m.config, "n_harmonics": 10})
    with pytest.raises(utils.UserError) as err:
        model_mod.load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    # the head writes 1 + K + N controls for each of the decoder_stride (4) frames of a step
    assert "head.weight is [152, 32] in the file, [112, 32] for its config" in msg
    assert "head.bias is [152] in the file, [112] for its config" in msg
    wide = _save(tmp_path / "w.pth", m.state_dict(), {**m.config, "hidden_size": 16})  # every layer differs
    with pytest.raises(utils.UserError, match=r"f0_mlp\.0\.weight is \[32, 4\] in the file, \[16, 4\].* more"):
        model_mod.load_model(wide)
    weights = {k: v for k, v in m.state_dict().items() if k != "reverb.ir"}
    with pytest.raises(utils.UserError, match=r"reverb\.ir is missing"):
        model_mod.load_model(_save(tmp_path / "r.pth", weights, m.config))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_model_refuses_non_finite_weights(tmp_path, bad):
    """NaN/inf anywhere in the weights: one line naming the file and the first bad tensor."""
    m = small_model()
    weights = m.state_dict()
    weights["out_mlp.0.weight"][3, 5] = bad
    weights["head.bias"][0] = bad
    path = _save(tmp_path / "nan.pth", weights, m.config)
    with pytest.raises(utils.UserError) as err:
        model_mod.load_model(path)
    assert str(err.value) == f"{path}: weight out_mlp.0.weight holds NaN or inf values; retrain or re-download it"


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder,F,chunk,stride", [("gru", 300, 37, 4), ("transformer", 300, 37, 4),
                                                    ("gru", 300, 37, 1), ("gru", 40, 1, 1), ("gru", 41, 1, 4)])
def test_render_chunked_equals_forward(decoder, F, chunk, stride):
    m = small_model(decoder, seed=1, noise_bias=0.0, decoder_stride=stride)  # loud noise: FIR margins matter
    with torch.no_grad():
        m.reverb.ir.mul_(100.0)  # an audible room, so the carried tail matters
    f0, loud = controls(F, seed=2)
    w = white(F, seed=2)
    done = []
    with torch.no_grad():
        full = m(f0, loud, white_noise=w)["audio"]
        chunked = m.render_chunked(f0[0], loud[0], chunk_frames=chunk, white_noise=w, progress=done.append)
    assert chunked.shape == full.shape == (1, F * HOP)
    err = (chunked - full).abs()[0]
    assert err.max() < 1e-5, err.max()
    # the chunks end where the seams below are checked (chunks are at least the 2-frame margin long and
    # whole decoder steps)
    step = -(-max(chunk, 2) // stride) * stride
    assert done == [*range(step, F, step), F]
    # no discontinuity at the seams: the sample-to-sample step there is the same as in the unchunked render
    seams = torch.arange(step, F, step) * HOP
    step_c = (chunked[0, seams] - chunked[0, seams - 1]).abs()
    step_f = (full[0, seams] - full[0, seams - 1]).abs()
    assert torch.allclose(step_c, step_f, atol=2e-5)


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


@pytest.mark.parametrize("decoder", ["gru", "transformer"])
@pytest.mark.parametrize("stride", [1, 4])
def test_decoder_is_causal(decoder, stride):
    """A change of the input at frame t0 changes the controls from the start of t0's decoder step on and none
    before (the live engine relies on it); the transformer forgets it after layers * (window - 1) = 2 * 7
    decoder steps (SMALL)."""
    m = small_model(decoder, decoder_stride=stride)
    f0, loud = controls(60 * stride)
    t0, louder = 30 * stride + stride // 2, loud.clone()
    louder[:, t0] += 10.0
    with torch.no_grad():
        a = m.decode(f0, loud)[0]["harmonic_distribution"][0]
        b = m.decode(f0, louder)[0]["harmonic_distribution"][0]
    changed = (a - b).abs().amax(-1) > 1e-6  # [F]: frames whose controls moved
    first = t0 - t0 % stride  # the step's first frame
    assert not changed[:first].any() and changed[first]
    if decoder == "transformer":
        assert changed[first:first + 15 * stride].all() and not changed[first + 15 * stride:].any()
    else:
        assert changed[first:first + 15 * stride].all()  # the GRU carries it on (fading)


# ------------------------------------------------------------------------------------------------
# lean_layers (the decoder's lean CPU training layers) against their spec: nn.GRU, nn.Linear of torch.cat
# ------------------------------------------------------------------------------------------------
def _gru_grads(gru, x, h0, weight, split=False):
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    gru.zero_grad()
    y, h = gru([x[..., :5], x[..., 5:]] if split else x, h0)
    ((y * weight).sum() + (h ** 2).sum()).backward()
    grads = [x.grad] + ([] if h0 is None else [h0.grad]) + [p.grad.clone() for p in gru.parameters()]
    return y.detach(), h.detach(), grads


@pytest.mark.parametrize("with_h0,split", [(False, False), (True, False), (True, True)])
def test_lean_gru_equals_torch_gru_outputs_and_gradients(with_h0, split):
    """LeanGRU's training path (own recurrence, recomputed gates; input as one tensor or as two parts)
    against nn.GRU with the same weights."""
    torch.manual_seed(0)
    B, F, I, H = 3, 40, 12, 16
    gru = torch.nn.GRU(I, H, batch_first=True).double()
    lean = lean_layers.LeanGRU(I, H).double()
    lean.load_state_dict(gru.state_dict())  # the same parameters and state_dict keys
    x = torch.randn(B, F, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64) if with_h0 else None
    weight = torch.randn(B, F, H, dtype=torch.float64)
    torch_out = _gru_grads(gru, x, h0, weight)
    lean_out = _gru_grads(lean, x, h0, weight, split)
    torch.testing.assert_close(lean_out[0], torch_out[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lean_out[1], torch_out[1], rtol=1e-12, atol=1e-12)
    for got, want in zip(lean_out[2], torch_out[2]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # and it is the path actually taken while training on CPU: the backward node is ours
    y, _ = lean(x.requires_grad_(), h0)
    assert "GRURecurrence" in type(y.grad_fn).__name__
    with torch.no_grad():  # inference uses PyTorch's own GRU
        y_inf, _ = lean(x, h0)
    torch.testing.assert_close(y_inf, torch_out[0], rtol=1e-12, atol=1e-12)


def test_lean_gru_gradcheck():
    torch.manual_seed(1)
    B, F, H = 2, 5, 3
    gi = torch.randn(B, F, 3 * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3 * H, H, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lean_layers.GRURecurrence.apply, (gi, h0, w, b))


@pytest.mark.parametrize("bias", [True, False])
def test_split_linear_equals_linear_of_the_concatenation(bias):
    torch.manual_seed(2)
    parts = [torch.randn(2, 7, n, dtype=torch.float64, requires_grad=True) for n in (3, 5, 4)]
    lin = torch.nn.Linear(12, 6, bias=bias).double()
    w = torch.randn(2, 7, 6, dtype=torch.float64)
    got = lean_layers.split_linear(parts, lin.weight, lin.bias)
    grads_got = torch.autograd.grad((got * w).sum(), [*parts, *lin.parameters()])
    want = lin(torch.cat(parts, dim=-1))
    grads_want = torch.autograd.grad((want * w).sum(), [*parts, *lin.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads_got, grads_want):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="features"):
        lean_layers.split_linear(parts[:2], lin.weight, lin.bias)


def test_split_linear_under_autocast_and_with_no_frames():
    """Under bf16 autocast it is exactly autocast's own linear of the concatenation (no bf16 rounding of
    partial sums); zero frames give a [B, 0, O] result."""
    torch.manual_seed(3)
    parts = [torch.randn(2, 9, n, requires_grad=True) for n in (4, 6)]
    lin = torch.nn.Linear(10, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lean_layers.split_linear(parts, lin.weight, lin.bias)
        want = lin(torch.cat(parts, dim=-1))
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    got.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in parts)
    empty = [torch.zeros(2, 0, n) for n in (4, 6)]
    assert lean_layers.split_linear(empty, lin.weight, lin.bias).shape == (2, 0, 5)


@pytest.mark.parametrize("grad", [False, True])
def test_decode_equals_the_plain_rnn_fc_decoder(grad):
    """decode (lean layers) against the same weights in plain PyTorch layers: f0 and loudness MLPs,
    torch.cat, nn.GRU, out MLP over torch.cat([GRU out, inputs]), head. Controls and, in training, gradients."""
    m = small_model("gru", mlp_layers=2).double()
    H, layers = m.config["hidden_size"], m.config["mlp_layers"]
    gru = torch.nn.GRU(2 * H, H, batch_first=True).double()
    gru.load_state_dict(m.core.state_dict())
    out_mlp = model_mod.mlp(3 * H, H, layers).double()
    out_mlp.load_state_dict(m.out_mlp.state_dict())
    assert type(gru) is torch.nn.GRU and type(out_mlp[0]) is torch.nn.Linear
    f0, loud = controls(30, 2)
    f0, loud = f0.double(), loud.double()
    weights = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in m.decode(f0, loud)[0].items()}

    def plain():
        a, b = m.scale_inputs(f0, loud)
        x = torch.cat([m.f0_mlp(a), m.loudness_mlp(b)], dim=-1)
        y, _ = gru(x)
        raw = m.head(out_mlp(torch.cat([y, x], dim=-1)))  # [B, G, S * (1 + K + N)]
        raw = raw.reshape(raw.shape[0], -1, raw.shape[2] // m.stride)[:, :f0.shape[1]]  # [B, F, 1 + K + N]
        K = m.config["n_harmonics"]
        return {"amplitude": model_mod.synth.exp_sigmoid(raw[..., :1]),
                "harmonic_distribution": model_mod.synth.exp_sigmoid(raw[..., 1:1 + K]),
                "noise_magnitudes": model_mod.synth.exp_sigmoid(raw[..., 1 + K:] + m.config["noise_bias"])}

    results = []
    for fn, core, out in ((lambda: m.decode(f0, loud)[0], m.core, m.out_mlp), (plain, gru, out_mlp)):
        with torch.set_grad_enabled(grad):
            got = fn()
        params = [p for mod in (m.f0_mlp, m.loudness_mlp, core, out, m.head) for p in mod.parameters()]
        grads = torch.autograd.grad(sum((got[k] * weights[k]).sum() for k in got), params) if grad else []
        results.append((got, grads))
    (got, g_got), (want, g_want) = results
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    assert len(g_got) == len(g_want)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bf16_autocast_runs_the_decoder_in_bf16_and_the_dsp_in_float32():
    """train.py --amp on CPU: the decoder under bfloat16 autocast, the synthesizer in float32."""
    m = small_model("gru")
    f0, loud = controls(60, 2)
    with torch.no_grad():
        ref = m(f0, loud, white_noise=white(60, 2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            raw, _ = m.decode(f0, loud)
            out = m(f0, loud, white_noise=white(60, 2))
    assert raw["harmonic_distribution"].dtype == torch.bfloat16
    assert out["audio"].dtype == torch.float32 and out["harmonic_distribution"].dtype == torch.float32
    rel = (out["harmonic_distribution"] - ref["harmonic_distribution"]).abs().max() / ref["harmonic_distribution"].abs().max()
    assert 0 < rel < 0.05  # bf16 has ~3 significant digits: close, not equal


def test_checkpoint_config_without_decoder_stride_rebuilds_the_every_frame_decoder(tmp_path):
    """Checkpoints written before `decoder_stride` existed hold no such key: they must rebuild with stride 1
    (one decoder step per frame), as they were trained, not with today's default."""
    old = small_model(decoder_stride=1)
    config = {k: v for k, v in old.config.items() if k != "decoder_stride"}
    path = _save(tmp_path / "old.pth", old.state_dict(), config)
    loaded = model_mod.load_model(path)
    assert loaded.stride == 1 and model_mod.DEFAULT_CONFIG["decoder_stride"] != 1
    f0, loud = controls(50)
    w = white(50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(f0, loud, white_noise=w)["audio"], old(f0, loud, white_noise=w)["audio"])
