"""Lean layers for CPU training: each equals the plain PyTorch layer it stands for (same parameters,
same state_dict keys, same outputs and gradients; tests/test_model.py compares them) and keeps less for
backward when a model trains on CPU. model.py's decoder (DDSP's RnnFcDecoder) is written with them; on
CUDA, under autocast and without gradients they are PyTorch's own layers.

* `ConcatLinear`, `split_linear`: `nn.Linear` over the concatenation of a list of parts, without making the
  concatenation (autograd keeps the parts, which their producers keep anyway): 62.5 MB for the GRU input
  and 94 MB for out_mlp's at batch 16 x 1000 frames x 512.
* `LeanGRU` (with `GRURecurrence`): `nn.GRU` (one layer, batch first) with its own backward, which keeps
  the input projections and outputs (~130 MB there) where PyTorch's CPU GRU records every gate of every
  frame (343 MB).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_linear(parts, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(torch.cat(parts, -1), weight, bias)` without making the concatenation.

    parts: tensors [..., I_i] with sum(I_i) = weight's in-features; returns [..., O]. Each part meets its
    own columns of the weight through a chain of `addmm`s, so autograd keeps the parts themselves instead
    of a concatenated copy (62.5 MB for the GRU input at batch 16 x 4 s), at the same speed. (Adding in
    place instead would make backward copy the gradient.) Under autocast it concatenates after all: the
    chain would round every partial sum to bfloat16, and autocast keeps bfloat16 copies of the parts anyway.
    """
    if torch.is_autocast_enabled(parts[0].device.type):
        return F.linear(torch.cat(parts, dim=-1), weight, bias)
    lead, out, start = parts[0].shape[:-1], None, 0
    for part in parts:
        w = weight[:, start:start + part.shape[-1]].t()
        flat = part.reshape(-1, part.shape[-1])
        if out is None:
            out = flat @ w if bias is None else torch.addmm(bias, flat, w)
        else:
            out = torch.addmm(out, flat, w)
        start += part.shape[-1]
    if start != weight.shape[1]:
        raise ValueError(f"parts have {start} features in all, the weight takes {weight.shape[1]}")
    return out.view(*lead, weight.shape[0])


class ConcatLinear(nn.Linear):
    """`nn.Linear` applied to a list of parts [..., I_i]: `linear(torch.cat(parts, -1))`, via `split_linear`."""

    def forward(self, parts) -> torch.Tensor:
        return split_linear(parts, self.weight, self.bias)


class GRURecurrence(torch.autograd.Function):
    """The recurrent half of `nn.GRU` (PyTorch's equations and gate order r, z, n) with its own backward.

        r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z),  n = tanh(gi_n + r * gh_n),
        h_t = (1 - z) * n + z * h_{t-1},  where gh = h_{t-1} W_hh^T + b_hh

    Inputs: gi [B, F, 3H] (= x W_ih^T + b_ih for all frames, one matmul outside), h0 [B, H], w_hh [3H, H],
    b_hh [3H]. Output: h for every frame [B, F, H]. Only gi and the outputs are kept for backward; the
    gates are recomputed there frame by frame (one extra [B, H] x [H, 3H] matmul per frame).
    """

    @staticmethod
    def _gates(gi_t, h_prev, w_hh, b_hh):
        H = h_prev.shape[-1]
        gh = torch.addmm(b_hh, h_prev, w_hh.t())  # [B, 3H]
        rz = torch.sigmoid(gi_t[:, :2 * H] + gh[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(torch.addcmul(gi_t[:, 2 * H:], r, gh[:, 2 * H:]))
        return gh, r, z, n

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh):
        B, Fr, _ = gi.shape
        hs = gi.new_empty(B, Fr, h0.shape[-1])
        h = h0
        for t in range(Fr):
            _, _, z, n = GRURecurrence._gates(gi[:, t], h, w_hh, b_hh)
            h = torch.lerp(n, h, z)  # (1 - z) n + z h
            hs[:, t] = h
        ctx.save_for_backward(gi, h0, w_hh, b_hh, hs)
        return hs

    @staticmethod
    def backward(ctx, grad_hs):
        gi, h0, w_hh, b_hh, hs = ctx.saved_tensors
        B, Fr, H3 = gi.shape
        H = H3 // 3
        grad_hs = grad_hs.contiguous()
        grad_gi = torch.empty_like(gi)  # gradient of the gates' pre-activations (input side)
        grad_ghn = torch.empty(B, Fr, H, dtype=gi.dtype, device=gi.device)  # of gh_n (= grad of gi_n * r)
        dh = torch.zeros_like(h0)
        for t in reversed(range(Fr)):
            h_prev = hs[:, t - 1] if t > 0 else h0
            gh, r, z, n = GRURecurrence._gates(gi[:, t], h_prev, w_hh, b_hh)
            dh = dh + grad_hs[:, t]
            dn = dh * (1 - z) * (1 - n * n)  # through h = (1-z) n + z h_prev and tanh
            dz = dh * (h_prev - n) * z * (1 - z)
            dr = dn * gh[:, 2 * H:] * r * (1 - r)
            g = grad_gi[:, t]
            g[:, :H], g[:, H:2 * H], g[:, 2 * H:] = dr, dz, dn
            grad_ghn[:, t] = dn * r
            # d h_prev: direct path (z) + through gh = h_prev W_hh^T (r and z parts share grad_gi's)
            dh = dh * z + g[:, :2 * H] @ w_hh[:2 * H] + grad_ghn[:, t] @ w_hh[2 * H:]
        grad_w = torch.zeros_like(w_hh)
        for b in range(B):  # sum over frames of grad_gh[t]^T h_{t-1}, without a [B, F, H] copy of h_prev
            prev = hs[b, :-1]
            grad_w[:2 * H].addmm_(grad_gi[b, 1:, :2 * H].t(), prev)
            grad_w[2 * H:].addmm_(grad_ghn[b, 1:].t(), prev)
        grad_w[:2 * H].addmm_(grad_gi[:, 0, :2 * H].t(), h0)
        grad_w[2 * H:].addmm_(grad_ghn[:, 0].t(), h0)
        grad_b = torch.cat([grad_gi[..., :2 * H].sum((0, 1)), grad_ghn.sum((0, 1))])
        return grad_gi, dh, grad_w, grad_b


class LeanGRU(nn.GRU):
    """`nn.GRU(input_size, hidden_size, batch_first=True)` whose input may be a list of parts (standing for
    their concatenation) and whose training on CPU runs through `GRURecurrence`; elsewhere (inference,
    CUDA's cuDNN GRU, autocast) it is `nn.GRU` itself.

    forward(x [B, F, I] or parts [B, F, I_i], h0 [1, B, H] or None) -> (y [B, F, H], h [1, B, H]).
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, batch_first=True)

    def forward(self, x, h0: torch.Tensor | None = None):
        parts = [x] if isinstance(x, torch.Tensor) else list(x)
        lean = (torch.is_grad_enabled() and parts[0].device.type == "cpu" and not torch.is_autocast_enabled("cpu")
                and (any(p.requires_grad for p in parts) or self.weight_hh_l0.requires_grad))
        if not lean:
            return super().forward(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0], h0)
        gi = split_linear(parts, self.weight_ih_l0, self.bias_ih_l0)  # [B, F, 3H]: all frames in one go
        h_init = gi.new_zeros(gi.shape[0], self.hidden_size) if h0 is None else h0[0]
        y = GRURecurrence.apply(gi, h_init, self.weight_hh_l0, self.bias_hh_l0)
        return y, y[:, -1][None]
