"""The harmonic bank, fast: frame by frame, never storing `[B, T, K]`.

Same sum as `synth.harmonic_bank_audio_rate` (the readable spec; tests compare values and gradients),
rearranged so that training at batch 16 x 4 s x 100 partials needs megabytes instead of gigabytes:

* The fundamental's phase is integrated exactly at frame rate (`synth.frame_phases`, float64); inside a
  frame the frequency glides linearly, so a partial's phase is a quadratic in the sample index n and its
  amplitude a linear ramp. Frames are therefore independent.
* Frames are rendered in chunks of about `CHUNK_ELEMENTS` phases; backward recomputes each chunk's sines
  and cosines instead of storing them.
* A frame only renders its partials up to its last non-zero one (partials above Nyquist are muted, so
  high notes need few): frames are sorted by that count and chunked among equals.
"""
from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 20  # phases per chunk (4 MB in float32)
WIDTH = 8  # partial counts are rounded up to a multiple of this (fewer, larger chunks)


def plan(amp0: torch.Tensor, amp1: torch.Tensor, hop: int):
    """Which frames to render, in which order, in which chunks.

    Args: amp0, amp1: [M, K] amplitudes at the start and end of each frame.
    Returns: (order [M'] long: the non-silent frames sorted by the partials they need,
    chunks: list of (start, end, size): positions in `order` and the partial count they render with).
    """
    K = amp0.shape[1]
    live = (amp0 != 0) | (amp1 != 0)
    last = (live * torch.arange(1, K + 1, device=amp0.device)).amax(dim=1)  # last live partial, 0 = silent
    need = ((last + WIDTH - 1) // WIDTH * WIDTH).clamp_max(K)
    need, order = torch.sort(need.cpu(), stable=True)
    order, need = order[need > 0], need[need > 0]  # silent frames render nothing
    sizes, counts = torch.unique_consecutive(need, return_counts=True)
    chunks, start = [], 0
    for size, count in zip(sizes.tolist(), counts.tolist()):
        step = max(1, CHUNK_ELEMENTS // (hop * size))  # frames per chunk
        chunks += [(s, min(s + step, start + count), size) for s in range(start, start + count, step)]
        start += count
    return order.to(amp0.device), chunks


def ramps(hop: int, like: torch.Tensor):
    """basis [3, hop] = (1, n, n^2 / 2hop) and ramp [2, hop] = (1 - n/hop, n/hop), n = 0..hop-1."""
    n = torch.arange(hop, device=like.device, dtype=like.dtype)
    return torch.stack([torch.ones_like(n), n, n * n / (2 * hop)]), torch.stack([1 - n / hop, n / hop])


class HarmonicBank(torch.autograd.Function):
    """y[m, n] = sum_k a[m, k, n] sin(theta[m, k, n]) for frame m and sample n in [0, hop), with

        theta[m, k, n] = theta0[m, k] + omega[m, k] n + domega[m, k] n^2 / (2 hop)
        a[m, k, n]     = amp0[m, k] (1 - n/hop) + amp1[m, k] n/hop.

    Inputs [M, K], output [M, hop]. Partials after a frame's last non-zero amplitude (rounded up to
    WIDTH) are structural zeros: their gradient is returned as 0 (they come from the Nyquist mask).
    """

    @staticmethod
    def forward(ctx, theta0, omega, domega, amp0, amp1, hop: int):
        inputs = (theta0, omega, domega, amp0, amp1)
        ctx.save_for_backward(*inputs)
        ctx.hop = hop
        basis, ramp = ramps(hop, theta0)
        order, chunks = plan(amp0, amp1, hop)
        y = theta0.new_zeros(theta0.shape[0], hop)
        for s, e, size in chunks:
            rows = order[s:e]
            t = [x[rows, :size] for x in inputs]  # each [m, k]
            sines = (torch.stack(t[:3], -1) @ basis).sin_()  # [m, k, hop]
            y[rows] = ((torch.stack(t[3:], 1) @ sines) * ramp).sum(1)  # sum_r ramp_r(n) sum_k amp_r sin
        return y

    @staticmethod
    def backward(ctx, grad_y):
        inputs = ctx.saved_tensors
        hop, wanted = ctx.hop, ctx.needs_input_grad[:5]
        grads = [torch.zeros_like(x) if w else None for x, w in zip(inputs, wanted)]
        basis, ramp = ramps(hop, inputs[0])
        order, chunks = plan(inputs[3], inputs[4], hop)
        for s, e, size in chunks:
            rows = order[s:e]
            t = [x[rows, :size] for x in inputs]
            phase = torch.stack(t[:3], -1) @ basis  # [m, k, hop]
            gw = grad_y[rows][:, None, :] * ramp  # [m, 2, hop]: the gradient split by the two ramps
            parts = [None] * 5
            if any(wanted[3:]):  # dy/d amp_r = ramp_r sin(theta)
                parts[3:] = (gw @ torch.sin(phase).transpose(1, 2)).unbind(1)  # 2 x [m, k]
            if any(wanted[:3]):  # dy/d theta = a cos(theta); d theta/d (theta0, omega, domega) = basis
                gwb = (gw[:, :, None, :] * basis).flatten(1, 2)  # [m, 6, hop]: ramp_r(n) basis_p(n)
                r = (gwb @ phase.cos_().transpose(1, 2)).view(-1, 2, 3, size)  # [m, 2, 3, k]
                parts[:3] = (torch.stack(t[3:], 1)[:, :, None] * r).sum(1).unbind(1)  # 3 x [m, k]
            for grad, part in zip(grads, parts):
                if grad is not None:
                    grad[rows, :size] = part
        return (*grads, None)


def harmonic_bank(theta0, omega, domega, amp0, amp1, hop: int) -> torch.Tensor:
    """Render partials frame by frame (`HarmonicBank`). All inputs [B, F, K]; returns [B, F*hop]."""
    B, Fr, K = theta0.shape
    flat = [x.reshape(B * Fr, K) for x in (theta0, omega, domega, amp0, amp1)]
    return HarmonicBank.apply(*flat, hop).reshape(B, Fr * hop)
