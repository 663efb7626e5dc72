"""loss.MultiResolutionSTFTLoss against auraloss (an independent implementation) and basic properties."""
from __future__ import annotations

import auraloss
import numpy as np
import pytest
import torch

import loss as loss_mod

SR = 16000
pytestmark = pytest.mark.usefixtures("single_thread")


def _auraloss_equivalent(fft_sizes=loss_mod.FFT_SIZES, eps=1e-7):
    """auraloss configured as the DDSP loss: Hann of n samples, hop n/4, L1 of linear and of log
    magnitude, no spectral convergence; its eps is added to |X|^2 (so eps**2 for a magnitude floor)."""
    return auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=list(fft_sizes), hop_sizes=[n // 4 for n in fft_sizes], win_lengths=list(fft_sizes),
        window="hann_window", w_sc=0.0, w_lin_mag=1.0, w_log_mag=1.0, eps=eps ** 2)


def _pair(seed=0, B=2, T=SR // 2):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) / SR
    target = 0.5 * torch.sin(2 * torch.pi * 330 * t) * torch.exp(-3 * t) + 0.01 * torch.randn(B, T, generator=g)
    pred = 0.3 * torch.sin(2 * torch.pi * 335 * t) + 0.05 * torch.randn(B, T, generator=g)
    return pred, target


def test_zero_for_identical_signals_and_symmetric(pluck):
    crit = loss_mod.MultiResolutionSTFTLoss()
    x = torch.tensor(np.stack([pluck(196.0, 0.5), pluck(330.0, 0.5, seed=1)]))
    assert crit(x, x).item() == 0.0
    pred, target = _pair()
    a, b = crit(pred, target), crit(target, pred)
    assert a.item() > 0
    assert torch.allclose(a, b, rtol=1e-6)


def test_matches_auraloss_times_number_of_scales():
    pred, target = _pair(seed=1)
    ours = loss_mod.MultiResolutionSTFTLoss()(pred, target)
    ref = _auraloss_equivalent()(pred[:, None], target[:, None]) * len(loss_mod.FFT_SIZES)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # another configuration of sizes, and near-silent inputs where the eps floor matters
    sizes = (512, 128)
    quiet = pred * 1e-6
    ours = loss_mod.MultiResolutionSTFTLoss(fft_sizes=sizes)(quiet, torch.zeros_like(quiet))
    ref = _auraloss_equivalent(sizes)(quiet[:, None], torch.zeros_like(quiet)[:, None]) * len(sizes)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert loss_mod.MultiResolutionSTFTLoss().hops == tuple(n // 4 for n in loss_mod.FFT_SIZES)


def test_gradients_are_finite_including_at_exact_silence(silence):
    crit = loss_mod.MultiResolutionSTFTLoss()
    pred, target = _pair(seed=2)
    zero = torch.tensor(np.stack([silence(0.5)] * 2))
    for p, t in ((pred, target), (zero, zero), (zero, target), (pred, zero)):
        p = p.clone().requires_grad_()
        value = crit(p, t)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(p.grad).all()
    # a gradient step from silence towards a target reduces the loss (the gradient is informative)
    p = (zero + 1e-3 * pred).requires_grad_()
    before = crit(p, target)
    before.backward()
    with torch.no_grad():
        after = crit(p - 1e-3 * p.grad / p.grad.abs().max(), target)
    assert after < before


def test_larger_for_a_more_detuned_sine(sine):
    crit = loss_mod.MultiResolutionSTFTLoss()
    ref = torch.tensor(sine(440.0, 1.0, amplitude=0.5))[None]
    values = [crit(torch.tensor(sine(f, 1.0, amplitude=0.5))[None], ref).item()
              for f in (440.0, 442.0, 466.16, 523.25)]  # unison, 8 cents, a semitone, a minor third
    assert values[0] == 0.0
    assert values[0] < values[1] < values[2] < values[3]


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        loss_mod.MultiResolutionSTFTLoss()(torch.zeros(1, 4000), torch.zeros(1, 4001))


@pytest.mark.parametrize("chunk", [1 << 18, 4000])
def test_gradient_equals_auraloss_gradient_for_both_inputs(monkeypatch, chunk):
    """The loss computes its gradient scale by scale (and a few batch items at a time, `chunk`) inside
    forward to save memory; the gradient must still be auraloss's (x number of scales), for pred and target."""
    monkeypatch.setattr(loss_mod._ScaleByScale, "CHUNK_SAMPLES", chunk)
    pred, target = _pair(seed=3, B=3, T=4000)
    ours = [x.clone().double().requires_grad_() for x in (pred, target)]
    ref = [x.clone().double().requires_grad_() for x in (pred, target)]
    value = loss_mod.MultiResolutionSTFTLoss().double()(*ours)
    value.backward()
    (_auraloss_equivalent()(ref[0][:, None], ref[1][:, None]) * len(loss_mod.FFT_SIZES)).backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-12)
    # no gradient wanted: plain evaluation, same value
    with torch.no_grad():
        assert loss_mod.MultiResolutionSTFTLoss().double()(pred.double(), target.double()).item() == pytest.approx(value.item(), rel=1e-12)
    # gradient w.r.t. pred only, scaled by an outer factor (backward multiplies by grad_output)
    p = pred.clone().double().requires_grad_()
    (3.0 * loss_mod.MultiResolutionSTFTLoss().double()(p, target.double())).backward()
    torch.testing.assert_close(p.grad, 3.0 * ref[0].grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("n_fft", [2048, 256, 64])
def test_stft_magnitude_equals_torch_stft(n_fft):
    x = _pair(seed=4, B=2, T=5000)[0]
    window = torch.hann_window(n_fft)
    want = torch.stft(x, n_fft, n_fft // 4, n_fft, window, center=True, pad_mode="reflect",
                      return_complex=True).abs().clamp_min(1e-7)
    got = loss_mod.stft_magnitude(x, n_fft, n_fft // 4, window, 1e-7)
    torch.testing.assert_close(got.transpose(1, 2), want, rtol=1e-6, atol=1e-6)
