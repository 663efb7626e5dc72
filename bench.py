"""End-to-end speed and memory of Neural Guitar on this machine, each beside a plain reference in the same run.

Default config: batch 16 x 4 s, 100 harmonics, 65 noise bands, GRU 512, 6-scale loss. Measured:

  train step    forward + backward + gradient clipping + Adam step (median of --steps after --warmup);
                detail lines split it into decoder fwd / synth fwd / loss fwd / backward / optimizer.
  inference     real-time factor (audio seconds per wall second) of the full model on 4 s at batch 1
                (each round: the median of 5 back-to-back calls); detail lines: synthesizer alone,
                decoder alone.
  preprocess    real-time factor of features.extract_features with CREPE tiny and full on
                --preprocess_seconds of guitar-like audio (--skip_preprocess leaves it out).
  peak RSS      peak resident set size (VmHWM) of a fresh subprocess that runs three training steps; the
                baseline is one that only imports torch and builds the model and inputs.
  live          streaming.py as live.py runs it (default pitch tracker and --fx), one thread, on a sung
                example (examples/voice_oohs_melody.wav) block by block: per-block compute p50/p99 for the
                bundled model and a default-size one (GRU 512, random weights) at block 256 and the smallest
                block of 64..1024 whose p99 is <= 50 % of the block; the onset latency of 8 sung-like test
                notes through the engine, measured on the audio (plus the one block a sound card's callback
                buffers); the peak RSS (ru_maxrss) of a `live.py --simulate` subprocess; with
                --live_realtime S, the xruns of a `--simulate --realtime` run on S seconds.

The reference is the plain DDSP formulation: the decoder at every control frame (`decoder_stride` 1, 250
steps/s, as DDSP's and acids-ircam/ddsp_pytorch's RnnFcDecoder) and the readable harmonic bank
(`synth.harmonic_bank_audio_rate`: every partial at audio rate, several [B, T, K] tensors) instead of
`fastbank`; noise, reverb and loss are the same modules, and `check_agreement` asserts before timing that
both banks give the same audio, loss and gradients. Ours is the default config (`--decoder_stride`,
model.DEFAULT_CONFIG) with `fastbank`, its decoder under bfloat16 autocast with `--amp`. The
preprocessing reference is `torchcrepe.predict` at the control hop (64 samples) with Viterbi decoding, plus
the same loudness function. Ours and the reference alternate round by round, so load drifts hit both.

Targets (issues #10 and #11): the whole training step <= 0.23 x the reference's step in the same run (that
is 1/3 of acids-ircam/ddsp_pytorch's step, measured once beside this reference); the full model at batch 1
>= 60x real time on one thread; peak RSS of training <= 2.5 GB. Live (issue #13): per-block p99 <= 50 % of
the block at block 256, onset latency <= 50 ms, live.py's peak RSS <= 1 GB, 0 xruns.

Threads: --threads 0 keeps torch's default (one per core). On a CPU shared with other busy processes,
every parallel op waits for its slowest thread; --threads 1 is then both faster and steadier.

Examples:
  ./venv/bin/python bench.py --threads 1                  # all sections
  ./venv/bin/python bench.py --threads 1 --skip_preprocess --json bench.json
  ./venv/bin/python bench.py --batch_size 1 --seconds 0.5 --steps 1 --hidden_size 32 --skip_preprocess
  ./venv/bin/python bench.py --live_only --live_realtime 60     # the live section, with a 60 s real-time run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import effects
import features
import loss as loss_mod
import model as model_mod
import streaming
from pipeline import DEFAULT_CHECKPOINT, ROOT
from utils import HelpFormatter, UserError, atomic_path, cpu_name, pick_device, run_main

TARGETS = {"step_vs_reference": 0.23, "inference_rtf": 60.0, "rss_mb": 2.5 * 1024,
           "live_block_fraction": 0.5, "live_latency_ms": 50.0, "live_rss_mb": 1024.0}
IMPLS = ("ours", "reference")
CHILD_TAG = "BENCH_CHILD "
MEMORY_STEPS = 3  # training steps a peak-memory subprocess runs
INFERENCE_CALLS = 5  # back-to-back calls per inference round (median)
PHASES = ("decoder_fwd", "synth_fwd", "loss_fwd", "backward", "optimizer")


@contextmanager
def implementation(net, name: str):
    """Render with our fast harmonic bank ("ours") or the readable audio-rate one ("reference")."""
    before = net.harmonic.fast
    net.harmonic.fast = name == "ours"
    try:
        yield net
    finally:
        net.harmonic.fast = before


# ==================================================================================================
# Inputs
# ==================================================================================================

def make_controls(batch: int, n_frames: int, seed: int = 0, frame_rate: float = 250.0):
    """Synthetic control signals: f0_hz [B, F] (Hz) and loudness_db [B, F] (dB).

    Notes of 0.25-1 s drawn from MIDI 40-83 (E2-B5), 5.5 Hz vibrato of +-15 cents, plucked loudness
    envelopes (-25 dB attack, decaying 30 dB/s, floor -70 dB).
    """
    g = torch.Generator().manual_seed(seed)
    midi = torch.empty(batch, n_frames)
    onset = torch.zeros(batch, n_frames, dtype=torch.bool)
    for b in range(batch):
        f = 0
        while f < n_frames:
            length = int(frame_rate * (0.25 + 0.75 * torch.rand(1, generator=g).item()))
            midi[b, f:f + length] = float(torch.randint(40, 84, (1,), generator=g))
            onset[b, f] = True
            f += length
    t = torch.arange(n_frames) / frame_rate
    f0 = features.midi_to_hz(midi + 0.15 * torch.sin(2 * math.pi * 5.5 * t))
    since = torch.zeros(batch, n_frames)
    for f in range(1, n_frames):
        since[:, f] = torch.where(onset[:, f], torch.zeros(batch), since[:, f - 1] + 1 / frame_rate)
    return f0.float(), (-25.0 - 30.0 * since).clamp_min(-70.0)


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


def build(args, device, name: str = "ours"):
    """Model (seeded), Adam, the loss, and inputs: (net, opt, loss_fn, f0, loudness, target). "ours": the
    default config (decoder_stride from --decoder_stride) with fastbank; "reference": decoder_stride 1 and
    the audio-rate bank."""
    stride = 1 if name == "reference" else args.decoder_stride
    cfg = model_mod.build_config(hidden_size=args.hidden_size, decoder_stride=stride)
    torch.manual_seed(args.seed)
    net = model_mod.NeuralGuitar(cfg).to(device).train()
    net.harmonic.fast = name == "ours"
    net.amp = args.amp and name == "ours"
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)
    n_frames = max(2, int(round(args.seconds * cfg["sample_rate"] / cfg["hop"])))
    f0, loud = make_controls(args.batch_size, n_frames, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    target = 0.1 * torch.randn(args.batch_size, n_frames * cfg["hop"], generator=g)
    loss_fn = loss_mod.MultiResolutionSTFTLoss().to(device)
    return net, opt, loss_fn, f0.to(device), loud.to(device), target.to(device)


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


def train_step(net, opt, loss_fn, f0, loud, target, clock) -> dict:
    """One optimisation step; returns its phase times in seconds and the total."""
    opt.zero_grad(set_to_none=True)
    t0 = clock()
    with torch.autocast(f0.device.type, dtype=torch.bfloat16, enabled=net.amp):
        controls, _ = net.decode(f0, loud)
    controls = {k: v.float() for k, v in controls.items()}
    t1 = clock()
    dry = net.synthesize(controls, f0)["dry"]
    audio = net.reverb(dry) if net.reverb is not None else dry
    t2 = clock()
    value = loss_fn(audio, target)
    t3 = clock()
    value.backward()
    t4 = clock()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 3.0)
    opt.step()
    t5 = clock()
    return {"total": t5 - t0, "decoder_fwd": t1 - t0, "synth_fwd": t2 - t1, "loss_fwd": t3 - t2,
            "backward": t4 - t3, "optimizer": t5 - t4}


# ==================================================================================================
# Agreement: reference == ours on a small input
# ==================================================================================================

def check_agreement(seconds: float = 0.5, hidden_size: int = 32, seed: int = 0) -> dict:
    """The whole model with the reference bank and with ours, same weights and white noise, float64: audio,
    multi-resolution STFT loss and every parameter's gradient. One item plays a low E (82 Hz: 97 partials
    audible), the other glides up 3.5 octaves (partials cross Nyquist); B = 1e-4 (stiff string).
    Raises AssertionError beyond 1e-8 (audio, loss) or 1e-4 (gradients: the log-magnitude loss weights
    near-silent bins by 1/|X|, which amplifies rounding) relative error."""
    cfg = model_mod.build_config(hidden_size=hidden_size, initial_inharmonicity=1e-4)
    n = int(round(seconds * cfg["sample_rate"] / cfg["hop"]))
    f0 = torch.stack([torch.full((n,), 82.41), 82.41 * 2 ** torch.linspace(0, 3.5, n)]).double()
    loud = torch.linspace(-20, -50, n).expand(2, -1).double()
    g = torch.Generator().manual_seed(seed)
    white = torch.rand(2, n * cfg["hop"], generator=g, dtype=torch.float64) * 2 - 1
    target = 0.1 * torch.randn(2, n * cfg["hop"], generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    net = model_mod.NeuralGuitar(cfg).double()
    loss_fn = loss_mod.MultiResolutionSTFTLoss().double()
    res = {}
    for name in IMPLS:
        with implementation(net, name):
            net.zero_grad(set_to_none=True)
            dry = net.synthesize(net.decode(f0, loud)[0], f0, white)["dry"]  # float64 (forward() casts to float32)
            audio = net.reverb(dry)
            value = loss_fn(audio, target)
            value.backward()
        res[name] = (audio.detach(), value.detach(), torch.cat([p.grad.reshape(-1) for p in net.parameters()
                                                                if p.grad is not None]))
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(res["ours"], res["reference"])]
    err = {"audio_rel_err": rel[0], "loss_rel_err": rel[1], "grad_rel_err": rel[2]}
    assert rel[0] < 1e-8 and rel[1] < 1e-8 and rel[2] < 1e-4, f"reference and ours disagree: {err}"
    return err


# ==================================================================================================
# Sections
# ==================================================================================================

def bench_train(args, device, clock) -> dict:
    built = {name: build(args, device, name) for name in IMPLS}
    runs = interleaved({name: (lambda b=b: train_step(*b, clock)) for name, b in built.items()},
                       args.warmup, args.steps)
    out = {}
    for name, rs in runs.items():
        out[name] = summary([r["total"] for r in rs])
        out[name]["phases_s"] = {p: statistics.median(r[p] for r in rs) for p in PHASES}
    return out


def render(net, f0, loud):
    """The full model's audio, the decoder under bfloat16 autocast when `net.amp`."""
    with torch.autocast(f0.device.type, dtype=torch.bfloat16, enabled=net.amp):
        return net(f0, loud)["audio"]


