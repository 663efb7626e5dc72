"""Multi-resolution STFT loss (DDSP's SpectralLoss definition).

For each FFT size n in (2048, 1024, 512, 256, 128, 64): Hann window of n samples, hop n/4 (75 %
overlap), centred frames (reflect padding), magnitude |X|. The loss is, summed over sizes,

    mean |S_pred - S_target|  +  mean |log S_pred - log S_target|

with magnitudes floored at `eps` = 1e-7 before the log (max(|X|, eps), the same value as auraloss's
sqrt(max(|X|^2, eps^2)); the floor keeps the gradient finite at exact zeros). Compared with auraloss.freq.MultiResolutionSTFTLoss
(w_sc=0, w_lin_mag=1, w_log_mag=1, eps=eps^2, same sizes/hops/windows), the only difference is the
reduction over resolutions: DDSP sums the scales, auraloss averages them, so this loss equals
auraloss's times the number of scales (tests/test_loss.py checks it).

Memory: autograd would keep every scale's complex STFT, magnitudes and logs of the prediction until
backward (~0.6 GB at batch 16 x 4 s). When a gradient is needed, the loss instead runs forward *and*
backward one scale (and a few batch items) at a time inside its own forward and keeps only
d loss / d input ([B, T]); the outer backward just scales it. Same arithmetic and result (to float
rounding), with only one piece's intermediates alive at a time: the training step's peak RSS drops by
~0.5 GB.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FFT_SIZES = (2048, 1024, 512, 256, 128, 64)


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, eps: float) -> torch.Tensor:
    """|STFT| of [B, T] audio -> [B, frames, n_fft//2 + 1], floored at eps.

    Exactly `torch.stft(audio, n_fft, hop, window=window, center=True, pad_mode="reflect").abs()`
    (transposed), computed as reflect pad -> `unfold` -> window -> rfft: the same numbers, and
    ~20 % faster forward+backward than torch.stft, whose framing backward is a generic scatter.
    """
    padded = F.pad(audio[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    spec = torch.fft.rfft(padded.unfold(-1, n_fft, hop) * window, dim=-1)
    return spec.abs().clamp_min(eps)  # == sqrt(max(|X|^2, eps^2)); ~17 % faster than via the power


class MultiResolutionSTFTLoss(nn.Module):
    """Sum over FFT sizes of L1(linear magnitude) + L1(log magnitude). Inputs [B, T] -> scalar."""

    def __init__(self, fft_sizes=FFT_SIZES, overlap: float = 0.75, mag_weight: float = 1.0,
                 logmag_weight: float = 1.0, eps: float = 1e-7):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        self.hops = tuple(max(1, int(n * (1 - overlap))) for n in self.fft_sizes)
        self.mag_weight, self.logmag_weight, self.eps = mag_weight, logmag_weight, eps
        for n in self.fft_sizes:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def scale_loss(self, pred: torch.Tensor, target: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
        """The loss at one FFT size: L1 of linear plus L1 of log magnitude. [B, T] x2 -> scalar."""
        window = getattr(self, f"window_{n_fft}").to(pred.dtype)
        p = stft_magnitude(pred, n_fft, hop, window, self.eps)
        t = stft_magnitude(target, n_fft, hop, window, self.eps)
        total = pred.new_zeros(())
        if self.mag_weight:
            total = total + self.mag_weight * (p - t).abs().mean()
        if self.logmag_weight:
            total = total + self.logmag_weight * (p.log() - t.log()).abs().mean()
        return total

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: [B, T] audio. Returns a scalar loss (differentiable in both)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad):
            return _ScaleByScale.apply(pred, target, self)
        return sum(self.scale_loss(pred, target, n, hop) for n, hop in zip(self.fft_sizes, self.hops))


class _ScaleByScale(torch.autograd.Function):
    """Sum of `loss.scale_loss` over scales whose gradient w.r.t. pred/target is computed in forward,
    scale by scale and a few batch items at a time (see the module docstring); backward returns
    grad_output times that gradient."""

    CHUNK_SAMPLES = 1 << 18  # batch items per piece: 4 of 4 s at 16 kHz (peak ~40 MB instead of ~160)

    @staticmethod
    def forward(ctx, pred, target, loss: MultiResolutionSTFTLoss):
        need = (pred.requires_grad, target.requires_grad)
        leaves = [x.detach().requires_grad_(r) for x, r in zip((pred, target), need)]
        wrt = [x for x in leaves if x.requires_grad]
        grads = [torch.zeros_like(x) for x in wrt]
        total = pred.new_zeros(())
        B, T = pred.shape
        step = max(1, _ScaleByScale.CHUNK_SAMPLES // max(T, 1))
        with torch.enable_grad():
            for n, hop in zip(loss.fft_sizes, loss.hops):
                for s in range(0, B, step):  # every scale_loss term is a mean over the batch
                    part = [x[s:s + step] for x in leaves]
                    value = loss.scale_loss(part[0], part[1], n, hop) * (part[0].shape[0] / B)
                    for g, d in zip(grads, torch.autograd.grad(value, [x for x in part if x.requires_grad])):
                        g[s:s + step] += d
                    total += value.detach()
        ctx.need = need
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grads = iter(ctx.saved_tensors)
        out = [grad_output * next(grads) if r else None for r in ctx.need]
        return out[0], out[1], None
