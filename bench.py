"""Benchmark Neural Guitar on this machine against a plain reference formulation, in the same process.

What is measured (default config: batch 16 x 4 s, 100 harmonics, 65 noise bands, GRU 512, 6-scale loss):

  train step        forward + backward + gradient clipping + Adam step; median of --steps after --warmup,
                    split into decoder fwd / synth fwd (harmonic + noise + reverb) / loss fwd / backward
                    (all of it) / optimizer.
  synth+loss step   the decoder's outputs are detached leaves, so only the synthesizer, reverb and loss
                    (forward + backward) are timed: the synthesizer's own cost.
  inference         real-time factor (audio seconds per wall second) at batch 1 (each round: the median
                    of 5 back-to-back calls, warm as in a rendering loop): 4 s through the model,
                    the synthesizer alone and the decoder alone on those 4 s, and --inference_seconds
                    (60) through render_chunked (the reference renders the whole clip in one go).
  preprocess        real-time factor of features.extract_features with CREPE tiny and full on
                    --preprocess_seconds of guitar-like audio without silence (--skip_preprocess).
  peak memory       peak resident set size (VmHWM) of a fresh subprocess that runs three training steps
                    with the malloc settings train.py uses (utils.MALLOC_TUNABLES), and of one that only
                    imports torch and builds the model + inputs (the baseline; its file-backed part is
                    torch's mapped libraries).
  experiments       (--experiments, not by default) decoder fwd+bwd time of candidate speed-ups, with
                    the loss / controls / gradient difference against the fp32 decoder (same weights)
                    and the training-step RSS: bf16 (CPU autocast around the decoder), checkpoint
                    (activation checkpointing of the three MLPs), half_rate / quarter_rate (emulated
                    decoder at 125 / 62.5 frames/s, controls interpolated back), compile (torch.compile
                    of the MLPs and head); combine with +. For the rate variants the differences show
                    a different function of the same weights, not an error: only training can judge them.

Every number comes with the same measurement of the REFERENCE, so the ratio means something on a busy
machine (ours and the reference are interleaved round by round, so load drifts hit both).

The reference (written here: it is the baseline, not product code) is the straightforward DDSP synthesis:
f0 and per-partial amplitudes are upsampled to audio rate by linear interpolation (`F.interpolate`,
align_corners, last frame held), partial frequencies are k*f0*sqrt(1+B k^2), phase is a float32
`torch.cumsum` of angular frequency over [B, T, K] (with the trapezoid correction -(w[t] + w[0])/2, so
that it is the exact integral of the piecewise-linear frequency, phase 0 at sample 0, as ours), the
sines of ALL partials are taken, the Nyquist mask is applied by multiplication (same rule as ours: a
partial is muted at a control point if it reaches Nyquist at the previous, own or next frame's f0, and
the distribution is renormalised), and the partials are summed over K. The filtered noise, the reverb,
the decoder and the loss are the very same modules as ours, so every ratio isolates the harmonic
oscillator bank. The reference preprocessing is `torchcrepe.predict` at the control hop (64 samples),
Viterbi decoding, 50-2000 Hz, on --reference_preprocess_seconds of the same audio, plus the same
loudness function. `check_agreement()` asserts, before anything is timed, that the reference and ours
give the same audio, loss and gradients on a small input (float64 and float32).

Test pitch: each batch item plays notes drawn from the guitar's range E2..B5 (82-988 Hz; notes of
0.25-1 s with vibrato; ~40 of 100 partials below Nyquist on average): ours skips partials above
Nyquist frame by frame, so low notes cost it more; `--pitch low` plays 82 Hz throughout (97 of 100
partials audible: ours' worst case).

Threads: --threads 0 keeps torch's default (one per core). On a CPU shared with other busy processes,
every parallel op waits for its slowest thread and times inflate several-fold; --threads 1 is then
both faster and steadier. The report says when the load average was high.

Targets (from the issue, "widely used PyTorch DDSP code" on a 2-core CPU of this kind): ~2.4 s per
training step and ~60x real-time synthesis; the synthesizer's aim is <= 1/3 of that step time (its
forward + backward, with reverb and loss: the synth+loss step) and >= 500x real time (synth alone,
batch 1), and the whole training step <= 2 GB RSS.

Examples:
  ./venv/bin/python bench.py                          # all sections, ~2-3 min on 2 idle cores
  ./venv/bin/python bench.py --threads 1 --skip_preprocess --json bench.json
  ./venv/bin/python bench.py --steps 3 --preprocess_seconds 10        # steadier, ~5 min
  ./venv/bin/python bench.py --experiments bf16,checkpoint,half_rate,bf16+quarter_rate
  ./venv/bin/python bench.py --batch_size 1 --seconds 0.5 --steps 2 --hidden_size 32 --skip_preprocess
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import features
import loss as loss_mod
import model as model_mod
from utils import HelpFormatter, UserError, cpu_name, pick_device, run_main, with_malloc_tunables

TARGETS = {
    "reference_code_step_s": 2.4,      # widely used PyTorch DDSP, batch 16 x 4 s, 2-core CPU
    "reference_code_rtf": 60.0,        # its synthesis speed, x real time
    "step_fraction": 1.0 / 3.0,        # aim: <= 1/3 of its step time
    "inference_rtf": 500.0,            # aim: >= 500x real time
    "rss_mb": 2048.0,                  # aim: <= 2 GB resident
}
EXPERIMENTS = ("bf16", "checkpoint", "half_rate", "quarter_rate", "compile")
CHILD_TAG = "BENCH_CHILD "
MEMORY_STEPS = 3  # training steps a peak-memory subprocess runs
INFERENCE_CALLS = 5  # back-to-back calls per inference round (median)


# ==================================================================================================
# The reference formulation (baseline only)
# ==================================================================================================

def upsample_linear(x: torch.Tensor, hop: int) -> torch.Tensor:
    """Frame-rate [B, F, C] -> audio-rate [B, F*hop, C]: value of frame f at sample f*hop, linear in
    between (F.interpolate with align_corners), last frame held for the final hop-1 samples."""
    B, Fr, C = x.shape
    y = x.transpose(1, 2)
    if Fr > 1:
        y = F.interpolate(y, size=(Fr - 1) * hop + 1, mode="linear", align_corners=True)
    y = torch.cat([y, y[..., -1:].expand(B, C, Fr * hop - y.shape[-1])], dim=-1)
    return y.transpose(1, 2)


def reference_harmonic(amplitude: torch.Tensor, distribution: torch.Tensor, f0_hz: torch.Tensor,
                       log_inharmonicity: torch.Tensor, sample_rate: int, hop: int) -> torch.Tensor:
    """Straightforward additive synthesis at audio rate.

    amplitude [B, F, 1], distribution [B, F, K], f0_hz [B, F, 1] Hz, log_inharmonicity scalar (log B).
    Returns audio [B, F*hop]. Materialises several [B, T, K] tensors (that is the point).
    """
    K = distribution.shape[-1]
    k = torch.arange(1, K + 1, dtype=f0_hz.dtype, device=f0_hz.device)
    ratios = k * torch.sqrt(1.0 + log_inharmonicity.exp().to(f0_hz.dtype) * k * k)   # [K]
    # Nyquist: a partial sounds at control point f only if it stays below Nyquist over the frames on
    # both sides of it (f-1 -> f and f -> f+1), i.e. at f0[f-1], f0[f] and f0[f+1] (ends held).
    f0_next = torch.cat([f0_hz[:, 1:], f0_hz[:, -1:]], dim=1)
    f0_prev = torch.cat([f0_hz[:, :1], f0_hz[:, :-1]], dim=1)
    f0_max = torch.maximum(torch.maximum(f0_prev, f0_hz), f0_next)
    mask = (f0_max * ratios < sample_rate / 2).to(f0_hz.dtype)       # [B, F, K]
    dist = distribution * mask
    dist = dist / dist.sum(-1, keepdim=True).clamp_min(1e-12)
    amps = upsample_linear(amplitude * dist, hop)                     # [B, T, K]
    omega = (2 * math.pi / sample_rate) * upsample_linear(f0_hz, hop) * ratios   # [B, T, K] rad/sample
    # phase = running integral of the piecewise-linear frequency, 0 at sample 0: the trapezoid rule
    # over samples, i.e. the cumsum minus half of the current and of the first sample
    phase = torch.cumsum(omega, dim=1) - 0.5 * (omega + omega[:, :1])
    return (amps * torch.sin(phase)).sum(-1)


def reference_synthesize(net, controls: dict, f0_hz: torch.Tensor, white_noise=None) -> torch.Tensor:
    """Reference harmonic part + the model's own noise and reverb -> audio [B, T]."""
    cfg = net.config
    harmonic = reference_harmonic(controls["amplitude"], controls["harmonic_distribution"], f0_hz[..., None],
                                  net.harmonic.log_inharmonicity, cfg["sample_rate"], cfg["hop"])
    dry = harmonic + net.noise(controls["noise_magnitudes"], white_noise)
    return net.reverb(dry) if net.reverb is not None else dry


