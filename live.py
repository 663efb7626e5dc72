"""Sing into a microphone, hear electric guitar: the live front end of streaming.StreamingTransfer.

    ./venv/bin/python live.py --list-devices
    ./venv/bin/python live.py --input-device "USB" --output-device "USB" --fx clean
    ./venv/bin/python live.py --simulate voice.wav -o guitar.wav [--realtime]

Audio goes through sounddevice (PortAudio; on Debian/Ubuntu `sudo apt-get install libportaudio2`). The device
runs at --samplerate; its blocks are resampled to the engine's 16 kHz (soxr, streaming) and back. The engine
is causal and keeps all its state between blocks (see streaming.py): its own latency (`latency_samples`, at
16 kHz) is the time from a sung onset to the guitar onset inside the engine; the sound card adds its input and
output buffers (about one block each) and the resamplers a few ms.

--simulate feeds a file through the same engine, block by block, without any audio hardware (servers, CI):
as fast as possible, or paced at real time with --realtime. The output (16 kHz WAV) is the engine's output,
`latency_samples` late, with the input's length plus that latency. Both modes print one status line: the
engine's latency, per-block compute time (p50/p99 in ms and as % of the block's duration) and xruns
(live: blocks the sound card dropped or a block whose compute took longer than the block lasts; simulate:
blocks whose compute took longer than the block lasts, and with --realtime also blocks finished after the
next one was due, however they got late). The engine is warmed up on silence before the first block (its first
step pays one-off costs of ~0.3 s). CTRL+C stops cleanly (exit 130).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

import features
from effects import LIVE_DEFAULT as FX_DEFAULT, add_fx_arguments, from_args as fx_from_args
from pipeline import DEFAULT_CHECKPOINT, ROOT, resolve_checkpoint
from notes import parse_octave
from utils import HelpFormatter, UserError, apply_threads, atomic_write_wav, check_output_path, run_main

SR = features.SAMPLE_RATE
RESAMPLE_QUALITY = "QQ"   # soxr "quick" (cubic): its stream flows block by block. HQ/MQ release their output in
                          # bursts of several blocks and LQ lags about one: voice -> guitar through a fake 48 kHz card
                          # measured 94 (MQ), 68 (LQ) and 46 ms (QQ), of which the engine was then 32 ms (24 ms since)
PORTAUDIO_FIX = ("install PortAudio (Debian/Ubuntu: sudo apt-get install libportaudio2; macOS: brew install "
                 "portaudio), or run without a sound card: live.py --simulate in.wav -o out.wav")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    p.add_argument("--input-device", default=None, help="input device: index or part of its name (default: system's)")
    p.add_argument("--output-device", default=None, help="output device: index or part of its name (default: system's)")
    p.add_argument("--samplerate", type=int, default=48000, help="device sample rate, Hz (resampled to 16 kHz inside)")
    p.add_argument("--block", type=int, default=256,
                   help="engine block in samples at 16 kHz (a multiple of 64); 256 = 16 ms")
    p.add_argument("--checkpoint", default=None,
                   help=f"model checkpoint (.pth); default: the bundled {DEFAULT_CHECKPOINT.relative_to(ROOT)}")
    p.add_argument("--pitch", choices=tuple(features.LIVE_PITCH_TRACKERS), default=features.DEFAULT_LIVE_PITCH,
                   help="live pitch tracker (features.live_pitch_tracker)")
    p.add_argument("--octave", default="0",
                   help="whole octaves added to the sung pitch, or 'auto' (re-decided at each note onset from the "
                        "notes so far: the shift that puts most of them in the model's range; never inside a note)")
    p.add_argument("--semitones", type=float, default=0.0, help="extra pitch shift in semitones")
    p.add_argument("--envelope", choices=("pluck", "voice"), default="pluck",
                   help="pluck: each sung note becomes a plucked note (causal); voice: the voice's own envelope")
    p.add_argument("--no_adjust", action="store_true",
                   help="no note gating or loudness map (octave and semitones still apply)")
    p.add_argument("--gain", type=float, default=0.0, help="gain in dB on the guitar before the effects")
    p.add_argument("--monitor", type=float, default=None, metavar="DB",
                   help="mix the dry voice into the output at this level (dB); default: off")
    add_fx_arguments(p, default=FX_DEFAULT)
    p.add_argument("--simulate", metavar="IN", default=None, help="feed this audio file instead of a microphone")
    p.add_argument("-o", "--output", default=None, help="with --simulate: the output WAV file (16 kHz)")
    p.add_argument("--realtime", action="store_true", help="with --simulate: pace the blocks at real time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (1 is fastest for small blocks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthesizer's noise")
    return p


def make_engine(args):
    """(StreamingTransfer, effects.Effects) the flags describe (UserError for a bad checkpoint or plugin).
    The effects run outside the engine, after --gain."""
    from model import load_model
    from streaming import LiveSettings, StreamingTransfer

    ckpt = resolve_checkpoint(args.checkpoint)
    fx = fx_from_args(args, SR)
    apply_threads(args.threads)
    model = load_model(ckpt, "cpu")
    settings = LiveSettings(semitones=args.semitones, envelope=args.envelope)
    engine = StreamingTransfer(model, args.block, pitch=args.pitch, octave=args.octave, settings=settings,
                               adjust=not args.no_adjust, seed=args.seed)
    warm_up(engine, fx)
    return engine, fx


def warm_up(engine, fx) -> None:
    """A quarter second of silence through engine and fx, then both reset (the stream starts from silence
    either way): the first internal step pays one-off costs (~0.3 s) that would otherwise be an xrun."""
    silence = np.zeros(engine.block_size, np.float32)
    for _ in range(-(-SR // 4 // engine.block_size)):
        fx.process(engine.process(silence))
    engine.reset()
    fx.reset()


class Stats:
    """Per-block compute times (s) and xruns; `line()` is the one-line status."""

    def __init__(self, engine, block: int):
        self.engine, self.block_s, self.times, self.xruns = engine, block / SR, [], 0

    def add(self, seconds: float, late: bool = False) -> None:
        """One block's compute time; an xrun when it took longer than a block lasts, or when `late` (it
        finished after its real-time deadline)."""
        self.times.append(seconds)
        if late or seconds > self.block_s:
            self.xruns += 1

    def line(self, extra: str = "") -> str:
        t = np.asarray(self.times[-2000:] or [0.0]) * 1e3
        p50, p99, budget = np.percentile(t, 50), np.percentile(t, 99), self.block_s * 1e3
        return (f"latency {1e3 * self.engine.latency_samples / SR:.1f} ms{extra} | block {budget:.1f} ms | compute "
                f"p50 {p50:.2f} ms p99 {p99:.2f} ms ({100 * p99 / budget:.0f}% of the block) | xruns {self.xruns}")


def run_simulation(args) -> int:
    """--simulate: the file through the engine block by block; writes -o; prints the status line."""
    if not args.output:
        raise UserError("--simulate needs -o OUT.wav: where to write the guitar")
    out_path = check_output_path(args.output, "-o")
    if Path(args.simulate).resolve() == out_path.resolve():
        raise UserError(f"{args.simulate}: output would overwrite the input; choose another -o")
    voice = features.load_audio(args.simulate)
    engine, fx = make_engine(args)
    B, L = args.block, engine.latency_samples
    n_blocks = -(-(voice.size + L) // B)
    x = np.zeros(n_blocks * B, np.float32)
    x[:voice.size] = voice
    gain, monitor = 10.0 ** (args.gain / 20.0), _monitor_gain(args.monitor)
    stats, out = Stats(engine, B), np.zeros_like(x)
    start = time.perf_counter()
    for k in range(n_blocks):
        if args.realtime:
            time.sleep(max(0.0, start + k * B / SR - time.perf_counter()))
        t0 = time.perf_counter()
        block = x[k * B:(k + 1) * B]
        out[k * B:(k + 1) * B] = _guitar(engine, fx, block, gain) + monitor * block
        done = time.perf_counter()       # block k is due at start + k*B/SR; a card needs it one block later
        stats.add(done - t0, late=args.realtime and done > start + (k + 1) * B / SR)
    out = out[:voice.size + L]
    atomic_write_wav(out_path, np.clip(out, -1.0, 1.0), SR)
    print(f"{args.simulate} -> {out_path}: {voice.size / SR:.1f} s, " + stats.line(), flush=True)
    return 0


def _monitor_gain(db) -> float:
    return 0.0 if db is None else 10.0 ** (db / 20.0)


def _guitar(engine, fx, block: np.ndarray, gain: float) -> np.ndarray:
    """The engine's guitar for one 16 kHz block, `gain` applied before the effects `fx`."""
    return fx.process((engine.process(block) * gain).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Sound card
# ------------------------------------------------------------------------------------------------

def import_sounddevice():
    """sounddevice, or a UserError naming the fix when it or PortAudio is missing."""
    try:
        import sounddevice
    except (ImportError, OSError) as e:
        raise UserError(f"no audio I/O: PortAudio/sounddevice not available ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        f"{PORTAUDIO_FIX}") from None
    return sounddevice


def device_list(sd) -> str:
    """'index: name (in/out channels)' per device, '; '-joined (or a note that there are none)."""
    devs = list(sd.query_devices())
    if not devs:
        return "no audio devices found"
    return "; ".join(f"{i}: {d['name']} ({d['max_input_channels']} in, {d['max_output_channels']} out)"
                     for i, d in enumerate(devs))


def find_device(sd, spec, kind: str):
    """Device index for --input-device/--output-device `spec` (index or part of a name), None for the
    default; UserError listing the devices when nothing matches or it lacks `kind` channels."""
    devs = list(sd.query_devices())
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    if spec is None:
        default = sd.default.device[0 if kind == "input" else 1]
        if default is None or default < 0 or default >= len(devs) or devs[default][key] < 1:
            raise UserError(f"no default {kind} device; choose one with --{kind}-device ({device_list(sd)})")
        return None
    if str(spec).isdigit() and int(spec) < len(devs):
        matches = [int(spec)]
    else:
        matches = [i for i, d in enumerate(devs) if str(spec).lower() in d["name"].lower()]
    matches = [i for i in matches if devs[i][key] >= 1]
    if not matches:
        raise UserError(f"--{kind}-device {spec}: no such {kind} device; choose one of: {device_list(sd)}")
    return matches[0]


def run_live(args) -> int:
    """The sound card loop: callback -> resample to 16 kHz -> engine -> resample back; status every 0.5 s."""
    import soxr

    sd = import_sounddevice()
    dev_in, dev_out = find_device(sd, args.input_device, "input"), find_device(sd, args.output_device, "output")
    engine, fx = make_engine(args)
    R, B = args.samplerate, args.block
    dev_block = int(round(B * R / SR))
    rs_in = soxr.ResampleStream(R, SR, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    rs_out = soxr.ResampleStream(SR, R, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    fifo_in, fifo_out = np.zeros(0, np.float32), np.zeros(dev_block, np.float32)  # one block of slack
    gain, monitor = 10.0 ** (args.gain / 20.0), _monitor_gain(args.monitor)
    stats, lock = Stats(engine, B), threading.Lock()

    def callback(indata, outdata, frames, _time, status):
        nonlocal fifo_in, fifo_out
        t0 = time.perf_counter()
        if status:
            stats.xruns += 1
        mono = indata[:, 0].astype(np.float32)
        fifo_in = np.concatenate([fifo_in, rs_in.resample_chunk(mono)])
        while fifo_in.size >= B:
            block, fifo_in = fifo_in[:B], fifo_in[B:]
            fifo_out = np.concatenate([fifo_out, rs_out.resample_chunk(_guitar(engine, fx, block, gain))])
        n = min(frames, fifo_out.size)
        outdata[:] = 0
        outdata[:n, 0] = fifo_out[:n]
        fifo_out = fifo_out[n:]
        outdata[:, 0] += monitor * mono
        with lock:
            stats.add(time.perf_counter() - t0)      # a callback lasts one engine block

    extra = f" + {1e3 * 2 * dev_block / R:.0f} ms device buffers"
    try:
        with sd.Stream(samplerate=R, blocksize=dev_block, device=(dev_in, dev_out), channels=1, dtype="float32",
                       callback=callback, latency="low"):
            print(f"live: {engine.tracker.name} pitch, fx {args.fx}; CTRL+C stops", flush=True)
            while True:
                time.sleep(0.5)
                with lock:
                    line = stats.line(extra)
                print("\r" + line, end="", flush=True)
    except sd.PortAudioError as e:
        raise UserError(f"audio device error ({e}); check --input-device/--output-device/--samplerate "
                        f"({device_list(sd)})") from None
    except KeyboardInterrupt:
        print("\n" + stats.line(extra), flush=True)
        raise


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.block <= 0 or args.block % features.HOP:
        raise UserError(f"--block {args.block}: use a positive multiple of {features.HOP} (e.g. 256 = 16 ms)")
    parse_octave(args.octave)  # a bad --octave stops here, before any device or model is opened
    if args.list_devices:
        print(device_list(import_sounddevice()).replace("; ", "\n"))
        return 0
    if args.simulate:
        return run_simulation(args)
    if args.output or args.realtime:
        raise UserError("-o and --realtime go with --simulate IN.wav")
    return run_live(args)


def exit_now() -> None:
    """run_main, then leave through os._exit: a normal exit runs torch's C++ static destructors, which touch
    library pages and raise the process's peak RSS (measured in docs/experiments.md, "Live mode"). Output files
    are already written and closed. A SystemExit with a message (not a code) prints it, as Python would."""
    try:
        run_main(main)
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now()
