"""Differentiable DSP: harmonic oscillator bank, filtered noise, reverb.

Frame-rate controls in, audio out. Conventions used throughout:

* `B` batch, `F` frames, `hop` samples per frame (64 at 16 kHz = 250 frames/s), `T = F * hop` samples,
  `K` partials, `N` noise bands.
* Control value `x[f]` belongs to sample `f * hop`; between two frames controls are interpolated
  linearly, so amplitudes and frequency glide smoothly (no steps, no clicks). After the last frame the
  last value is held.

This file holds the readable definitions. `harmonic_bank_audio_rate` is the harmonic bank as a spec:
upsample to audio rate, integrate phase, sum sines. It keeps several `[B, T, K]` tensors (several GB at
batch 16 x 4 s x 100 partials), so `HarmonicSynthesizer` renders with `fastbank.harmonic_bank` by default,
which computes the same sum frame by frame without ever storing `[B, T, K]` (tests compare the two, values
and gradients).
"""
from __future__ import annotations

import math

import scipy.fft
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastbank

TWO_PI = 2.0 * math.pi


def exp_sigmoid(x: torch.Tensor, exponent: float = 10.0, max_value: float = 2.0,
                threshold: float = 1e-7) -> torch.Tensor:
    """Positive output nonlinearity of DDSP: `max_value * sigmoid(x) ** ln(exponent) + threshold`.

    Maps raw network outputs to amplitudes in (threshold, max_value + threshold]; the log-like slope
    makes small amplitudes easy to reach.
    """
    return max_value * torch.sigmoid(x) ** math.log(exponent) + threshold


def stiff_string_ratios(n_harmonics: int, inharmonicity: torch.Tensor) -> torch.Tensor:
    """Frequency ratios of a stiff string's partials: `k * sqrt(1 + B k^2)` for k = 1..K.

    Args:
        inharmonicity: scalar tensor B >= 0 (dimensionless). B = 0 gives exact harmonics.
    Returns:
        [K] float tensor, partial frequency / f0.
    """
    k = torch.arange(1, n_harmonics + 1, device=inharmonicity.device, dtype=inharmonicity.dtype)
    return k * torch.sqrt(1.0 + inharmonicity * k * k)


def next_frame(x: torch.Tensor) -> torch.Tensor:
    """`x[:, f+1]` for every frame f, holding the last frame: [B, F, ...] -> [B, F, ...]."""
    return torch.cat([x[:, 1:], x[:, -1:]], dim=1)