def ours_synthesize(net, controls: dict, f0_hz: torch.Tensor, white_noise=None) -> torch.Tensor:
    dry = net.synthesize(controls, f0_hz, white_noise)["dry"]
    return net.reverb(dry) if net.reverb is not None else dry


SYNTHS = {"ours": ours_synthesize, "reference": reference_synthesize}


# ==================================================================================================
# Inputs
# ==================================================================================================

def make_controls(batch: int, n_frames: int, pitch: str = "guitar", seed: int = 0,
                  frame_rate: float = 250.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic control signals: f0_hz [B, F] (Hz) and loudness_db [B, F] (dB).

    guitar: notes of 0.25-1 s drawn from MIDI 40-83 (E2-B5), 5.5 Hz vibrato of +-15 cents, plucked
    loudness envelopes (-25 dB attack, decaying ~30 dB/s, floor -70 dB). low: 82.4 Hz throughout.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_frames) / frame_rate
    if pitch == "low":
        midi = torch.full((batch, n_frames), 40.0)
    else:
        midi = torch.empty(batch, n_frames)
        for b in range(batch):
            f = 0
            while f < n_frames:
                length = int(frame_rate * (0.25 + 0.75 * torch.rand(1, generator=g).item()))
                midi[b, f:f + length] = float(torch.randint(40, 84, (1,), generator=g))
                f += length
    midi = midi + 0.15 * torch.sin(2 * math.pi * 5.5 * t)
    f0 = features.midi_to_hz(midi)
    onset = torch.zeros(batch, n_frames)
    onset[:, 1:] = (midi[:, 1:].round() != midi[:, :-1].round()).float()
    onset[:, 0] = 1
    since = torch.zeros(batch, n_frames)
    for f in range(1, n_frames):
        since[:, f] = torch.where(onset[:, f] > 0, torch.zeros(batch), since[:, f - 1] + 1 / frame_rate)
    loud = (-25.0 - 30.0 * since).clamp_min(-70.0)
    return f0.float(), loud.float()


