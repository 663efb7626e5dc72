"""The amp and effects after the synthesizer: an electric guitar goes through an amp.

Shared by transfer.py (offline, default `--fx none` so its evaluation stays comparable) and live.py
(block by block). Built from Spotify's pedalboard (JUCE DSP); all audio is mono float32 `[T]`.

Presets (`--fx`; each is a small function below returning a list of pedalboard plugins):

| preset   | sound                                                                                         |
|----------|-----------------------------------------------------------------------------------------------|
| `none`   | identity: the input comes back unchanged, bit for bit (no gate, no limiter)                   |
| `clean`  | gate, gentle compressor, cabinet, light chorus and a small room: a clean amp channel         |
| `crunch` | gate, compressor, tanh drive, mid-forward cabinet, a little room: rhythm crunch               |
| `lead`   | gate, compressor, hard drive, mid boost, cabinet, slap delay and a larger room: a solo sound  |

Every preset starts with a noise gate (`GATE_THRESHOLD_DB`: the synthesizer's noise floor and the
reverb tail of the learned impulse response between notes are shut off) and ends with the output stage:
a per-preset gain, then a peak limiter: pedalboard's Compressor at LIMITER_THRESHOLD_DB with ratio
1000:1 and an instant (0 ms) attack, so every sample's gain follows its own peak and the output peak is at
most 10^(-1/20) * (input peak / 10^(-1/20))^(1/1000): below 0.9 for any input peak up to +60 dBFS.
Nothing is hard-clipped. (JUCE's own Limiter was not used: it adds 3.75 dB + |threshold| of make-up gain after its
compressors and hard-clips at 0 dBFS, so sudden onsets above about -5 dBFS were clipped.) The per-preset
gains bring a pluck phrase at -18 dBFS RMS out at about -18 dBFS RMS.

Units: levels and gains in dB (dBFS for thresholds), frequencies in Hz, times in ms (the delay in s,
pedalboard's unit). The drive runs at the project's 16 kHz without oversampling, so tanh harmonics
above 8 kHz fold back: for sines of 440-1500 Hz at -15 dBFS RMS, the energy off the harmonics measured
60-87 dB (crunch) and 38-43 dB (lead) below the energy on them.

`--fx_plugin PATH` runs the user's own VST3 (or Audio Unit, on macOS) after the preset's effects and
before the output stage (with `--fx none` and a plugin: the plugin, then the output stage). A plugin
that only takes stereo gets the mono signal on both channels; its output channels are averaged.

State: `Effects.process(block)` keeps every plugin's state between calls (pedalboard's
`process(..., reset=False)`: gate and compressor envelopes, filter memories, chorus LFO phase, delay
line, reverb tail), so a file processed in blocks of any size gives the same samples as in one go
(the built-in presets agree to float rounding). `reset()` clears the state. A plugin that pedalboard
runs with latency compensation (e.g. its BrickwallLimiter with look-ahead) returns fewer samples than it
was given at first; `process` fills the shortfall with leading zeros so every block keeps its length:
the output is late by the plugin's latency, as it is live. (A VST3 normally returns every block whole,
its latency already inside the audio.)
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pedalboard as pb

from utils import UserError

PRESETS = ("none", "clean", "crunch", "lead")
LIVE_DEFAULT = "clean"   # live.py's --fx (transfer.py keeps "none" so its evaluation stays comparable)
PRESET_DESCRIPTIONS = {
    "none": "no effects (the synthesizer's output unchanged)",
    "clean": "clean amp channel: compressor, cabinet, light chorus, small room",
    "crunch": "crunchy rhythm amp: tanh drive, mid-forward cabinet, a little room",
    "lead": "lead amp: hard drive, mid boost, cabinet, slap delay, larger room",
}

GATE_THRESHOLD_DB = -60.0   # dBFS; below it the gate closes (ratio GATE_RATIO: -10 dB in -> -90 dB out)
GATE_RATIO = 10.0
LIMITER_THRESHOLD_DB = -1.0  # dBFS, the output ceiling (peak limiter: ratio 1000:1, instant attack)
LIMITER_RELEASE_MS = 100.0


def _gate_and_compressor(threshold_db: float, ratio: float) -> list:
    """Noise gate (closes below GATE_THRESHOLD_DB) then a compressor (threshold dBFS, ratio x:1)."""
    return [
        pb.NoiseGate(threshold_db=GATE_THRESHOLD_DB, ratio=GATE_RATIO, attack_ms=1.0, release_ms=100.0),
        pb.Compressor(threshold_db=threshold_db, ratio=ratio, attack_ms=10.0, release_ms=150.0),
    ]


def _cabinet(low_cut_hz: float, high_cut_hz: float, mid_hz: float, mid_db: float) -> list:
    """A speaker cabinet, roughly: first-order high-pass at `low_cut_hz`, a peaking bell at `mid_hz`
    (`mid_db`, Q 0.8), and two first-order low-passes at `high_cut_hz` (-12 dB/octave above it)."""
    return [
        pb.HighpassFilter(cutoff_frequency_hz=low_cut_hz),
        pb.PeakFilter(cutoff_frequency_hz=mid_hz, gain_db=mid_db, q=0.8),
        pb.LowpassFilter(cutoff_frequency_hz=high_cut_hz),
        pb.LowpassFilter(cutoff_frequency_hz=high_cut_hz),
    ]


def clean_chain() -> list:
    """`clean`: gate, 3:1 compressor, bright cabinet (80 Hz-5 kHz), light chorus, small room."""
    return [
        *_gate_and_compressor(threshold_db=-24.0, ratio=3.0),
        *_cabinet(low_cut_hz=80.0, high_cut_hz=5000.0, mid_hz=2500.0, mid_db=2.0),
        pb.Chorus(rate_hz=0.8, depth=0.15, centre_delay_ms=7.0, feedback=0.0, mix=0.3),
        pb.Reverb(room_size=0.3, damping=0.5, wet_level=0.12, dry_level=0.9),
    ]


def crunch_chain() -> list:
    """`crunch`: gate, 4:1 compressor, tanh drive (+24 dB), mid-forward cabinet (100 Hz-4.5 kHz, +3 dB
    at 800 Hz), a little room."""
    return [
        *_gate_and_compressor(threshold_db=-24.0, ratio=4.0),
        pb.Distortion(drive_db=24.0),
        *_cabinet(low_cut_hz=100.0, high_cut_hz=4500.0, mid_hz=800.0, mid_db=3.0),
        pb.Reverb(room_size=0.25, damping=0.6, wet_level=0.08, dry_level=0.95),
    ]


def lead_chain() -> list:
    """`lead`: gate, 4:1 compressor, hard tanh drive (+30 dB), +5 dB mid boost at 1 kHz in a darker
    cabinet (100 Hz-4 kHz), slap delay (350 ms, 25 % feedback) and a larger room."""
    return [
        *_gate_and_compressor(threshold_db=-24.0, ratio=4.0),
        pb.Distortion(drive_db=30.0),
        *_cabinet(low_cut_hz=100.0, high_cut_hz=4000.0, mid_hz=1000.0, mid_db=5.0),
        pb.Delay(delay_seconds=0.35, feedback=0.25, mix=0.2),
        pb.Reverb(room_size=0.5, damping=0.5, wet_level=0.15, dry_level=0.9),
    ]


_CHAINS = {"clean": clean_chain, "crunch": crunch_chain, "lead": lead_chain}
# dB before the limiter, set so a Karplus-Strong pluck phrase at -18 dBFS RMS leaves at about -18 dBFS RMS
_OUTPUT_GAIN_DB = {"none": 0.0, "clean": 5.0, "crunch": -19.5, "lead": -21.0}


def output_stage(gain_db: float) -> list:
    """Gain (dB) then a peak limiter at LIMITER_THRESHOLD_DB (0 ms attack): the output peak is < 1.0."""
    limiter = pb.Compressor(threshold_db=LIMITER_THRESHOLD_DB, ratio=1000.0, attack_ms=0.0,
                            release_ms=LIMITER_RELEASE_MS)
    return [pb.Gain(gain_db=gain_db), limiter]


def check_preset(preset: str) -> str:
    """`preset` if it is one of PRESETS, else a UserError naming the choices."""
    if preset not in PRESETS:
        raise UserError(f"unknown effects preset {preset!r}: use one of {', '.join(PRESETS)}")
    return preset


def load_plugin(path: str | os.PathLike):
    """Load the user's VST3 (or, on macOS, Audio Unit) effect plugin with pedalboard.load_plugin.

    A missing file, a file that is not a plugin, a plugin that fails to load or an instrument plugin
    raise a one-line UserError naming the file and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"effects plugin {path} not found: give the path of a VST3 plugin (.vst3, or an "
                        f"Audio Unit .component on macOS) with --fx_plugin")
    try:
        plugin = pb.load_plugin(str(path))
    except (ImportError, RuntimeError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(e).__name__
        raise UserError(f"effects plugin {path} could not be loaded ({reason}): give a VST3 effect "
                        f"plugin (or an Audio Unit on macOS) built for this system") from None
    if plugin.is_instrument:
        raise UserError(f"effects plugin {path} is an instrument, not an audio effect: give an effect "
                        f"plugin such as an amp simulator")
    return plugin


def _pad_front(y: np.ndarray, length: int) -> np.ndarray:
    """`y` [n <= length] with leading zeros up to `length` samples (a plugin's latency shortfall)."""
    missing = length - y.shape[-1]
    return np.concatenate([np.zeros(missing, dtype=np.float32), y]) if missing > 0 else y


class Effects:
    """Streaming amp/effects: `process(block [T] float32) -> [T] float32`, state kept between blocks.

    preset: one of PRESETS. sample_rate: Hz of the audio given to `process`. plugin: None, a path to
    the user's VST3/AU plugin (loaded with `load_plugin`), or an already-loaded pedalboard Plugin;
    it runs after the preset's effects and before the output stage. With preset "none" and no plugin,
    `process` returns its input itself (no copy), bit-exact.
    """

    def __init__(self, preset: str = "none", sample_rate: float = 16000, plugin=None):
        self.preset = check_preset(preset)
        self.sample_rate = float(sample_rate)
        self.plugin = load_plugin(plugin) if isinstance(plugin, (str, os.PathLike)) else plugin
        self.is_identity = self.preset == "none" and self.plugin is None
        self._chain = pb.Pedalboard(_CHAINS[self.preset]()) if self.preset != "none" else None
        self._output = None if self.is_identity else pb.Pedalboard(output_stage(_OUTPUT_GAIN_DB[self.preset]))
        self._plugin_channels = 1   # becomes 2 if the plugin refuses mono

    @property
    def description(self) -> str:
        """One line for logs and status lines, e.g. 'crunch (crunchy rhythm amp: ...) + plugin X'."""
        text = f"{self.preset} ({PRESET_DESCRIPTIONS[self.preset]})"
        return text + (f" + plugin {getattr(self.plugin, 'name', self.plugin)}" if self.plugin else "")

    def process(self, block: np.ndarray) -> np.ndarray:
        """Run one block [T] float32 (any T) through the effects; returns [T] float32."""
        x = np.asarray(block, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"Effects.process takes mono audio [T], got shape {x.shape}")
        if self.is_identity or x.size == 0:
            return x
        y = self._chain.process(x, self.sample_rate, reset=False) if self._chain is not None else x
        if self.plugin is not None:
            y = self._run_plugin(y)
        return self._output.process(y, self.sample_rate, reset=False)

    def _run_plugin(self, y: np.ndarray) -> np.ndarray:
        """The user's plugin on [T]; a stereo-only plugin gets [2, T] (copies) and its mean comes back."""
        if self._plugin_channels == 1:
            try:
                return _pad_front(np.asarray(self.plugin.process(y, self.sample_rate, reset=False),
                                             dtype=np.float32).reshape(-1), y.size)
            except (ValueError, RuntimeError) as e:
                if "channel" not in str(e):
                    raise
                self._plugin_channels = 2
        out = self.plugin.process(np.stack([y, y]), self.sample_rate, reset=False)
        return _pad_front(np.asarray(out, dtype=np.float32).mean(axis=0), y.size)

    def reset(self) -> None:
        """Forget all state (envelopes, filter memories, LFO phase, delay line, reverb tail)."""
        for board in (self._chain, self.plugin, self._output):
            if board is not None:
                board.reset()


def apply(audio: np.ndarray, sample_rate: float, preset: str, plugin=None) -> np.ndarray:
    """Whole-file helper: `audio` [T] float32 through a fresh Effects(preset, sample_rate, plugin)."""
    return Effects(preset, sample_rate, plugin).process(audio)


def add_fx_arguments(parser: argparse.ArgumentParser, default: str = "none") -> None:
    """Add `--fx {none,clean,crunch,lead}` (default `default`) and `--fx_plugin PATH` to `parser`."""
    presets = "; ".join(f"{name}: {text}" for name, text in PRESET_DESCRIPTIONS.items())
    parser.add_argument("--fx", choices=PRESETS, default=default,
                        help=f"amp and effects after the synthesizer ({presets})")
    parser.add_argument("--fx_plugin", metavar="PATH", default=None,
                        help="your own VST3 (or macOS Audio Unit) effect plugin, e.g. an amp simulator; "
                             "runs after the --fx preset, before the output limiter")


def from_args(args: argparse.Namespace, sample_rate: float) -> Effects:
    """Effects from the flags added by add_fx_arguments (loads --fx_plugin; UserError if it fails)."""
    return Effects(args.fx, sample_rate, args.fx_plugin)
