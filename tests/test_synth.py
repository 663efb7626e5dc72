"""synth.py against analytic truth: numpy FFT/least squares, closed-form sines and chirps, Welch PSD,
direct convolution. Nothing here re-uses synth.py to make its own expected values, except where a
test says so (the audio-rate oscillator reference takes its per-frame amplitudes from
`harmonic_amplitudes`, which has its own tests below).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

import fastbank
import synth

SR, HOP = 16000, 64
NYQ = SR / 2
pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def make_harmonic(n_harmonics: int, b: float = 1e-12) -> synth.HarmonicSynthesizer:
    """Synth with inharmonicity ~0 (B = 1e-12 moves partial 100 by 5e-9 relative: nothing)."""
    return synth.HarmonicSynthesizer(n_harmonics, SR, HOP, learn_inharmonicity=False, initial_inharmonicity=b)


def render(hs, f0_frames, amplitude, distribution, dtype=torch.float32) -> np.ndarray:
    """f0_frames [F] Hz, amplitude scalar or [F], distribution [K] or [F, K] -> audio float64 [F*hop]."""
    f0 = torch.as_tensor(np.asarray(f0_frames, dtype=np.float64), dtype=dtype)
    Fr = f0.shape[0]
    amp = torch.as_tensor(np.broadcast_to(np.asarray(amplitude, np.float64), (Fr,)).copy(), dtype=dtype)
    dist = torch.as_tensor(np.asarray(distribution, np.float64), dtype=dtype)
    dist = dist.expand(Fr, -1) if dist.dim() == 1 else dist
    with torch.no_grad():
        y = hs(amp[None, :, None], dist[None].contiguous(), f0[None, :, None])
    return y[0].double().numpy()


def peak_hz(x: np.ndarray, lo: float, hi: float, pad: int = 4) -> float:
    """Frequency of the largest Hann-windowed FFT peak in [lo, hi] Hz, refined by parabolic
    interpolation of the log magnitude."""
    n = len(x) * pad
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n)) + 1e-30
    freqs = np.fft.rfftfreq(n, 1 / SR)
    band = np.nonzero((freqs >= lo) & (freqs <= hi))[0]
    i = band[np.argmax(spec[band])]
    a, b, c = np.log(spec[i - 1: i + 2])
    delta = 0.5 * (a - c) / (a - 2 * b + c)
    return (i + delta) * SR / n


def ls_amplitude(x: np.ndarray, f_hz: float) -> float:
    """Amplitude of the best least-squares sinusoid at exactly f_hz."""
    t = np.arange(len(x)) / SR
    basis = np.stack([np.sin(2 * np.pi * f_hz * t), np.cos(2 * np.pi * f_hz * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.hypot(*coef))


def trapz_phase(freq_hz: np.ndarray) -> np.ndarray:
    """2*pi * integral of a per-sample, piecewise-linear frequency, at every sample (exact)."""
    return 2 * np.pi / SR * np.concatenate([[0.0], np.cumsum((freq_hz[1:] + freq_hz[:-1]) / 2)])


# ------------------------------------------------------------------------------------------------
# the fixtures themselves (so other tests can rely on them)
# ------------------------------------------------------------------------------------------------
def test_fixtures_have_the_pitch_they_claim(sine, vibrato_sine, pluck, white_noise, silence):
    assert abs(peak_hz(sine(440.0, 1.0), 300, 600) - 440.0) < 0.05
    y, f_inst = vibrato_sine(220.0, 1.0, rate_hz=5.0, depth_cents=50.0)
    assert y.shape == f_inst.shape == (SR,)
    assert f_inst.max() == pytest.approx(220 * 2 ** (50 / 1200), rel=1e-4)
    for f0 in (82.41, 196.0, 440.0):
        assert abs(peak_hz(pluck(f0, 1.0), 0.8 * f0, 1.2 * f0) / f0 - 1) < 2e-3
    p = pluck(196.0, 1.0)
    assert np.abs(p).max() == pytest.approx(0.5) and np.abs(p[-1600:]).max() < 0.1 * np.abs(p[:1600]).max()
    n = white_noise(1.0, seed=3)
    assert n.min() >= -1 and n.max() <= 1 and abs(n.var() - 1 / 3) < 0.01
    assert np.array_equal(n, white_noise(1.0, seed=3))
    assert not silence(0.5).any() and silence(0.5).shape == (8000,)


# ------------------------------------------------------------------------------------------------
# HarmonicSynthesizer: frequency, amplitude, phase
# ------------------------------------------------------------------------------------------------
def test_constant_440_has_fft_peak_and_requested_amplitudes():
    hs = make_harmonic(3)
    dist = np.array([0.6, 0.3, 0.1])  # renormalised over audible partials: already sums to 1
    y = render(hs, np.full(250, 440.0), 0.5, dist)  # 1 s
    assert y.shape == (SR,)
    # FFT peak: 1 Hz bins, periodic Hann of known coherent gain sum(w) = N/2
    w = np.hanning(SR + 1)[:-1]
    spec = np.abs(np.fft.rfft(y * w))
    k = int(np.argmax(spec))
    assert abs(k - 440) <= 1
    assert 2 * spec[440] / w.sum() == pytest.approx(0.5 * 0.6, rel=0.01)
    # least squares at each partial
    for h, d in enumerate(dist, start=1):
        assert ls_amplitude(y, 440.0 * h) == pytest.approx(0.5 * d, rel=0.01)


def test_sine_equals_analytic_sample_by_sample_no_seams():
    hs = make_harmonic(1)
    y = render(hs, np.full(250, 440.0), 0.8, [1.0])
    ref = 0.8 * np.sin(2 * np.pi * 440.0 * np.arange(SR) / SR)
    err = np.abs(y - ref)
    # partial frequencies and the running phase are float64; what is left is float32 rendering
    # (~1e-6). Anything structural (a seam, a half-sample offset) is orders of magnitude larger.
    assert err.max() < 2e-5
    # explicitly at the frame boundaries (last sample of a frame -> first of the next)
    seams = np.arange(HOP, SR, HOP)
    assert err[seams].max() < 2e-5 and err[seams - 1].max() < 2e-5
    # no step at a seam: a sampled sine obeys y[n+1] + y[n-1] = 2 cos(w) y[n] exactly (a phase or
    # amplitude jump of 1e-5 between frames breaks it at the seam, well inside the error bound above)
    resid = y[2:] + y[:-2] - 2 * np.cos(2 * np.pi * 440.0 / SR) * y[1:-1]  # resid[i] is about sample i+1
    assert np.abs(resid[seams - 1]).max() < 5e-6 and np.abs(resid[seams - 2]).max() < 5e-6


def test_initial_and_final_phase_continue_a_render():
    hs = make_harmonic(4)
    f0 = torch.full((1, 100, 1), 330.0)
    amp, dist = torch.full((1, 100, 1), 0.5), torch.rand(1, 100, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = hs(amp, dist, f0)
        a, ph = hs(amp[:, :40], dist[:, :40], f0[:, :40], return_phase=True)
        b = hs(amp[:, 40:], dist[:, 40:], f0[:, 40:], initial_phase=ph)
    # the first part holds its last frame's controls instead of gliding to frame 40: compare the
    # parts that do not depend on that (f0 is constant, so only the amplitude ramp of frame 39 differs)
    assert torch.allclose(full[:, 40 * HOP:], b, atol=1e-5)
    assert torch.allclose(full[:, :39 * HOP], a[:, :39 * HOP], atol=1e-6)
    # final phase = 2*pi*k*f0*T/sr (mod 2*pi); frequencies and the running phase are float64
    got = ph[0].numpy()
    omega = 2 * np.pi * 330.0 * np.arange(1, 5) / SR
    expect = np.mod(omega * 40 * HOP, 2 * np.pi)
    assert np.abs(np.angle(np.exp(1j * (got - expect)))).max() < 1e-9


def test_linear_glide_equals_analytic_chirp():
    """f0 glides linearly 200 -> 1000 Hz; every partial k must follow sin(k * 2*pi*int f)."""
    Fr, K = 250, 3
    t_end = (Fr - 1) * HOP  # last control frame; f0 is held after it
    f_a, f_b = 200.0, 1000.0
    f0 = f_a + (f_b - f_a) * np.arange(Fr) * HOP / t_end
    y = render(make_harmonic(K), f0, 0.9, np.ones(K))
    n = np.arange(t_end + 1)
    phase = 2 * np.pi / SR * (f_a * n + (f_b - f_a) * n ** 2 / (2 * t_end))  # closed form integral
    ref = 0.3 * sum(np.sin(k * phase) for k in range(1, K + 1))
    err = np.abs(y[: t_end + 1] - ref)
    # float32 drift as in the sine test; a left/right Riemann sum instead of the integral would be
    # off by half a sample's frequency change (k * 0.16 rad here at the end)
    assert err.max() < 2e-5


# ------------------------------------------------------------------------------------------------
# Nyquist: muting and renormalisation
# ------------------------------------------------------------------------------------------------
def test_partials_above_nyquist_are_muted_and_rest_renormalised():
    """f0 = 3 kHz, 5 equal partials: only 3 and 6 kHz are audible, each at half the amplitude;
    aliases of 9/12/15 kHz would land at 7/4/1 kHz."""
    y = render(make_harmonic(5), np.full(250, 3000.0), 0.6, np.ones(5))
    t = np.arange(SR) / SR
    ref = 0.3 * (np.sin(2 * np.pi * 3000 * t) + np.sin(2 * np.pi * 6000 * t))
    assert np.abs(y - ref).max() < 1e-4
    spec = np.abs(np.fft.rfft(y * np.hanning(SR))) ** 2
    total = spec.sum()
    for alias in (7000, 4000, 1000):
        assert spec[alias - 20: alias + 21].sum() / total < 1e-10
    assert spec[7900:].sum() / total < 1e-10  # nothing near or at Nyquist


def _alias_and_high_band_energy(y: np.ndarray, f0_frames: np.ndarray, K: int):
    """STFT energy (fraction of total) (a) near where partials above Nyquist would alias to, counting
    only bins >= 300 Hz away from every audible partial, 0 Hz and Nyquist; (b) above 7.9 kHz, in the
    STFT columns where no partial is anywhere between 7.5 and 8 kHz during the analysis window (a
    partial legitimately sounds right up to Nyquist before it is muted)."""
    nper = 512
    f, t, Z = scipy.signal.stft(y, SR, window="hann", nperseg=nper, noverlap=384, boundary=None)
    P = np.abs(Z) ** 2
    frame_pos = np.arange(len(f0_frames)) * HOP
    k = np.arange(1, K + 1)
    alias_e = high_e = 0.0
    for j, tj in enumerate(t * SR):
        fj = np.interp(tj, frame_pos, f0_frames)
        partials = fj * k
        legit = partials[partials < NYQ]
        folded = np.abs(SR * np.round(partials[partials >= NYQ] / SR) - partials[partials >= NYQ])
        far = np.ones_like(f, bool)
        for g in np.concatenate([legit, [0.0, NYQ]]):
            far &= np.abs(f - g) > 300
        near_alias = np.zeros_like(f, bool)
        for a in folded:
            near_alias |= np.abs(f - a) < 60
        alias_e += P[far & near_alias, j].sum()
        span = np.interp(np.arange(tj - nper // 2 - 2 * HOP, tj + nper // 2 + 2 * HOP), frame_pos, f0_frames)
        lo, hi = span.min() * k, span.max() * k
        if not np.any((hi >= 7500) & (lo < NYQ)):
            high_e += P[f >= 7900, j].sum()
    total = P.sum()
    return alias_e / total, high_e / total


@pytest.mark.parametrize("direction", ["up", "down"])
def test_glide_across_nyquist_has_no_aliasing(direction):
    """Partials 3..16 cross Nyquist while f0 glides between 1 and 3 kHz (2 s)."""
    Fr, K = 500, 16
    f0 = np.linspace(1000.0, 3000.0, Fr)
    f0 = f0 if direction == "up" else f0[::-1].copy()
    y = render(make_harmonic(K), f0, 0.5, np.ones(K))
    alias, high = _alias_and_high_band_energy(y, f0, K)
    assert alias < 1e-6  # -60 dB (an unmasked render gives about -5 dB here)
    assert high < 1e-6
    # total amplitude as requested: each audible partial has 0.5/n_audible (+-1 %), in a 0.26 s
    # stretch around f0 = 1.8 kHz where 4 partials are audible throughout (f0 spans 1.67-1.93 kHz)
    c = int(np.argmin(np.abs(f0 - 1800.0))) * HOP
    mid = slice(c - 2048, c + 2048)
    n_aud = 4
    seg = y[mid]
    # the frequency drifts by ~ +-4 Hz per partial over the 0.26 s window: fit against the exact phase
    n = np.arange(len(y))
    f_inst = np.interp(n, np.arange(Fr) * HOP, f0)
    ph = trapz_phase(f_inst)[mid]
    for k in range(1, n_aud + 1):
        basis = np.stack([np.sin(k * ph), np.cos(k * ph)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
        assert np.hypot(*coef) == pytest.approx(0.5 / n_aud, rel=0.01)


def test_downward_jump_never_fades_a_partial_in_above_nyquist():
    """f0 jumps 3 kHz -> 1 kHz between frames 19 and 20. In the gliding frame 19, partials 3..7 would
    sweep down from 9..21 kHz: they must stay silent there (only 3 and 6 kHz -> 1 and 2 kHz sound)."""
    f0 = np.array([3000.0] * 20 + [1000.0] * 20)
    K = 8
    y = render(make_harmonic(K), f0, 1.0, np.ones(K))
    n = np.arange(len(y))
    ph = trapz_phase(np.interp(n, np.arange(len(f0)) * HOP, f0))
    ref = 0.5 * (np.sin(ph) + np.sin(2 * ph))  # two audible partials, renormalised to 1/2 each
    end = 20 * HOP + 1
    assert np.abs(y[:end] - ref[:end]).max() < 1e-4
    # after the jump all 7 partials below 8 kHz fade in and then share the amplitude
    tail = y[25 * HOP:]
    for k in range(1, 8):
        assert ls_amplitude(tail, 1000.0 * k) == pytest.approx(1 / 7, rel=0.01)


def test_harmonic_amplitudes_mute_every_partial_that_would_reach_nyquist():
    """Random f0 tracks with jumps, stiff string ratios: wherever a partial has non-zero amplitude at
    either end of a frame, its frequency stays below Nyquist over that whole frame; amplitudes sum
    to the requested amplitude in every frame that has an audible partial."""
    g = torch.Generator().manual_seed(1)
    Fr, K = 300, 100
    log_f0 = torch.cumsum(torch.randn(2, Fr, 1, generator=g) * 0.3, 1) + math.log(400)
    f0 = log_f0.exp().clamp(40, 9000)
    ratios = synth.stiff_string_ratios(K, torch.tensor(1e-4))
    amplitude = torch.rand(2, Fr, 1, generator=g) + 0.1
    amps = synth.harmonic_amplitudes(amplitude, torch.rand(2, Fr, K, generator=g) + 1e-3, f0, ratios, SR)
    assert (amps >= 0).all()
    sounding = (amps[:, :-1] > 0) | (amps[:, 1:] > 0)  # frame f: control points f and f+1
    f_max = torch.maximum(f0[:, :-1], f0[:, 1:]) * ratios
    assert not (sounding & (f_max >= NYQ)).any()
    audible = amps.sum(-1, keepdim=True) > 0
    assert torch.allclose(amps.sum(-1, keepdim=True)[audible], amplitude[audible], rtol=1e-5)
    # frames whose neighbourhood is well below Nyquist keep their partials
    low = (f0 * ratios[0] < 1000).squeeze(-1)
    assert audible.squeeze(-1)[low].all()


# ------------------------------------------------------------------------------------------------
# inharmonicity
# ------------------------------------------------------------------------------------------------
def test_inharmonicity_moves_partials_to_stiff_string_frequencies():
    B, f0, K = 1e-3, 110.0, 30
    hs = synth.HarmonicSynthesizer(K, SR, HOP, learn_inharmonicity=True, initial_inharmonicity=1e-6)
    with torch.no_grad():
        hs.log_inharmonicity.fill_(math.log(B))
    y = render(hs, np.full(250, f0), 0.8, np.ones(K))
    for k in (1, 5, 10, 15, 20, 30):
        expect = k * f0 * math.sqrt(1 + B * k * k)
        got = peak_hz(y, expect - 25, expect + 25)
        assert abs(got - expect) < 1.0, (k, got, expect)
        if k >= 10:  # clearly away from the harmonic position
            assert abs(got - k * f0) > 25


def test_inharmonicity_stays_positive_and_has_a_finite_correct_gradient():
    for init in (0.0, 1e-30, 1e-6, 0.5):
        hs = synth.HarmonicSynthesizer(8, SR, HOP, initial_inharmonicity=init)
        assert torch.isfinite(hs.log_inharmonicity) and hs.inharmonicity.item() > 0
    hs = synth.HarmonicSynthesizer(8, SR, HOP, initial_inharmonicity=1e-3).double()
    # a hard gradient step towards smaller B (lower partials) must not make the string "negatively
    # stiff": B stays > 0, so no partial goes below its harmonic k * f0
    opt = torch.optim.SGD(hs.parameters(), lr=10.0)
    hs.ratios().sum().backward()
    opt.step()
    k = torch.arange(1, 9, dtype=torch.float64)
    assert hs.inharmonicity.item() > 0 and (hs.ratios() >= k).all()
    hs.zero_grad()
    hs.log_inharmonicity.data.fill_(math.log(1e-3))
    g = torch.Generator().manual_seed(0)
    f0 = (200 + 50 * torch.rand(1, 12, 1, generator=g)).double()
    amp = torch.full((1, 12, 1), 0.5, dtype=torch.float64)
    dist = torch.rand(1, 12, 8, generator=g).double()
    w = torch.randn(12 * HOP, generator=g).double()

    def objective():
        return (hs(amp, dist, f0)[0] * w).sum()

    objective().backward()
    grad = hs.log_inharmonicity.grad.item()
    assert math.isfinite(grad) and grad != 0
    h = 1e-5
    with torch.no_grad():
        hs.log_inharmonicity += h
        up = objective().item()
        hs.log_inharmonicity -= 2 * h
        down = objective().item()
    assert grad == pytest.approx((up - down) / (2 * h), rel=1e-4)


# ------------------------------------------------------------------------------------------------
# fastbank: autograd and the chunk machinery; equality with the readable audio-rate bank
# ------------------------------------------------------------------------------------------------
def _bank_inputs(M, K, hop, seed, dtype=torch.float64, active=None):
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.rand(M, K, generator=g, dtype=dtype) * 2 * math.pi
    omega = torch.rand(M, K, generator=g, dtype=dtype) * 0.5
    domega = (torch.rand(M, K, generator=g, dtype=dtype) - 0.5) * 0.05
    amp0 = torch.rand(M, K, generator=g, dtype=dtype) * 0.05
    amp1 = torch.rand(M, K, generator=g, dtype=dtype) * 0.05
    if active is not None:  # frame m keeps only its first active[m] partials (as Nyquist muting does)
        keep = (torch.arange(K)[None, :] < torch.as_tensor(active)[:, None]).to(dtype)
        amp0, amp1 = amp0 * keep, amp1 * keep
        return theta0, omega, domega, amp0, amp1, keep
    return theta0, omega, domega, amp0, amp1, None


def _direct_formula(t0, w, dw, a0, a1, hop) -> np.ndarray:
    """numpy: sum_k (a0 (1 - n/hop) + a1 n/hop) sin(t0 + w n + dw n^2 / 2hop), per frame: [M, hop]."""
    n = np.arange(hop)[None, :, None]
    th = t0.numpy()[:, None] + w.numpy()[:, None] * n + dw.numpy()[:, None] * n ** 2 / (2 * hop)
    return ((a0.numpy()[:, None] * (1 - n / hop) + a1.numpy()[:, None] * n / hop) * np.sin(th)).sum(-1)


def test_harmonic_bank_gradcheck_dense():
    theta0, omega, domega, amp0, amp1, _ = _bank_inputs(5, 6, 8, seed=0)
    inputs = tuple(t.requires_grad_() for t in (theta0, omega, domega, amp0, amp1))
    assert torch.autograd.gradcheck(lambda *a: fastbank.HarmonicBank.apply(*a, 8), inputs)


def test_harmonic_bank_gradcheck_buckets_and_chunks(monkeypatch):
    """Frames with 0..20 live partials go through different buckets (8, 16, 20); a tiny chunk size makes
    every bucket loop over several chunks. Muted partials are structural zeros (the mask is part of
    the function, as in the synthesizer, where the Nyquist mask multiplies the amplitudes)."""
    monkeypatch.setattr(fastbank, "CHUNK_ELEMENTS", 8)
    hop, active = 4, [3, 20, 0, 17, 8, 1, 16]
    theta0, omega, domega, amp0, amp1, keep = _bank_inputs(len(active), 20, hop, seed=1, active=active)
    order, chunks = fastbank.plan(amp0, amp1, hop)
    assert sorted({size for *_, size in chunks}) == [8, 16, 20] and len(chunks) == len(order) == 6
    assert order.tolist() == [0, 4, 5, 6, 1, 3]  # needs 8 8 8 16 20 20; silent frame 2 skipped
    inputs = tuple(t.requires_grad_() for t in (theta0, omega, domega, amp0, amp1))
    assert torch.autograd.gradcheck(
        lambda t0, w, dw, a0, a1: fastbank.HarmonicBank.apply(t0, w, dw, a0 * keep, a1 * keep, hop), inputs)


def test_harmonic_bank_equals_direct_formula_with_buckets(monkeypatch):
    monkeypatch.setattr(fastbank, "CHUNK_ELEMENTS", 64 * 40)  # a few frames per chunk
    M, K, hop = 120, 100, 64
    active = np.random.default_rng(0).integers(0, K + 1, M)
    t0, w, dw, a0, a1, _ = _bank_inputs(M, K, hop, seed=2, dtype=torch.float64, active=active)
    y = fastbank.HarmonicBank.apply(*(t.float() for t in (t0, w, dw, a0, a1)), hop).double().numpy()
    assert len({size for *_, size in fastbank.plan(a0, a1, hop)[1]}) > 3
    assert np.abs(y - _direct_formula(t0, w, dw, a0, a1, hop)).max() < 1e-4


def test_harmonic_bank_renders_bfloat16():
    M, K, hop = 6, 5, 16
    t0, w, dw, a0, a1, _ = _bank_inputs(M, K, hop, seed=6, dtype=torch.float64, active=[5, 0, 3, 5, 1, 2])
    ref = _direct_formula(t0, w, dw, a0, a1, hop)
    y = fastbank.HarmonicBank.apply(*(t.to(torch.bfloat16) for t in (t0, w, dw, a0, a1)), hop)
    assert y.dtype == torch.bfloat16
    assert np.abs(y.double().numpy() - ref).max() < 0.05 * np.abs(ref).max()  # bf16 phases: ~3 digits


def test_float32_bank_matches_float64():
    """Training runs the bank in float32: value and gradients must agree with float64."""
    M, K, hop = 60, 24, 64
    active = np.random.default_rng(1).integers(0, K + 1, M)
    inputs64 = _bank_inputs(M, K, hop, seed=4, dtype=torch.float64, active=active)[:5]
    w = torch.randn(M, hop, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = []
    for dtype in (torch.float32, torch.float64):
        leaves = [t.to(dtype).clone().requires_grad_() for t in inputs64]
        y = fastbank.HarmonicBank.apply(*leaves, hop)
        (y * w.to(dtype)).sum().backward()
        results.append([y.detach().double()] + [t.grad.double() for t in leaves])
    for got, ref in zip(*results):
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_bank_equals_readable_audio_rate_bank(dtype):
    """HarmonicSynthesizer with fastbank (default) against the readable spec (fast=False): audio, final
    phase and the gradients of a random projection of the audio w.r.t. amplitude, distribution and log B,
    with an initial phase, a stiff string, and f0 gliding over 4 octaves so partials cross Nyquist."""
    g = torch.Generator().manual_seed(0)
    B, Fr, K = 2, 80, 40
    f0 = (100 * 2 ** torch.linspace(0, 4, Fr)).expand(B, Fr)[..., None].to(dtype)
    f0 = f0 * (1 + 0.01 * torch.rand(B, Fr, 1, generator=g, dtype=dtype))
    amp, dist = torch.rand(B, Fr, 1, generator=g) + 0.1, torch.rand(B, Fr, K, generator=g) + 0.01
    phase0, proj = torch.rand(B, K, generator=g) * 6, torch.randn(B, Fr * HOP, generator=g)
    out = []
    for fast in (True, False):
        hs = synth.HarmonicSynthesizer(K, SR, HOP, True, 1e-4, fast=fast).to(dtype)
        a, d = amp.to(dtype).clone().requires_grad_(), dist.to(dtype).clone().requires_grad_()
        y, final = hs(a, d, f0, initial_phase=phase0, return_phase=True)
        (y * proj.to(dtype)).sum().backward()
        out.append([y.detach(), final, a.grad, d.grad, hs.log_inharmonicity.grad])
    assert (out[1][2] != 0).all()  # the spec's gradients are real numbers to compare against
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}[dtype]
    for name, got, want in zip(("audio", "phase", "amplitude", "distribution", "log B"), *out):
        assert (got - want).abs().max() <= tol * want.abs().max(), name


def test_harmonic_synth_equals_naive_audio_rate_reference():
    """Random smooth f0 (100..3000 Hz, so many frames need few partials) and random distributions:
    the frame-wise bank must equal summing every partial at audio rate (frequency and amplitude
    linearly interpolated between frames, phase = 2*pi * integral of frequency)."""
    rng = np.random.default_rng(5)
    Fr, K = 100, 60
    f0 = np.exp(np.log(100.0) + np.cumsum(rng.normal(0, 0.08, Fr)))
    f0 = np.clip(f0 * 3000.0 / f0.max(), 100.0, 3000.0)
    amplitude = rng.uniform(0.2, 1.0, Fr)
    dist = rng.uniform(0.01, 1.0, (Fr, K))
    hs = make_harmonic(K, b=2e-4)
    y = render(hs, f0, amplitude, dist)
    ratios = hs.ratios().double()
    amps = synth.harmonic_amplitudes(torch.tensor(amplitude)[None, :, None], torch.tensor(dist)[None],
                                     torch.tensor(f0)[None, :, None], ratios, SR)[0].numpy()  # [F, K]
    assert (amps == 0).any(axis=1).mean() > 0.3  # the bucket path is really exercised
    # what is checked here is the frame-wise, bucketed rendering against plain audio-rate summation
    f_hz = f0[:, None] * hs.ratios().detach().double().numpy()  # [F, K]
    n = np.arange(Fr * HOP)
    frame_n = np.arange(Fr) * HOP
    ref = np.zeros(len(n))
    for k in range(K):
        phase = trapz_phase(np.interp(n, frame_n, f_hz[:, k]))
        ref += np.interp(n, frame_n, amps[:, k]) * np.sin(phase)
    assert np.abs(y - ref).max() < 1e-4
    hs.fast = False  # the readable audio-rate bank against the same numpy oracle
    assert np.abs(render(hs, f0, amplitude, dist) - ref).max() < 1e-4


# ------------------------------------------------------------------------------------------------
# FilteredNoiseSynthesizer
# ------------------------------------------------------------------------------------------------
N_BANDS = 65
BAND_HZ = np.linspace(0, NYQ, N_BANDS)


def _shape(name: str) -> np.ndarray:
    if name == "lowpass":
        return 1.0 / np.sqrt(1 + (BAND_HZ / 1500.0) ** 8)
    if name == "bandpass":
        return np.exp(-0.5 * ((BAND_HZ - 3000.0) / 600.0) ** 2) + 1e-3
    rng = np.random.default_rng(7)  # random smooth
    return np.convolve(rng.uniform(0, 1, N_BANDS + 8), np.hanning(9) / np.hanning(9).sum(), "valid")


def _noise(mags: np.ndarray, Fr: int, seed: int = 0):
    """Constant band magnitudes [N] for Fr frames -> (output, white input) float64 numpy."""
    g = torch.Generator().manual_seed(seed)
    white = torch.rand(1, Fr * HOP, generator=g) * 2 - 1
    m = torch.tensor(mags, dtype=torch.float32).expand(1, Fr, -1)
    out = synth.FilteredNoiseSynthesizer(len(mags), HOP)(m, white)
    return out[0].double().numpy(), white[0].double().numpy()


@pytest.mark.parametrize("shape", ["lowpass", "bandpass", "random_smooth"])
def test_noise_long_term_spectrum_follows_band_magnitudes(shape):
    mags = _shape(shape)
    out, _ = _noise(mags, Fr=750)  # 3 s
    assert out.shape == (750 * HOP,)
    f, psd = scipy.signal.welch(out, SR, nperseg=512)
    requested = np.interp(f, BAND_HZ, mags ** 2)
    r = np.corrcoef(requested, psd)[0, 1]
    assert r >= 0.9, r
    # the level too: white uniform noise has PSD (1/3) / (SR/2) per Hz (one-sided)
    ratio = psd.sum() / (requested.sum() * (1 / 3) / NYQ)
    assert 0.8 < ratio < 1.2, ratio


def test_noise_time_varying_bands_switch_on_the_right_frame():
    """Silent bands for frames < 50, flat (all ones = identity) from frame 50: frame f filters the noise
    samples [f*hop, (f+1)*hop), and the filter delay is removed."""
    Fr = 100
    g = torch.Generator().manual_seed(0)
    white = torch.rand(2, Fr * HOP, generator=g) * 2 - 1
    m = torch.zeros(2, Fr, N_BANDS)
    m[:, 50:] = 1.0
    out = synth.FilteredNoiseSynthesizer(N_BANDS, HOP)(m, white)
    assert out.shape == (2, Fr * HOP)
    assert out[:, :50 * HOP].abs().max() < 1e-6
    assert torch.allclose(out[:, 50 * HOP:], white[:, 50 * HOP:], atol=1e-5)


def test_noise_delay_is_compensated():
    """Flat magnitudes give an impulse at lag 0 (output = input); a lowpass is zero-phase: the
    input/output cross-correlation peaks at lag 0 and is symmetric."""
    out, white = _noise(np.ones(N_BANDS), Fr=200)
    assert np.abs(out - white).max() < 1e-5
    out, white = _noise(_shape("lowpass"), Fr=500, seed=1)
    lags = np.arange(-100, 101)
    xc = np.array([np.dot(out[max(0, l): len(out) + min(0, l)], white[max(0, -l): len(white) - max(0, l)])
                   for l in lags])
    assert lags[np.argmax(xc)] == 0
    assert np.abs(xc - xc[::-1]).max() < 0.05 * xc.max()


def test_noise_filter_is_linear_phase():
    """The FIR must be symmetric about its delay (sample L/2) for the delay to be exactly L/2."""
    mags = torch.rand(4, N_BANDS, generator=torch.Generator().manual_seed(0))
    ir = synth.noise_filter_ir(mags)
    L = ir.shape[-1]
    assert L == 2 * (N_BANDS - 1) and synth.FilteredNoiseSynthesizer(N_BANDS, HOP).delay == L // 2
    assert torch.allclose(ir[:, 1: L // 2], ir[:, L // 2 + 1:].flip(-1), atol=1e-7)
    flat = synth.noise_filter_ir(torch.ones(N_BANDS))
    expect = torch.zeros(L)
    expect[L // 2] = 1.0
    assert torch.allclose(flat, expect, atol=1e-6)


def test_noise_draws_its_own_noise_when_none_given():
    out = synth.FilteredNoiseSynthesizer(N_BANDS, HOP)(torch.full((3, 20, N_BANDS), 0.5))
    assert out.shape == (3, 20 * HOP) and torch.isfinite(out).all() and out.abs().max() <= 0.5 + 1e-5
    assert not torch.allclose(out[0], out[1])


# ------------------------------------------------------------------------------------------------
# Reverb
# ------------------------------------------------------------------------------------------------
def _reverb_with_ir(ir: np.ndarray) -> synth.Reverb:
    rv = synth.Reverb(seconds=len(ir) / SR, sample_rate=SR)
    assert rv.ir.shape[0] == len(ir)
    with torch.no_grad():
        rv.ir.copy_(torch.tensor(ir, dtype=torch.float32))
    return rv


def test_reverb_single_tap_is_dry_plus_delayed_copy():
    L, d, gain = 800, 137, 0.5
    ir = np.zeros(L)
    ir[d] = gain
    ir[0] = 3.0  # the first sample is always forced to 0: the direct sound is the dry path only
    rv = _reverb_with_ir(ir)
    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = rv(x)
    expect = x.clone()
    expect[:, d:] += gain * x[:, :-d]
    assert y.shape == x.shape
    assert torch.allclose(y, expect, atol=1e-5)


def test_reverb_streaming_with_tail_equals_full_convolution():
    rng = np.random.default_rng(0)
    L = 800
    ir = rng.normal(0, 0.1, L) * np.exp(-np.arange(L) / 200)
    rv = _reverb_with_ir(ir)
    wet_ir = ir.copy()
    wet_ir[0] = 0.0
    x = rng.uniform(-1, 1, (2, 5000))
    full = np.stack([np.convolve(row, wet_ir) for row in x])  # [2, T + L - 1]
    expect = x + full[:, :5000]
    pieces, tail, start = [], None, 0
    with torch.no_grad():
        assert torch.allclose(rv(torch.tensor(x, dtype=torch.float32)).double(),
                              torch.tensor(expect), atol=1e-5)
        for size in (300, 64, 1000, 1, 2500, 1135):  # chunks shorter and longer than the IR
            chunk = torch.tensor(x[:, start: start + size], dtype=torch.float32)
            y, tail = rv(chunk, tail, return_tail=True)
            assert y.shape == chunk.shape and tail.shape == (2, L - 1)
            pieces.append(y)
            start += size
    assert start == 5000
    assert np.abs(torch.cat(pieces, 1).double().numpy() - expect).max() < 1e-5
    assert np.abs(tail.double().numpy() - full[:, 5000:]).max() < 1e-5  # what is still to ring out


def test_fast_fft_size_is_the_smallest_5_smooth_length():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1
    for n in (2, 7, 97, 191, 1000, 79999, 80001):
        size = synth.fast_fft_size(n)
        assert size >= n and smooth(size)
        assert not any(smooth(m) for m in range(n, size)), n  # brute force: nothing smaller qualifies
    assert synth.fast_fft_size(64000 + 16000 - 1) == 80000


def test_fft_convolve_equals_numpy_convolve():
    g = np.random.default_rng(0)
    for T, L in ((1000, 37), (64000, 16000), (5, 12)):
        x, k = g.standard_normal((2, T)), g.standard_normal(L)
        got = synth.fft_convolve(torch.tensor(x), torch.tensor(k)).numpy()
        want = np.stack([np.convolve(row, k) for row in x])
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-9 * np.abs(want).max() * np.sqrt(L)


def test_reverb_follows_ir_changes():
    """An optimizer step or load_state_dict changes the IR in place; the output must follow, with and
    without autograd (oracle: numpy convolution with the current IR)."""
    rng = np.random.default_rng(1)
    L, T = 300, 2000
    rv = _reverb_with_ir(rng.normal(0, 0.1, L))
    x = torch.tensor(rng.uniform(-1, 1, (1, T)), dtype=torch.float32)

    def expected():
        wet = rv.ir.detach().double().numpy().copy()
        wet[0] = 0.0
        return x.double().numpy() + np.convolve(x[0].double().numpy(), wet)[:T][None]

    with torch.no_grad():
        first = rv(x).double().numpy()
        assert np.abs(first - expected()).max() < 1e-5
    opt = torch.optim.SGD(rv.parameters(), lr=1.0)
    (rv(x) ** 2).mean().backward()  # with autograd: no cache involved
    opt.step()  # changes the IR in place
    with torch.no_grad():
        assert np.abs(rv(x).double().numpy() - expected()).max() < 1e-5
        assert np.abs(rv(x).double().numpy() - first).max() > 1e-3
    rv.load_state_dict({"ir": torch.tensor(rng.normal(0, 0.1, L), dtype=torch.float32)})
    with torch.inference_mode():
        assert np.abs(rv(x).double().numpy() - expected()).max() < 1e-5


@pytest.mark.parametrize("W,hop", [(191, 64), (128, 64), (10, 4), (3, 5)])
def test_overlap_add_equals_a_plain_loop(W, hop):
    frames = torch.randn(2, 9, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = torch.zeros(2, 8 * hop + W, dtype=torch.float64)
    for f in range(9):
        want[:, f * hop: f * hop + W] += frames[:, f]
    torch.testing.assert_close(synth.overlap_add(frames, hop), want)


def test_audio_rate_bank_against_analytic_chirp():
    """One partial, constant amplitude, f0 gliding linearly 200 -> 300 Hz: the readable bank must follow
    sin(2 pi (f_a t + rate t^2 / 2)) during the glide (phase = integral of the frequency)."""
    n_frames = 50
    f0 = torch.linspace(200.0, 300.0, n_frames, dtype=torch.float64)[None, :, None]
    y = synth.harmonic_bank_audio_rate(torch.ones(1, n_frames, 1, dtype=torch.float64), f0,
                                       torch.ones(1, dtype=torch.float64), SR, HOP)
    glide = (n_frames - 1) * HOP
    t = np.arange(glide) / SR
    expected = np.sin(2 * np.pi * (200.0 * t + 100.0 / (glide / SR) * t * t / 2))
    np.testing.assert_allclose(y[0, :glide].numpy(), expected, atol=1e-9)


def test_upsample_linear_holds_last_frame():
    x = torch.tensor([[[0.0], [1.0], [3.0]]])  # [1, 3, 1]
    y = synth.upsample_linear(x, 4)[0, :, 0]
    np.testing.assert_allclose(y.numpy(), [0, .25, .5, .75, 1, 1.5, 2, 2.5, 3, 3, 3, 3])