def bench_inference(args, device, clock) -> dict:
    """Batch 1, 4 s: the full model, the synthesizer alone (ours' controls), the decoder alone."""
    a = argparse.Namespace(**{**vars(args), "batch_size": 1, "seconds": 4.0})
    built = {name: build(a, device, name) for name in IMPLS}
    nets = {name: b[0].eval() for name, b in built.items()}
    net, f0, loud = nets["ours"], built["ours"][3], built["ours"][4]
    seconds = f0.shape[1] * net.hop / net.config["sample_rate"]

    def timed(fn, bank="ours"):
        def run():  # a round: the median of a few back-to-back calls (warm, as in a rendering loop)
            times = []
            with implementation(net, bank):
                for _ in range(INFERENCE_CALLS):
                    t0 = clock()
                    fn()
                    times.append(clock() - t0)
            return statistics.median(times)
        return run

    def synth_only():
        dry = net.synthesize(controls, f0)["dry"]
        return net.reverb(dry) if net.reverb is not None else dry
    with torch.inference_mode():
        controls, _ = net.decode(f0, loud)
        runs = interleaved({"ours": timed(lambda: render(net, f0, loud)),
                            "reference": timed(lambda: render(nets["reference"], f0, loud)),
                            "ours_synth": timed(synth_only),
                            "reference_synth": timed(synth_only, "reference"),
                            "ours_decoder": timed(lambda: net.decode(f0, loud)),
                            "reference_decoder": timed(lambda: nets["reference"].decode(f0, loud))},
                           1, max(3, args.steps))
    return {"seconds": seconds, **{f"{k}_rtf": seconds / statistics.median(ts) for k, ts in runs.items()}}


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
        out[cap] = {"ours_rtf": out["seconds"] / t_ours, "reference_rtf": out["reference_seconds"] / t_ref}
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: VmHWM from /proc/self/status (Linux; ru_maxrss there
    survives fork+exec, so a child would report at least its parent's size), ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB elsewhere


def child_main(args) -> int:
    """Runs in a fresh process: build, then (unless "baseline") a few training steps; print peak RSS."""
    device = pick_device(args.device)
    built = build(args, device, "reference" if args._child == "reference" else "ours")
    if args._child != "baseline":
        for _ in range(MEMORY_STEPS):  # fragmentation and Adam's state show after the first step
            train_step(*built, Clock(device))
    print(CHILD_TAG + json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


def measure_child(args, what: str) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", what, "--batch_size", str(args.batch_size),
           "--seconds", str(args.seconds), "--hidden_size", str(args.hidden_size), "--device", args.device,
           "--seed", str(args.seed), "--threads", str(args.threads), "--decoder_stride", str(args.decoder_stride)]
    cmd += ["--amp"] if args.amp else []
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent)
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])["peak_rss_mb"]
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"memory subprocess '{what}' failed (exit {proc.returncode}): {tail}")