def make_test_audio(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Guitar-like mono audio [T] with no silent stretch: plucked harmonic tones (E2-B5, 0.5 s each,
    exponential decays) over a -60 dBFS noise floor, so silence skipping does not flatter anyone."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    y = 1e-3 * rng.standard_normal(n)
    note = int(0.5 * sample_rate)
    for start in range(0, n, note):
        f0 = float(features.midi_to_hz(rng.integers(40, 84)))
        t = np.arange(min(note * 2, n - start)) / sample_rate
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 9) if k * f0 < sample_rate / 2)
        y[start:start + len(t)] += 0.3 * np.exp(-4 * t) * tone
    return (y / max(1.0, np.abs(y).max())).astype(np.float32)


# ==================================================================================================
# Measurement helpers
# ==================================================================================================

class Clock:
    """perf_counter that synchronises CUDA first, so GPU times are real."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": [round(t, 4) for t in times]}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy(load: list[float] | None) -> bool:
    """True when the 1-minute load average says other processes already use most of the CPUs."""
    return bool(load) and load[0] > 0.75 * (os.cpu_count() or 1)


class CheckpointedMLP(nn.Module):
    """Activation checkpointing around an MLP: its activations are recomputed in backward."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        for m in inner.modules():  # in-place LeakyReLU would be recomputed on its own output
            if isinstance(m, nn.LeakyReLU):
                m.inplace = False

    def forward(self, x):
        if not torch.is_grad_enabled():
            return self.inner(x)
        return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False)


def decode(net, f0, loud, variant: frozenset = frozenset()) -> dict:
    """net.decode with the experiment variants: bf16 (CPU/CUDA autocast around the decoder; controls
    returned in float32), half_rate / quarter_rate (an emulation of a decoder at 125 / 62.5 frames/s: it
    runs on every 2nd / 4th frame of the inputs and its controls are linearly interpolated back to 250
    frames/s; a real implementation would pool the inputs instead of subsampling them)."""
    ctx = torch.autocast(f0.device.type, dtype=torch.bfloat16) if "bf16" in variant else nullcontext()
    step = 4 if "quarter_rate" in variant else 2 if "half_rate" in variant else 1
    if step > 1:
        Fr = f0.shape[1]
        with ctx:
            c, _ = net.decode(f0[:, ::step], loud[:, ::step])
        out = {}
        for k, v in c.items():  # [B, ceil(F/step), C] -> [B, F, C]
            v = F.interpolate(v.float().transpose(1, 2), scale_factor=step, mode="linear", align_corners=False)
            out[k] = v.transpose(1, 2)[:, :Fr]
        return out
    with ctx:
        c, _ = net.decode(f0, loud)
    return {k: v.float() for k, v in c.items()}