def nyquist_mask(f0_hz: torch.Tensor, ratios: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """1 where a partial stays below Nyquist over the whole frame, else 0.

    Args:
        f0_hz: [B, F, 1] Hz. ratios: [K].
    Returns:
        [B, F, K] float mask. A frame is judged by the larger of its own and the next frame's f0, since
        the frequency glides between them: no partial ever reaches Nyquist inside the frame.
    """
    f0_max = torch.maximum(f0_hz, next_frame(f0_hz))
    return (f0_max * ratios < sample_rate / 2).to(f0_hz.dtype)


def harmonic_amplitudes(amplitude: torch.Tensor, distribution: torch.Tensor, f0_hz: torch.Tensor,
                        ratios: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """Per-partial amplitudes: overall amplitude times a distribution renormalised below Nyquist.

    Control point f is where frame f-1 ends and frame f starts; the amplitude ramps linearly between
    control points. A partial gets a non-zero amplitude at f only if it stays below Nyquist in *both*
    frames (f-1 and f), so it never sounds at or above Nyquist while it fades in or out, whichever way
    f0 glides (judging only frame f let a partial fade in from above Nyquist on a downward glide).

    Args:
        amplitude: [B, F, 1] linear amplitude (> 0). distribution: [B, F, K] (> 0).
        f0_hz: [B, F, 1] Hz. ratios: [K] partial frequency / f0.
    Returns:
        [B, F, K] linear amplitudes; partials at or above Nyquist are exactly 0 and the remaining
        distribution sums to 1 in every frame.
    """
    mask = nyquist_mask(f0_hz, ratios, sample_rate)
    mask = mask * torch.cat([mask[:, :1], mask[:, :-1]], dim=1)  # frame f-1 too (first frame: held)
    distribution = distribution * mask
    distribution = distribution / distribution.sum(-1, keepdim=True).clamp_min(1e-12)
    return amplitude * distribution


def fundamental_frequency(f0_hz: torch.Tensor, sample_rate: float):
    """Angular frequency of the fundamental at each frame and its change to the next frame.

    Float64, so the running phase does not drift (float32 frequencies drift ~1e-4 rad/s). Partial k runs
    at `ratios[k]` times these (`stiff_string_ratios`).
    Args: f0_hz [B, F, 1] Hz. Returns (omega, domega) [B, F, 1] float64 rad/sample.
    """
    omega = (TWO_PI / sample_rate) * f0_hz.double()
    return omega, next_frame(omega) - omega


def wrap_phase(x: torch.Tensor) -> torch.Tensor:
    """Phase wrapped to [0, 2pi) (rad): x - 2pi floor(x / 2pi); gradient 1."""
    return x - TWO_PI * torch.floor(x * (1.0 / TWO_PI))


def frame_phases(omega: torch.Tensor, domega: torch.Tensor, ratios: torch.Tensor, hop: int,
                 initial_phase: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact phase of every partial at the first sample of every frame.

    Inside frame f the fundamental's angular frequency glides linearly from `omega[f]` to
    `omega[f] + domega[f]` (rad/sample), so its phase advances by the exact integral
    `omega*hop + domega*hop/2` over the frame (phase = 2pi * integral of the piecewise-linear frequency,
    as an analytic chirp). Partial k always runs at `ratios[k]` times the fundamental's frequency, so its
    phase is `ratios[k]` times the fundamental's running phase (plus its initial phase): one float64
    running sum per frame ([B, F, 1]), not one per partial, then wrapped to [0, 2pi).

    Args:
        omega, domega: [B, F, 1] rad/sample (`fundamental_frequency`). ratios: [K].
        initial_phase: [B, K] rad (phase of each partial at sample 0) or None.
    Returns:
        (theta0 [B, F, K] float64 rad, final_phase [B, K] float64 rad at sample F*hop).
    """
    advance = omega.double() * hop + domega.double() * (hop / 2.0)  # [B, F, 1]
    csum = torch.cumsum(advance, dim=1)
    before = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], dim=1)  # fundamental at frame starts
    ratios = ratios.double()
    theta0, final = before * ratios, csum[:, -1] * ratios  # [B, F, K], [B, K]
    if initial_phase is not None:
        theta0, final = theta0 + initial_phase.double()[:, None], final + initial_phase.double()
    return wrap_phase(theta0), wrap_phase(final)


def upsample_linear(x: torch.Tensor, hop: int) -> torch.Tensor:
    """Frame rate to audio rate: [B, F, C] -> [B, F*hop, C]. Frame f's value sits at sample f*hop, values
    in between are linear, and the last frame is held for its `hop` samples."""
    B, Fr, C = x.shape
    t = torch.arange(hop, device=x.device, dtype=x.dtype)[:, None] / hop  # [hop, 1]
    y = x[:, :, None] + (next_frame(x) - x)[:, :, None] * t  # [B, F, hop, C]
    return y.reshape(B, Fr * hop, C)


def harmonic_bank_audio_rate(amplitudes: torch.Tensor, f0_hz: torch.Tensor, ratios: torch.Tensor,
                             sample_rate: float, hop: int, initial_phase: torch.Tensor | None = None):
    """The harmonic bank, as a spec: every partial's sine summed at audio rate.

    Amplitudes and f0 are upsampled linearly (`upsample_linear`); the fundamental's phase is the running
    integral of its angular frequency (trapezoid rule over samples: exact for a linear glide), in float64
    (float32 drifts); partial k's phase is `ratios[k]` times it, plus its initial phase.
    Args:
        amplitudes: [B, F, K] linear (`harmonic_amplitudes`). f0_hz: [B, F, 1] Hz. ratios: [K].
        initial_phase: [B, K] rad at sample 0, or None (zeros).
    Returns:
        audio [B, F*hop] = sum_k a_k(n) sin(phase_k(n)). Keeps several [B, T, K] tensors for autograd.
    """
    omega = upsample_linear((TWO_PI / sample_rate) * f0_hz.double(), hop)  # [B, T, 1] rad/sample
    phase = torch.cumsum(omega, dim=1) - 0.5 * (omega + omega[:, :1])  # integral from sample 0
    phase = phase * ratios.double()  # [B, T, K]
    if initial_phase is not None:
        phase = phase + initial_phase.double()[:, None]
    amps = upsample_linear(amplitudes, hop)
    return (amps * torch.sin(wrap_phase(phase).to(amps.dtype))).sum(-1)


class HarmonicSynthesizer(nn.Module):
    """Additive synthesis of a stiff string: K partials at `k * f0 * sqrt(1 + B k^2)`.

    B (inharmonicity) is a learnable scalar, kept >= 0 by learning log B; it starts near 0
    (`initial_inharmonicity`). Partials that would reach Nyquist are muted and the harmonic
    distribution is renormalised over the audible ones. `fast` (default) renders with
    `fastbank.harmonic_bank`; `fast=False` with the readable `harmonic_bank_audio_rate` (same audio,
    far more memory).
    """

    def __init__(self, n_harmonics: int = 100, sample_rate: int = 16000, hop: int = 64,
                 learn_inharmonicity: bool = True, initial_inharmonicity: float = 1e-6, fast: bool = True):
        super().__init__()
        self.n_harmonics, self.sample_rate, self.hop, self.fast = n_harmonics, sample_rate, hop, fast
        log_b = torch.tensor(math.log(max(initial_inharmonicity, 1e-12)))
        self.log_inharmonicity = nn.Parameter(log_b, requires_grad=learn_inharmonicity)

    @property
    def inharmonicity(self) -> torch.Tensor:
        """B >= 0, scalar tensor."""
        return self.log_inharmonicity.exp()

    def ratios(self) -> torch.Tensor:
        """[K] partial frequency / f0 for the current B."""
        return stiff_string_ratios(self.n_harmonics, self.inharmonicity)

    def forward(self, amplitude: torch.Tensor, distribution: torch.Tensor, f0_hz: torch.Tensor,
                initial_phase: torch.Tensor | None = None, return_phase: bool = False):
        """Render audio.

        Args:
            amplitude: [B, F, 1] overall linear amplitude (> 0).
            distribution: [B, F, K] relative partial amplitudes (> 0; renormalised here).
            f0_hz: [B, F, 1] fundamental in Hz.
            initial_phase: [B, K] phase of each partial at sample 0 (rad), e.g. from a previous chunk.
            return_phase: also return the phase at sample F*hop ([B, K] float64), for chunked rendering.
        Returns:
            audio [B, F*hop] (and final phase).
        """
        ratios = self.ratios()
        amps = harmonic_amplitudes(amplitude, distribution, f0_hz, ratios.to(f0_hz.dtype), self.sample_rate)
        omega, domega = fundamental_frequency(f0_hz, self.sample_rate)  # [B, F, 1] float64
        theta0, final_phase = frame_phases(omega, domega, ratios, self.hop, initial_phase)
        if self.fast:
            dt, r = amps.dtype, ratios.to(amps.dtype)
            audio = fastbank.harmonic_bank(theta0.to(dt), omega.to(dt) * r, domega.to(dt) * r, amps,
                                           next_frame(amps), self.hop)
        else:
            audio = harmonic_bank_audio_rate(amps, f0_hz, ratios, self.sample_rate, self.hop, initial_phase)
        return (audio, final_phase) if return_phase else audio


def noise_filter_ir(magnitudes: torch.Tensor) -> torch.Tensor:
    """Linear-phase FIR filters from band magnitudes.

    Args:
        magnitudes: [..., N] linear gains at N frequencies spaced evenly from 0 Hz to Nyquist.
    Returns:
        [..., L] impulse responses, L = 2 (N - 1): zero-phase response made causal by a shift of L/2
        samples and tapered with a Hann window centred on that sample (periodic Hann of length L:
        symmetric about L/2), so the filter is exactly linear-phase with a delay of L/2 samples.
    """
    ir = torch.fft.irfft(magnitudes, dim=-1)  # zero-phase, [..., L]
    L = ir.shape[-1]
    ir = torch.roll(ir, L // 2, dims=-1)
    window = torch.hann_window(L, periodic=True, device=ir.device, dtype=ir.dtype)
    return ir * window


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Overlap-add frames: [B, F, W] -> [B, (F-1)*hop + W]; frame f starts at sample f*hop."""
    B, Fr, W = frames.shape
    n = (Fr - 1) * hop + W
    return F.fold(frames.transpose(1, 2), (1, n), kernel_size=(1, W), stride=(1, hop)).reshape(B, n)


class FilteredNoiseSynthesizer(nn.Module):
    """Time-varying filtered white noise (the breathy, plucky, non-periodic part).

    Each frame's `hop` samples of uniform white noise are convolved with that frame's linear-phase FIR
    (from `noise_filter_ir`) and overlap-added; the filter delay is removed so noise lines up with
    the harmonic part.
    """

    def __init__(self, n_bands: int = 65, hop: int = 64):
        super().__init__()
        self.n_bands, self.hop = n_bands, hop

    @property
    def delay(self) -> int:
        """Filter delay in samples (half the FIR length)."""
        return self.n_bands - 1

    def forward(self, magnitudes: torch.Tensor, white_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            magnitudes: [B, F, N] linear band gains (0 Hz .. Nyquist).
            white_noise: [B, F*hop] in [-1, 1], or None to draw fresh noise.
        Returns:
            [B, F*hop] audio.
        """
        B, Fr, _ = magnitudes.shape
        T = Fr * self.hop
        if white_noise is None:
            white_noise = torch.rand(B, T, device=magnitudes.device, dtype=magnitudes.dtype) * 2 - 1
        n = self.hop + 2 * (self.n_bands - 1) - 1  # linear convolution of hop samples with the FIR
        n_fft = fast_fft_size(n)
        spectrum = torch.fft.rfft(white_noise.reshape(B, Fr, self.hop), n_fft)
        spectrum = spectrum * torch.fft.rfft(noise_filter_ir(magnitudes), n_fft)
        out = overlap_add(torch.fft.irfft(spectrum, n_fft)[..., :n], self.hop)
        return out[:, self.delay: self.delay + T]


def fast_fft_size(n: int) -> int:
    """Smallest FFT length >= n whose only prime factors are 2, 3 and 5 (as fast as a power of two in
    torch's FFTs and usually much shorter: 80,000 instead of 131,072 for the reverb of a 4 s crop)."""
    return scipy.fft.next_fast_len(max(2, n), real=True)


def fft_convolve(signal: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Full linear convolution via FFT: [B, T] * [L] -> [B, T + L - 1]."""
    n = signal.shape[-1] + kernel.shape[-1] - 1
    n_fft = fast_fft_size(n)
    out = torch.fft.irfft(torch.fft.rfft(signal, n_fft) * torch.fft.rfft(kernel, n_fft), n_fft)
    return out[..., :n]


class Reverb(nn.Module):
    """Learnable room: a free impulse response (`seconds` long) added to the dry signal.

    The IR starts as quiet exponentially decaying noise; its first sample is forced to 0 so the direct
    sound is only ever the dry path (DDSP's convention).
    """

    def __init__(self, seconds: float = 1.0, sample_rate: int = 16000, initial_gain: float = 1e-3,
                 initial_decay_s: float = 0.25):
        super().__init__()
        n = max(2, int(round(seconds * sample_rate)))
        t = torch.arange(n) / sample_rate
        g = torch.Generator().manual_seed(0)
        ir = torch.randn(n, generator=g) * initial_gain * torch.exp(-t / initial_decay_s)
        self.ir = nn.Parameter(ir)

    def wet_ir(self) -> torch.Tensor:
        """[L] impulse response of the wet path (first sample 0)."""
        return torch.cat([self.ir.new_zeros(1), self.ir[1:]])

    def forward(self, audio: torch.Tensor, tail: torch.Tensor | None = None, return_tail: bool = False):
        """Args:
            audio: [B, T] dry audio. tail: [B, L-1] reverb tail carried from a previous chunk.
        Returns:
            [B, T] dry + wet (and the new tail [B, L-1] when `return_tail`).
        """
        wet = fft_convolve(audio, self.wet_ir().to(audio.dtype))  # [B, T + L - 1]
        T = audio.shape[-1]
        if tail is not None:  # wet is T + L - 1 long, never shorter than the L - 1 tail
            n = tail.shape[-1]
            wet = torch.cat([wet[:, :n] + tail, wet[:, n:]], dim=1)
        out = audio + wet[:, :T]
        return (out, wet[:, T:]) if return_tail else out  # new tail: exactly L - 1 samples