def bench_memory(args) -> dict:
    return {f"{what}_mb": measure_child(args, what) for what in ("baseline", *IMPLS)}


# ==================================================================================================
# Live (streaming.py, live.py)
# ==================================================================================================

LIVE_INPUT = ROOT / "examples" / "voice_oohs_melody.wav"   # a sung melody (13 s) through the engine
LIVE_BLOCK = 256                                              # samples at 16 kHz (16 ms): live.py's default
LIVE_BLOCKS = (64, 128, 256, 512, 1024)                       # tried for the smallest block that keeps up


def live_models(seed: int) -> dict:
    """{"bundled": pretrained/guitar_demo.pth, "default": model.DEFAULT_CONFIG (GRU 512, decoder stride 4)
    with seeded random weights (its cost does not depend on them)}: eval mode, CPU."""
    torch.manual_seed(seed)
    return {"bundled": model_mod.load_model(DEFAULT_CHECKPOINT, "cpu"),
            "default": model_mod.NeuralGuitar(model_mod.build_config()).eval()}


def block_times(engine, fx, audio: np.ndarray) -> np.ndarray:
    """Compute time (ms) of each whole block of `audio` [T] through engine + fx, as live.py's loop runs
    them, after an untimed warm-up over the first second (then both reset)."""
    B = engine.block_size
    blocks = [audio[i:i + B] for i in range(0, audio.size - B + 1, B)]
    for b in blocks[:features.SAMPLE_RATE // B]:
        fx.process(engine.process(b))
    engine.reset()
    fx.reset()
    times = []
    for b in blocks:
        t0 = time.perf_counter()
        fx.process(engine.process(b))
        times.append(time.perf_counter() - t0)
    return 1e3 * np.asarray(times)


def bench_live_blocks(models: dict, tracker, audio: np.ndarray) -> dict:
    """Per model and block size (LIVE_BLOCKS): per-block compute p50/p99 (ms, and p99 as a fraction of the
    block's duration); the smallest block whose p99 is within TARGETS["live_block_fraction"]."""
    out = {}
    for name, net in models.items():
        res = {"hidden_size": net.config["hidden_size"], "decoder": net.config["decoder"],
               "decoder_stride": net.stride, "blocks": {}}
        for block in LIVE_BLOCKS:
            engine = streaming.StreamingTransfer(net, block, pitch=tracker)
            t = block_times(engine, effects.Effects(effects.LIVE_DEFAULT, features.SAMPLE_RATE), audio)
            p99 = float(np.percentile(t, 99))
            res["blocks"][str(block)] = {"p50_ms": float(np.percentile(t, 50)), "p99_ms": p99,
                                         "p99_fraction": p99 / (1e3 * block / features.SAMPLE_RATE),
                                         "n_blocks": int(t.size)}
        ok = [b for b in LIVE_BLOCKS if res["blocks"][str(b)]["p99_fraction"] <= TARGETS["live_block_fraction"]]
        res["smallest_block"] = min(ok) if ok else None
        out[name] = res
    return out


def live_test_signal(note_s: float = 0.5, gap_s: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """Sung-like test notes after 0.3 s of silence: 8 notes (MIDI 55-67) of `note_s` seconds, each a
    5-harmonic tone with 5 Hz vibrato of +-30 cents, 10 ms attack and 20 ms release, then `gap_s` of silence.
    Returns (audio float32 [T] at 16 kHz, the first sample of each note)."""
    sr = features.SAMPLE_RATE
    t = np.arange(int(note_s * sr)) / sr
    f0 = 2.0 ** (0.3 / 12 * np.sin(2 * np.pi * 5.0 * t))          # times the note's frequency
    env = np.minimum(1.0, t / 0.01) * np.minimum(1.0, (note_s - t) / 0.02)
    parts, starts, n = [np.zeros(int(0.3 * sr))], [], int(0.3 * sr)
    for midi in (55, 60, 64, 57, 62, 67, 59, 65):
        phase = 2 * np.pi * np.cumsum(f0 * float(features.midi_to_hz(midi))) / sr
        tone = sum(np.sin(k * phase) / k for k in range(1, 6)) * env * 0.2
        starts.append(n)
        parts += [tone, np.zeros(int(gap_s * sr))]
        n += tone.size + int(gap_s * sr)
    return np.concatenate(parts).astype(np.float32), starts


def onset_in_span(y: np.ndarray, start: int, stop: int, fraction: float = 0.1, win: int = 64,
                  floor: float = 1e-4) -> int | None:
    """First sample of y[start:stop] whose `win`-sample RMS (trailing window) reaches `fraction` of the
    span's highest, as an index into y; None when the span stays below `floor` RMS (no onset: silence)."""
    seg = y[start:stop].astype(np.float64)
    rms = np.sqrt(np.convolve(seg ** 2, np.ones(win) / win, mode="full")[:seg.size])
    if rms.size == 0 or rms.max() < floor:
        return None
    return start + int(np.argmax(rms >= fraction * rms.max()))


def onset_latencies(process, block: int, audio: np.ndarray, starts: list[int], span: int) -> np.ndarray:
    """Sung onset in -> guitar onset out, in samples, per note: `audio` [T] through `process` (block
    [block] -> block [block]) block by block; each onset by `onset_in_span` over [note start, note start +
    span) of the input and of the output. NaN (missed) where the output stays silent, or where its onset
    comes before the input's: a causal engine cannot answer early, so that is the previous note's tail."""
    n = -(-(audio.size + span) // block) * block
    x = np.zeros(n, np.float32)
    x[:audio.size] = audio
    y = np.concatenate([process(x[i:i + block]) for i in range(0, n, block)])
    lat = []
    for s in starts:
        o = onset_in_span(y, s, s + span)
        d = np.nan if o is None else o - onset_in_span(x, s, s + span)
        lat.append(d if d >= 0 else np.nan)
    return np.array(lat, np.float64)


def bench_live_latency(net, tracker, block: int = LIVE_BLOCK) -> dict:
    """The bundled model's onset latency at `block`, measured on `live_test_signal` through the engine
    and live.py's default effects; a sound card's callback adds one block of buffering on top."""
    audio, starts = live_test_signal()
    engine = streaming.StreamingTransfer(net, block, pitch=tracker)
    fx = effects.Effects(effects.LIVE_DEFAULT, features.SAMPLE_RATE)
    lat = onset_latencies(lambda b: fx.process(engine.process(b)), block, audio, starts, int(features.SAMPLE_RATE))
    ms = 1e3 * lat[np.isfinite(lat)] / features.SAMPLE_RATE
    io_ms = 1e3 * block / features.SAMPLE_RATE
    stats = ({"engine_ms_median": float(np.median(ms)), "engine_ms_min": float(ms.min()),
              "engine_ms_max": float(ms.max()), "total_ms_median": float(np.median(ms)) + io_ms} if ms.size else
             dict.fromkeys(("engine_ms_median", "engine_ms_min", "engine_ms_max", "total_ms_median")))
    return {"block": block, "latency_samples": engine.latency_samples, "n_notes": int(lat.size),
            "n_missed": int(lat.size - ms.size), "block_io_ms": io_ms, **stats}


RUSAGE_TAG = "BENCH_CHILD_MAXRSS_KB "
RUSAGE_HELPER = (  # a small Python between bench and the measured process (see child_peak_rss)
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    f"print({RUSAGE_TAG!r} + str(usage.ru_maxrss), flush=True)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n")


def child_peak_rss(argv: list[str]) -> tuple[float, str]:
    """Run `python argv` in a child process: (its peak RSS in MiB, wait4's ru_maxrss, which includes the
    interpreter's exit; its last output line). A process started straight from this one would inherit
    this process's peak at exec (Linux records the old memory map's high-water mark), so a small helper
    Python forks it and reports it. UserError with the child's last line if it fails."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.run([sys.executable, "-c", RUSAGE_HELPER, *argv], stdout=log, stderr=subprocess.STDOUT,
                              cwd=ROOT)
        log.seek(0)
        lines = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
    rss = [line for line in lines if line.startswith(RUSAGE_TAG)]
    lines = [line for line in lines if not line.startswith(RUSAGE_TAG)] or ["no output"]
    if proc.returncode or not rss:
        raise UserError(f"{' '.join(Path(a).name if a.endswith('.py') else a for a in argv)} failed "
                        f"(exit {proc.returncode}): {lines[-1].removeprefix('error: ')}")
    kb = int(rss[-1][len(RUSAGE_TAG):])
    return (kb / 2**20 if sys.platform == "darwin" else kb / 1024), lines[-1]


def bench_live_process(realtime_seconds: float) -> dict:
    """Peak RSS of `live.py --simulate LIVE_INPUT` (its defaults); with realtime_seconds > 0 also a
    `--realtime` run on LIVE_INPUT repeated to that length, and the xruns its status line reports."""
    out, live = {}, str(ROOT / "live.py")
    with tempfile.TemporaryDirectory() as tmp:
        out["rss_mb"], out["status"] = child_peak_rss([live, "--simulate", str(LIVE_INPUT), "-o", f"{tmp}/a.wav"])
        if realtime_seconds > 0:
            voice = features.load_audio(LIVE_INPUT)
            n = int(realtime_seconds * features.SAMPLE_RATE)
            sf.write(f"{tmp}/long.wav", np.resize(voice, n), features.SAMPLE_RATE, subtype="FLOAT")
            out["realtime_load_start"] = load_average()
            _, line = child_peak_rss([live, "--simulate", f"{tmp}/long.wav", "-o", f"{tmp}/b.wav", "--realtime"])
            xruns = re.search(r"xruns (\d+)", line)
            if not xruns:
                raise UserError(f"live.py --simulate --realtime printed no xruns count; its last line: {line}")
            out.update(realtime_seconds=realtime_seconds, realtime_status=line, realtime_xruns=int(xruns.group(1)),
                       realtime_load_end=load_average())
    return out


def bench_live(args) -> dict:
    """The live section: block timing (one thread), onset latency, live.py's peak RSS (and xruns)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = live_models(args.seed)
        tracker = features.live_pitch_tracker()
        audio = features.load_audio(LIVE_INPUT)
        out = {"input": str(LIVE_INPUT.relative_to(ROOT)), "threads": 1, "block": LIVE_BLOCK,
               "pitch": tracker.name, "fx": effects.LIVE_DEFAULT,
               "models": bench_live_blocks(models, tracker, audio),
               "latency": bench_live_latency(models["bundled"], tracker)}
    finally:
        torch.set_num_threads(threads)
    out.update(bench_live_process(args.live_realtime))
    return out


# ==================================================================================================
# Report
# ==================================================================================================

def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"\nNeural Guitar bench — {m['cpu']}, {m['threads']} threads, torch {m['torch']}, device {m['device']}; "
          f"load average {r['load_average_start']} -> {r['load_average_end']}")
    if "train_step" in r:
        print_training(r)
    if "live" in r:
        print_live(r["live"], r["targets"])
    load = r.get("load_average_start")
    if busy(load):
        print(f"note: the machine was busy (load average {load[0]:.1f} on {os.cpu_count()} CPUs): absolute times "
              "are inflated" + ("; ratios are steadier (ours and the reference alternate)" if "train_step" in r else
                                " (p99 most: other processes preempt single blocks)"))
    print(f"total bench time {r['bench_seconds']:.0f} s")


def print_training(r: dict) -> None:
    m, c = r["machine"], r["config"]
    print(f"config: batch {c['batch_size']} x {c['seconds']} s, {c['n_harmonics']} harmonics, {c['n_noise_bands']} "
          f"noise bands, {c['decoder']} {c['hidden_size']}, decoder stride {c['decoder_stride']}"
          f"{' (bf16 autocast)' if c['amp'] else ''} (reference: 1); median of {c['steps']} after {c['warmup']} "
          "warm-up")
    print(f"\n{'':30s}{'ours':>11s}{'reference':>11s}  unit")

    def row(label, ours, ref, unit):
        print(f"{label:30s}{ours:11.3f}{ref:11.3f}  {unit}")
    tr, inf = r["train_step"], r["inference"]
    row("train step", tr["ours"]["median_s"], tr["reference"]["median_s"], "s")
    for p in PHASES:
        row(f"  {p.replace('_', ' ')}", tr["ours"]["phases_s"][p], tr["reference"]["phases_s"][p], "s")
    row("inference 4 s, batch 1", inf["ours_rtf"], inf["reference_rtf"], "x real time")
    row("  synthesizer alone", inf["ours_synth_rtf"], inf["reference_synth_rtf"], "x real time")
    row("  decoder alone", inf["ours_decoder_rtf"], inf["reference_decoder_rtf"], "x real time")
    for cap in ("tiny", "full") if r.get("preprocess") else ():
        row(f"preprocess CREPE {cap}", r["preprocess"][cap]["ours_rtf"], r["preprocess"][cap]["reference_rtf"],
            "x real time")
    if r.get("memory"):
        row("peak RSS, 3 train steps", r["memory"]["ours_mb"], r["memory"]["reference_mb"], "MiB")
        row("  baseline (torch + model)", r["memory"]["baseline_mb"], r["memory"]["baseline_mb"], "MiB")
    t = r["targets"]
    ratio = tr["ours"]["median_s"] / tr["reference"]["median_s"]
    print(f"\ntargets: train step <= {t['step_vs_reference']} x reference: {ratio:.2f} x "
          f"[{verdict(ratio <= t['step_vs_reference'])}]; full model at batch 1 >= {t['inference_rtf']:.0f}x real "
          f"time (one thread): {inf['ours_rtf']:.1f}x [{verdict(inf['ours_rtf'] >= t['inference_rtf'])}]", end="")
    if r.get("memory"):
        rss = r["memory"]["ours_mb"]
        print(f"; peak RSS of training <= {t['rss_mb']:.0f} MiB: {rss:.0f} MiB [{verdict(rss <= t['rss_mb'])}]")
    else:
        print()
    if m["threads"] != 1:
        print("note: the real-time target is for one thread (--threads 1)")
    ag = r["agreement"]
    print(f"agreement reference vs ours, float64 (relative error): audio {ag['audio_rel_err']:.1e}, loss "
          f"{ag['loss_rel_err']:.1e}, gradients {ag['grad_rel_err']:.1e}")


def print_live(lv: dict, t: dict) -> None:
    """The live section: a row per model (block LIVE_BLOCK), latency, RSS, xruns, with the targets."""
    frac = t["live_block_fraction"]
    print(f"\nlive (streaming.py + --fx {lv['fx']}, {lv['pitch']} pitch), {lv['threads']} thread, {lv['input']} "
          f"block by block; per-block compute")
    print(f"{'':30s}{'p50':>9s}{'p99':>9s}{'p99/block':>11s}  smallest block with p99 <= {100 * frac:.0f} %")
    for name, res in lv["models"].items():
        b = res["blocks"][str(lv["block"])]
        label = f"{name} ({res['decoder']} {res['hidden_size']}, stride {res['decoder_stride']})"
        small = res["smallest_block"]
        print(f"{label:30s}{b['p50_ms']:7.2f}ms{b['p99_ms']:7.2f}ms{100 * b['p99_fraction']:9.0f} %  "
              f"{small if small else 'none'} [{verdict(b['p99_fraction'] <= frac)} at block {lv['block']}]")
        print(f"{'':30s}p99 per block: " + ", ".join(f"{k}: {100 * v['p99_fraction']:.0f} %"
                                                      for k, v in res["blocks"].items()))
    print_live_latency(lv["latency"], t["live_latency_ms"])
    print(f"peak RSS of live.py --simulate (ru_maxrss): {lv['rss_mb']:.0f} MiB <= {t['live_rss_mb']:.0f} MiB "
          f"[{verdict(lv['rss_mb'] <= t['live_rss_mb'])}]")
    if "realtime_xruns" in lv:
        print(f"live.py --simulate --realtime, {lv['realtime_seconds']:.0f} s: {lv['realtime_xruns']} xruns "
              f"[{verdict(lv['realtime_xruns'] == 0)}] (load average {lv['realtime_load_start']} -> "
              f"{lv['realtime_load_end']}); its status: {lv['realtime_status'].split(': ', 1)[1]}")


def print_live_latency(la: dict, target_ms: float) -> None:
    """One line: measured onset latency with its target; test notes the engine left silent fail it."""
    head = f"onset latency, sung -> guitar (bundled, block {la['block']}, {la['n_notes']} test notes): "
    if la["n_missed"]:
        print(head + f"{la['n_missed']} of {la['n_notes']} notes gave no output onset [{verdict(False)}]")
        return
    print(head + f"engine {la['engine_ms_median']:.1f} ms (median, measured; {la['engine_ms_min']:.1f}.."
          f"{la['engine_ms_max']:.1f}; latency_samples {1e3 * la['latency_samples'] / features.SAMPLE_RATE:.0f} ms)"
          f" + {la['block_io_ms']:.0f} ms block I/O = {la['total_ms_median']:.1f} ms <= {target_ms:.0f} ms "
          f"[{verdict(la['total_ms_median'] <= target_ms)}] (a sound card adds its own buffers)")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16, help="training batch size")
    parser.add_argument("--seconds", type=float, default=4.0, help="training crop length (s)")
    parser.add_argument("--steps", type=int, default=2, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--hidden_size", type=int, default=512, help="decoder width (GRU and MLPs)")
    parser.add_argument("--decoder_stride", type=int, default=model_mod.DEFAULT_CONFIG["decoder_stride"],
                        help="ours: control frames per decoder step (the reference always uses 1)")
    parser.add_argument("--amp", action="store_true", help="ours: decoder under bfloat16 autocast")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--preprocess_seconds", type=float, default=5.0,
                        help="audio for the preprocess test (CREPE full runs ~0.2x real time on 1 core)")
    parser.add_argument("--reference_preprocess_seconds", type=float, default=1.0,
                        help="audio for the reference preprocess (torchcrepe.predict at hop 64 is slow; "
                             "real-time factors are per second of audio)")
    parser.add_argument("--skip_preprocess", action="store_true", help="leave out the CREPE tests")
    parser.add_argument("--skip_memory", action="store_true", help="leave out the peak-RSS subprocesses")
    parser.add_argument("--skip_live", action="store_true", help="leave out the live (streaming) section")
    parser.add_argument("--live_only", action="store_true", help="run only the live section")
    parser.add_argument("--live_realtime", type=float, default=0.0, metavar="SECONDS",
                        help="also run live.py --simulate --realtime on this much audio and count its xruns (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for inputs and weights")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--_child", default=None, choices=("baseline", *IMPLS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "hidden_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.seconds <= 0 or args.warmup < 0 or args.threads < 0:
        raise UserError("--seconds must be > 0, --warmup and --threads >= 0")
    if args.live_only and args.skip_live:
        raise UserError("--live_only and --skip_live exclude each other; drop one")
    if args.live_realtime < 0:
        raise UserError(f"--live_realtime must be >= 0 seconds, got {args.live_realtime}")
    if args.live_realtime and args.skip_live:
        raise UserError("--live_realtime runs in the live section, which --skip_live leaves out; drop one")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return child_main(args) if args._child else run_bench(args)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another program (tests)


def run_bench(args) -> int:
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
                   "hidden_size": cfg["hidden_size"], "decoder_stride": args.decoder_stride, "amp": args.amp,
                   "steps": args.steps, "warmup": args.warmup},
        "targets": TARGETS, "load_average_start": load_average(),
    }
    sections = [] if args.live_only else [
        ("agreement", check_agreement), ("train_step", lambda: bench_train(args, device, clock)),
        ("inference", lambda: bench_inference(args, device, clock))]
    if not (args.skip_preprocess or args.live_only):
        sections.append(("preprocess", lambda: bench_preprocess(args, device)))
    if not (args.skip_memory or args.live_only):
        sections.append(("memory", lambda: bench_memory(args)))
    if not args.skip_live:
        sections.append(("live", lambda: bench_live(args)))
    for key, fn in sections:
        print(f"{key.replace('_', ' ')} ...", flush=True)
        report[key] = fn()
    report["load_average_end"] = load_average()
    report["bench_seconds"] = time.perf_counter() - start
    print_report(report)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