def build(args, device, variant: frozenset = frozenset()):
    cfg = model_mod.build_config(hidden_size=args.hidden_size)
    torch.manual_seed(args.seed)
    net = model_mod.NeuralGuitar(cfg).to(device).train()
    if "checkpoint" in variant:
        for name in ("f0_mlp", "loudness_mlp", "out_mlp"):
            setattr(net, name, CheckpointedMLP(getattr(net, name)))
    if "compile" in variant:
        for name in ("f0_mlp", "loudness_mlp", "out_mlp", "head"):
            setattr(net, name, torch.compile(getattr(net, name)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)
    loss_fn = loss_mod.MultiResolutionSTFTLoss().to(device)
    n_frames = max(2, int(round(args.seconds * cfg["sample_rate"] / cfg["hop"])))
    f0, loud = make_controls(args.batch_size, n_frames, args.pitch, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    target = 0.1 * torch.randn(args.batch_size, n_frames * cfg["hop"], generator=g)
    return net, opt, loss_fn, f0.to(device), loud.to(device), target.to(device)


def train_step(net, opt, loss_fn, f0, loud, target, synth_fn, clock, variant=frozenset()) -> dict:
    """One optimisation step; returns phase times in seconds."""
    opt.zero_grad(set_to_none=True)
    t0 = clock()
    controls = decode(net, f0, loud, variant)
    t1 = clock()
    audio = synth_fn(net, controls, f0)
    t2 = clock()
    value = loss_fn(audio, target)
    t3 = clock()
    value.backward()
    t4 = clock()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 3.0)
    opt.step()
    t5 = clock()
    return {"total": t5 - t0, "decoder_fwd": t1 - t0, "synth_fwd": t2 - t1, "loss_fwd": t3 - t2,
            "backward": t4 - t3, "optimizer": t5 - t4, "loss": value.item()}


def synth_loss_step(net, controls, loss_fn, f0, target, synth_fn, clock) -> float:
    """Synth + reverb + loss, forward and backward, from detached leaf controls."""
    net.zero_grad(set_to_none=True)
    for v in controls.values():
        v.grad = None
    t0 = clock()
    value = loss_fn(synth_fn(net, controls, f0), target)
    value.backward()
    return clock() - t0


def interleaved(fns: dict, warmup: int, steps: int) -> dict[str, list]:
    """Run each fn warmup+steps times, alternating the order every round; keep the last `steps` results."""
    results = {k: [] for k in fns}
    names = list(fns)
    for i in range(warmup + steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            r = fns[name]()
            if i >= warmup:
                results[name].append(r)
    return results


# ==================================================================================================
# Agreement: reference == ours on a small input
# ==================================================================================================

def check_agreement(seconds: float = 0.5, batch: int = 2, hidden_size: int = 32, seed: int = 0) -> dict:
    """Reference vs ours on a small input; raises AssertionError if they differ beyond tolerance.

    One batch item plays a low E (82 Hz: 97 partials audible), the other glides up 3.5 octaves, so
    partials cross Nyquist mid-clip; B = 1e-4 (stiff string). Compared, in float64 and float32:
      audio, loss     the whole model (same weights, same white noise) + multi-resolution STFT loss;
      grad            gradients of every parameter through that loss (float64 only: in float32 the
                      log-magnitude term's 1/|X| weighting of near-silent bins makes the gradient
                      depend on rounding, for the reference as much as for ours);
      synth_grad      gradients of a fixed random projection of the audio w.r.t. the synthesizer's
                      inputs (amplitude, distribution, noise magnitudes) and the reverb IR: checks the
                      custom backward in both precisions (worst of the four relative errors);
      inharmonicity_grad  the same for log B, separately: its gradient sums phase sensitivities that
                      grow with time, so float32 rounding (mostly the reference's float32 cumsum) shows.
    Runs on one thread (tiny tensors: threads only add synchronisation, worst on a busy machine).
    """
    # float64: the reference's own rounding (a cumsum of phases up to ~1e4 rad) leaves ~1e-10 in the
    # audio, which the log-magnitude loss amplifies in the parameter gradients.
    tolerances = {torch.float64: {"audio_rel_err": 1e-8, "loss_rel_err": 1e-8, "grad_rel_err": 1e-4,
                                  "synth_grad_rel_err": 1e-8, "inharmonicity_grad_rel_err": 1e-6},
                  torch.float32: {"audio_rel_err": 5e-3, "loss_rel_err": 1e-3, "synth_grad_rel_err": 5e-3,
                                  "inharmonicity_grad_rel_err": 1e-1}}
    cfg = model_mod.build_config(hidden_size=hidden_size, initial_inharmonicity=1e-4)
    n_frames = int(round(seconds * cfg["sample_rate"] / cfg["hop"]))
    f0 = torch.stack([torch.full((n_frames,), 82.41),
                      82.41 * 2 ** (torch.linspace(0, 3.5, n_frames))])[:batch]    # [B, F] Hz
    loud = torch.linspace(-20, -50, n_frames).expand(f0.shape[0], -1)
    g = torch.Generator().manual_seed(seed)
    white = torch.rand(f0.shape[0], n_frames * cfg["hop"], generator=g) * 2 - 1
    target = 0.1 * torch.randn(f0.shape[0], n_frames * cfg["hop"], generator=g)
    proj = torch.randn(f0.shape[0], n_frames * cfg["hop"], generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _agreement(tolerances, cfg, (f0, loud, white, target, proj), seed)
    finally:
        torch.set_num_threads(threads)


def _agreement(tolerances, cfg, inputs, seed) -> dict:
    report = {}

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    for dtype, tol in tolerances.items():
        torch.manual_seed(seed)
        net = model_mod.NeuralGuitar(cfg).to(dtype)
        loss_fn = loss_mod.MultiResolutionSTFTLoss().to(dtype)
        x = [t.to(dtype) for t in inputs]
        with torch.no_grad():
            leaves = {k: v.detach() for k, v in net.decode(x[0], x[1])[0].items()}
        res = {}
        for name, synth_fn in SYNTHS.items():
            net.zero_grad(set_to_none=True)
            controls, _ = net.decode(x[0], x[1])
            audio = synth_fn(net, controls, x[0], x[2])
            value = loss_fn(audio, x[3])
            value.backward()
            grads = torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None])
            # synthesizer-only gradients of a linear functional of the audio
            net.zero_grad(set_to_none=True)
            ctl = {k: v.clone().requires_grad_() for k, v in leaves.items()}
            (synth_fn(net, ctl, x[0], x[2]) * x[4]).sum().backward()
            sgrads = [v.grad for v in ctl.values()] + [net.reverb.ir.grad, net.harmonic.log_inharmonicity.grad]
            res[name] = (audio.detach(), value.detach(), grads, sgrads)
        (a0, l0, g0, s0), (a1, l1, g1, s1) = res["ours"], res["reference"]
        err = {"audio_rel_err": rel(a0, a1), "audio_max_abs_err": (a0 - a1).abs().max().item(),
               "loss_rel_err": ((l0 - l1).abs() / l1.abs()).item(), "grad_rel_err": rel(g0, g1),
               "synth_grad_rel_err": max(rel(u, v) for u, v in zip(s0[:-1], s1[:-1]) if v.norm() > 0),
               "inharmonicity_grad_rel_err": rel(s0[-1], s1[-1]), "tolerance": tol}
        report[str(dtype).replace("torch.", "")] = err
        bad = [k for k, t in tol.items() if not err[k] < t]
        assert not bad, f"reference and ours disagree in {dtype} ({', '.join(bad)}): {err}"
    return report


# ==================================================================================================
# Sections
# ==================================================================================================

def bench_train(args, device, clock) -> dict:
    net, opt, loss_fn, f0, loud, target = build(args, device)
    runs = interleaved({name: (lambda fn=fn: train_step(net, opt, loss_fn, f0, loud, target, fn, clock))
                        for name, fn in SYNTHS.items()}, args.warmup, args.steps)
    out = {}
    for name, rs in runs.items():
        out[name] = summary([r["total"] for r in rs])
        out[name]["phases_s"] = {p: statistics.median(r[p] for r in rs)
                                 for p in ("decoder_fwd", "synth_fwd", "loss_fwd", "backward", "optimizer")}
    out["speedup"] = out["reference"]["median_s"] / out["ours"]["median_s"]
    return out


def bench_synth_loss(args, device, clock) -> dict:
    net, _, loss_fn, f0, loud, target = build(args, device)
    with torch.no_grad():
        controls = {k: v.detach().requires_grad_() for k, v in decode(net, f0, loud).items()}
    runs = interleaved({name: (lambda fn=fn: synth_loss_step(net, controls, loss_fn, f0, target, fn, clock))
                        for name, fn in SYNTHS.items()}, args.warmup, args.steps)
    out = {name: summary(ts) for name, ts in runs.items()}
    out["speedup"] = out["reference"]["median_s"] / out["ours"]["median_s"]
    return out


def bench_decoder(args, device, clock, variant=frozenset()) -> dict:
    """Decoder alone, forward + backward (gradient of a fixed random projection of the controls)."""
    net, _, _, f0, loud, _ = build(args, device, variant)
    gen = torch.Generator().manual_seed(0)

    def step():
        net.zero_grad(set_to_none=True)
        t0 = clock()
        c = decode(net, f0, loud, variant)
        s = sum((v * torch.randn(v.shape, generator=gen).to(device)).sum() for v in c.values())
        s.backward()
        return clock() - t0
    return summary(interleaved({"d": step}, args.warmup, args.steps)["d"])


def bench_inference(args, device, clock) -> dict:
    a = argparse.Namespace(**{**vars(args), "batch_size": 1, "seconds": 4.0})
    net, _, _, f0, loud, _ = build(a, device)
    net.eval()
    seconds = f0.shape[1] * net.hop / net.config["sample_rate"]
    n = max(3, args.steps)
    out = {"seconds": seconds}
    with torch.inference_mode():
        controls = decode(net, f0, loud)

        def timed(fn, calls: int = INFERENCE_CALLS):
            def run():  # a round: the median of a few back-to-back calls (warm, as in a rendering loop)
                times = []
                for _ in range(calls):
                    t0 = clock()
                    fn()
                    times.append(clock() - t0)
                return statistics.median(times)
            return run
        runs = interleaved({
            "ours": timed(lambda: ours_synthesize(net, decode(net, f0, loud), f0)),
            "reference": timed(lambda: reference_synthesize(net, decode(net, f0, loud), f0)),
            "ours_synth": timed(lambda: ours_synthesize(net, controls, f0)),
            "reference_synth": timed(lambda: reference_synthesize(net, controls, f0)),
            "decoder": timed(lambda: decode(net, f0, loud)),
        }, 1, n)
        for k, ts in runs.items():
            out[f"{k}_rtf"] = seconds / statistics.median(ts)
        out["speedup"] = out["ours_rtf"] / out["reference_rtf"]
        out["synth_speedup"] = out["ours_synth_rtf"] / out["reference_synth_rtf"]

        if args.inference_seconds > 0:
            b = argparse.Namespace(**{**vars(a), "seconds": args.inference_seconds})
            _, _, _, f0l, loudl, _ = build(b, device)
            long_s = f0l.shape[1] * net.hop / net.config["sample_rate"]
            t0 = clock()
            net.render_chunked(f0l[0], loudl[0])
            t_ours = clock() - t0
            t0 = clock()
            reference_synthesize(net, decode(net, f0l, loudl), f0l)
            t_ref = clock() - t0
            out["long"] = {"seconds": long_s, "ours_rtf": long_s / t_ours, "reference_rtf": long_s / t_ref,
                           "speedup": t_ref / t_ours}
    return out


def bench_preprocess(args, device) -> dict:
    import torchcrepe

    sr = features.SAMPLE_RATE
    audio = make_test_audio(args.preprocess_seconds, sr, args.seed)
    ref_audio = audio[: int(round(min(args.preprocess_seconds, args.reference_preprocess_seconds) * sr))]
    out = {"seconds": len(audio) / sr, "reference_seconds": len(ref_audio) / sr}
    for cap in ("tiny", "full"):
        features.extract_features(audio[: sr // 10], model=cap, device=device)  # load the weights
        t0 = time.perf_counter()
        features.extract_features(audio, model=cap, device=device)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        torchcrepe.predict(torch.from_numpy(ref_audio)[None], sr, hop_length=features.HOP,
                           fmin=features.F0_MIN_HZ, fmax=features.F0_MAX_HZ, model=cap,
                           decoder=torchcrepe.decode.viterbi, return_periodicity=True,
                           batch_size=features.CREPE_BATCH_SIZE, device=device)
        features.compute_loudness(ref_audio)
        t_ref = time.perf_counter() - t0
        rtf_ours, rtf_ref = out["seconds"] / t_ours, out["reference_seconds"] / t_ref
        out[cap] = {"ours_rtf": rtf_ours, "reference_rtf": rtf_ref, "speedup": rtf_ours / rtf_ref}
    return out


# ---- memory: fresh subprocesses ------------------------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    VmHWM from /proc/self/status (Linux): the high-water mark of this process image only. ru_maxrss is
    the fallback elsewhere; on Linux it is not used because it survives fork+exec, so a child would
    report at least its parent's size at the fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB elsewhere


def rss_parts_mb() -> dict:
    """Current resident memory split into anonymous (heap: tensors, Python) and file-backed (mapped
    libraries: torch's .so files) parts, MiB; empty where /proc is not available."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            for key in ("RssAnon", "RssFile"):
                if line.startswith(key + ":"):
                    out[key.lower() + "_mb"] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def child_main(args) -> int:
    """Runs in a fresh process: build, optionally one training step, print peak RSS as JSON."""
    device = pick_device(args.device)
    what = args._child
    variant = frozenset(v for v in what.split("+")[1:] if v)
    net, opt, loss_fn, f0, loud, target = build(args, device, variant)
    if not what.startswith("baseline"):
        synth_fn = SYNTHS[what.split("+")[0]]
        for _ in range(MEMORY_STEPS):  # a few steps: fragmentation and Adam's state show after the first
            train_step(net, opt, loss_fn, f0, loud, target, synth_fn, Clock(device), variant)
    rec = {"what": what, "peak_rss_mb": peak_rss_mb(), **rss_parts_mb()}
    if device.type == "cuda":
        rec["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(CHILD_TAG + json.dumps(rec), flush=True)
    return 0


def measure_child(args, what: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", what,
           "--batch_size", str(args.batch_size), "--seconds", str(args.seconds),
           "--hidden_size", str(args.hidden_size), "--device", args.device, "--pitch", args.pitch,
           "--seed", str(args.seed), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent,
                          env=with_malloc_tunables())  # the allocator settings train.py runs with
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"memory subprocess '{what}' failed (exit {proc.returncode}): {tail}")


def bench_memory(args, extra_variants=()) -> dict:
    base = measure_child(args, "baseline")
    out = {"baseline_mb": base["peak_rss_mb"]}
    if "rssfile_mb" in base:  # how much of the baseline is mapped library code (torch's .so files)
        out["baseline_file_backed_mb"] = base["rssfile_mb"]
    for name in ("ours", "reference", *extra_variants):
        rec = measure_child(args, name)
        out[f"{name}_train_step_mb"] = rec["peak_rss_mb"]
        if "cuda_peak_allocated_mb" in rec:
            out[f"{name}_cuda_peak_allocated_mb"] = rec["cuda_peak_allocated_mb"]
    out["ratio"] = out["reference_train_step_mb"] / out["ours_train_step_mb"]
    return out


# ---- experiments (decoder speed/memory candidates) --------------------------------------------------

def bench_experiments(args, device, clock, names) -> dict:
    out = {}
    base = bench_decoder(args, device, clock)
    out["decoder_fp32"] = base
    for name in names:
        variant = frozenset(name.split("+"))
        t0 = time.perf_counter()
        try:
            r = bench_decoder(args, device, clock, variant)
        except Exception as e:  # e.g. torch.compile without a working compiler
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            continue
        r["wall_incl_warmup_s"] = time.perf_counter() - t0
        r["speedup_vs_fp32"] = base["median_s"] / r["median_s"]
        if "compile" not in variant:
            r.update(loss_difference(args, device, variant))
        if not args.skip_memory and "compile" not in variant:
            r["train_step_rss_mb"] = measure_child(args, "ours+" + name)["peak_rss_mb"]
        out[name] = r
    return out


def loss_difference(args, device, variant, max_batch: int = 4) -> dict:
    """Same weights, same inputs (the first `max_batch` items): the variant's controls, loss and
    parameter gradients against the fp32 decoder's, with ours synth + loss. Gradients are compared with
    a float64 run as the truth, for fp32 too: in float32 the log-magnitude loss weights near-silent bins
    by 1/|X|, so even fp32 gradients carry rounding noise; the variant should not add much to it."""
    a = argparse.Namespace(**{**vars(args), "batch_size": min(args.batch_size, max_batch)})
    net, _, loss_fn, f0, loud, target = build(a, device)
    g = torch.Generator().manual_seed(5)
    white = (torch.rand(target.shape, generator=g) * 2 - 1).to(device)

    def run(n, lf, v, dtype):
        n.zero_grad(set_to_none=True)
        c = decode(n, f0.to(dtype), loud.to(dtype), v)
        value = lf(ours_synthesize(n, c, f0.to(dtype), white.to(dtype)), target.to(dtype))
        value.backward()
        grads = torch.cat([p.grad.reshape(-1).double() for p in n.parameters() if p.grad is not None])
        return {k: x.detach().double() for k, x in c.items()}, value.item(), grads

    c32, l32, g32 = run(net, loss_fn, frozenset(), torch.float32)
    cv, lv, gv = run(net, loss_fn, variant, torch.float32)
    net64 = copy.deepcopy(net).double()
    _, l64, g64 = run(net64, copy.deepcopy(loss_fn).double(), frozenset(), torch.float64)
    del net64

    def cos(x, y):
        return F.cosine_similarity(x, y, dim=0).item()
    ctrl_err = max(((cv[k] - c32[k]).norm() / c32[k].norm()).item() for k in c32)
    return {"loss_fp32": l32, "loss_variant": lv, "loss_fp64": l64, "loss_rel_diff": abs(lv - l32) / abs(l32),
            "controls_rel_err": ctrl_err, "grad_cos_fp32_vs_fp64": cos(g32, g64),
            "grad_cos_variant_vs_fp64": cos(gv, g64), "grad_cos_variant_vs_fp32": cos(gv, g32)}


# ==================================================================================================
# Report
# ==================================================================================================

def print_report(r: dict) -> None:
    m, c = r["machine"], r["config"]
    print(f"\nNeural Guitar bench — {m['cpu']}, {m['threads']} threads, torch {m['torch']}, device {m['device']}")
    print(f"config: batch {c['batch_size']} x {c['seconds']} s, {c['n_harmonics']} harmonics, "
          f"{c['n_noise_bands']} noise bands, {c['decoder']} {c['hidden_size']}, {c['loss_scales']}-scale loss, "
          f"pitch {c['pitch']}; median of {c['steps']} after {c['warmup']} warm-up; "
          f"load average {r['load_average_start']} -> {r['load_average_end']}")
    rows = []

    def row(label, ours, ref, unit, better="lower", spread=None, shared=False):
        """shared: one measurement that both use (same decoder / same baseline): no ratio."""
        if shared:
            ratio = None
        else:
            ratio = (ref / ours if better == "lower" else ours / ref) if ours and ref else float("nan")
        rows.append((label, ours, ref, unit, ratio, spread))

    tr = r["train_step"]
    row("train step", tr["ours"]["median_s"], tr["reference"]["median_s"], "s",
        spread=(tr["ours"]["min_s"], tr["ours"]["max_s"], tr["reference"]["min_s"], tr["reference"]["max_s"]))
    for p in ("decoder_fwd", "synth_fwd", "loss_fwd", "backward", "optimizer"):
        row(f"  {p.replace('_', ' ')}", tr["ours"]["phases_s"][p], tr["reference"]["phases_s"][p], "s")
    sl = r["synth_loss_step"]
    row("synth+loss step", sl["ours"]["median_s"], sl["reference"]["median_s"], "s",
        spread=(sl["ours"]["min_s"], sl["ours"]["max_s"], sl["reference"]["min_s"], sl["reference"]["max_s"]))
    inf = r["inference"]
    row(f"inference {inf['seconds']:.0f} s, batch 1", inf["ours_rtf"], inf["reference_rtf"], "x RT", "higher")
    row("  synth only", inf["ours_synth_rtf"], inf["reference_synth_rtf"], "x RT", "higher")
    row("  decoder only (same)", inf["decoder_rtf"], inf["decoder_rtf"], "x RT", "higher", shared=True)
    if "long" in inf:
        lg = inf["long"]
        row(f"inference {lg['seconds']:.0f} s (chunked)", lg["ours_rtf"], lg["reference_rtf"], "x RT", "higher")
    if r.get("preprocess"):
        pp = r["preprocess"]
        for cap in ("tiny", "full"):
            row(f"preprocess CREPE {cap}", pp[cap]["ours_rtf"], pp[cap]["reference_rtf"], "x RT", "higher")
    if r.get("memory"):
        mem = r["memory"]
        row("peak RSS, train step", mem["ours_train_step_mb"], mem["reference_train_step_mb"], "MB")
        row("  baseline (torch+model)", mem["baseline_mb"], mem["baseline_mb"], "MB", shared=True)
        if "baseline_file_backed_mb" in mem:
            row("    of which mapped libraries", mem["baseline_file_backed_mb"], mem["baseline_file_backed_mb"],
                "MB", shared=True)
    print(f"\n{'':30s}{'ours':>11s}{'reference':>11s}  {'unit':6s}{'ours better by':>15s}")
    for label, ours, ref, unit, ratio, spread in rows:
        line = f"{label:30s}{ours:11.3f}{ref:11.3f}  {unit:6s}" + (f"{ratio:14.2f}x" if ratio else f"{'-':>15s}")
        if spread:
            line += f"   (ours {spread[0]:.2f}-{spread[1]:.2f}, ref {spread[2]:.2f}-{spread[3]:.2f})"
        print(line)
    if r.get("experiments"):
        print("\ndecoder experiments (decoder fwd+bwd only, ours synth for loss/grad comparison):")
        for name, e in r["experiments"].items():
            if "error" in e:
                print(f"  {name:22s} error: {e['error']}")
                continue
            line = f"  {name:22s} {e['median_s']:7.3f} s ({e['min_s']:.2f}-{e['max_s']:.2f})"
            if "speedup_vs_fp32" in e:
                line += f"  x{e['speedup_vs_fp32']:.2f}"
            if "loss_rel_diff" in e:
                line += (f"  loss rel diff {e['loss_rel_diff']:.1e}, controls {e['controls_rel_err']:.1e}, "
                         f"grad cos vs fp64 {e['grad_cos_variant_vs_fp64']:.3f} "
                         f"(fp32: {e['grad_cos_fp32_vs_fp64']:.3f})")
            if "train_step_rss_mb" in e:
                line += f"  RSS {e['train_step_rss_mb']:.0f} MB"
            if "compile" in name:
                line += f"  (incl. compile: {e['wall_incl_warmup_s']:.0f} s)"
            print(line)
    t = r["targets"]
    ours_step = tr["ours"]["median_s"]
    budget = t["reference_code_step_s"] * t["step_fraction"]
    synth_step = sl["ours"]["median_s"]

    def verdict(ok):
        return "met" if ok else "NOT met"
    print(f"\ntargets: synth (+ reverb + loss) fwd+bwd <= {budget:.2f} s (1/3 of the {t['reference_code_step_s']} s "
          f"step): ours {synth_step:.2f} s [{verdict(synth_step <= budget)}]; synth inference >= "
          f"{t['inference_rtf']:.0f}x real time at batch 1: ours {inf['ours_synth_rtf']:.0f}x "
          f"[{verdict(inf['ours_synth_rtf'] >= t['inference_rtf'])}]", end="")
    if r.get("memory"):
        rss = r["memory"]["ours_train_step_mb"]
        print(f"; train-step RSS <= {t['rss_mb']:.0f} MB: ours {rss:.0f} MB [{verdict(rss <= t['rss_mb'])}]")
    else:
        print()
    print(f"the rest of the {ours_step:.2f} s step is the decoder (~{ours_step - synth_step:.2f} s: MLPs + GRU "
          f"{c['hidden_size']} at 250 frames/s, fp32, compute-bound; train.py --amp runs it in bfloat16, see "
          f"--experiments bf16); full model at batch 1: {inf['ours_rtf']:.0f}x real time (decoder alone "
          f"{inf['decoder_rtf']:.0f}x)")
    ag = r["agreement"]
    load = r.get("load_average_start")
    if busy(load):
        print(f"note: the machine was busy (load average {load[0]:.1f} on {os.cpu_count()} CPUs): absolute times "
              f"are inflated and vary; ratios are steadier (ours and reference are interleaved). With several "
              f"threads on a busy CPU, every parallel op waits for its slowest thread: --threads 1 is steadier.")
    parts = []
    for k, v in ag.items():
        p = f"{k}: audio {v['audio_rel_err']:.1e}, loss {v['loss_rel_err']:.1e}"
        if "grad_rel_err" in v["tolerance"]:
            p += f", param grads {v['grad_rel_err']:.1e}"
        parts.append(p + f", synth grads {v['synth_grad_rel_err']:.1e}, log B grad "
                     f"{v['inharmonicity_grad_rel_err']:.1e}")
    print("agreement reference vs ours (relative error): " + "; ".join(parts))
    print(f"total bench time {r['bench_seconds']:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in r.get("section_seconds", {}).items()) + ")")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16, help="training batch size")
    parser.add_argument("--seconds", type=float, default=4.0, help="training crop length (s)")
    parser.add_argument("--steps", type=int, default=2, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--hidden_size", type=int, default=512, help="decoder width (GRU and MLPs)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--pitch", choices=("guitar", "low"), default="guitar",
                        help="test f0: notes over the guitar's range, or 82 Hz throughout (ours' worst case)")
    parser.add_argument("--inference_seconds", type=float, default=60.0,
                        help="length of the long inference test via render_chunked (0 = skip)")
    parser.add_argument("--preprocess_seconds", type=float, default=5.0,
                        help="audio for the preprocess test (CREPE full runs ~0.2x real time on 1 core)")
    parser.add_argument("--reference_preprocess_seconds", type=float, default=1.0,
                        help="audio for the reference preprocess (torchcrepe.predict at hop 64 is slow; "
                             "real-time factors are per second of audio)")
    parser.add_argument("--skip_preprocess", action="store_true", help="leave out the CREPE tests")
    parser.add_argument("--skip_memory", action="store_true", help="leave out the peak-RSS subprocesses")
    parser.add_argument("--experiments", default="",
                        help=f"comma list of decoder variants to time ({', '.join(EXPERIMENTS)}; "
                             f"combine with +, e.g. bf16+checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for inputs and weights")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    for name, value in (("--batch_size", args.batch_size), ("--steps", args.steps),
                        ("--hidden_size", args.hidden_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if args.seconds <= 0 or args.warmup < 0 or args.threads < 0:
        raise UserError("--seconds must be > 0, --warmup and --threads >= 0")
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    for e in experiments:
        if any(part not in EXPERIMENTS for part in e.split("+")):
            raise UserError(f"--experiments: unknown variant {e!r}; choose from {', '.join(EXPERIMENTS)}")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return child_main(args) if args._child else run_bench(args, experiments)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another program (tests)


def run_bench(args, experiments: list[str]) -> int:
    device = pick_device(args.device)
    clock = Clock(device)
    start = time.perf_counter()
    cfg = model_mod.build_config(hidden_size=args.hidden_size)
    report = {
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                    "python": platform.python_version()},
        "config": {"batch_size": args.batch_size, "seconds": args.seconds, "n_harmonics": cfg["n_harmonics"],
                   "n_noise_bands": cfg["n_noise_bands"], "decoder": cfg["decoder"],
                   "hidden_size": cfg["hidden_size"], "loss_scales": len(loss_mod.FFT_SIZES),
                   "steps": args.steps, "warmup": args.warmup, "pitch": args.pitch},
        "targets": TARGETS,
        "load_average_start": load_average(),
    }
    print(f"bench: {report['machine']['cpu']}, {report['machine']['threads']} threads, "
          f"load average {report['load_average_start']}", flush=True)
    if busy(report["load_average_start"]) and torch.get_num_threads() > 1 and device.type == "cpu":
        print(f"warning: the CPU is busy (load average {report['load_average_start'][0]:.1f} on {os.cpu_count()} "
              f"CPUs); with {torch.get_num_threads()} threads every parallel op waits for its slowest thread and "
              f"this can take 5x longer with meaningless times: consider --threads 1", flush=True)
    sections = [("agreement", "checking that the reference and ours agree", lambda: check_agreement()),
                ("train_step", "training step", lambda: bench_train(args, device, clock)),
                ("synth_loss_step", "synth + loss step", lambda: bench_synth_loss(args, device, clock)),
                ("inference", "inference", lambda: bench_inference(args, device, clock))]
    if not args.skip_preprocess:
        sections.append(("preprocess", "preprocessing (CREPE tiny, full)", lambda: bench_preprocess(args, device)))
    if not args.skip_memory:
        sections.append(("memory", "peak memory (fresh subprocesses)", lambda: bench_memory(args)))
    if experiments:
        sections.append(("experiments", f"experiments: {', '.join(experiments)}",
                         lambda: bench_experiments(args, device, clock, experiments)))
    report["section_seconds"] = {}
    for key, label, fn in sections:
        print(f"{label} ...", flush=True)
        t0 = time.perf_counter()
        report[key] = fn()
        report["section_seconds"][key] = round(time.perf_counter() - t0, 1)
    report["load_average_end"] = load_average()
    report["bench_seconds"] = time.perf_counter() - start
    print_report(report)
    if args.json:
        from utils import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
