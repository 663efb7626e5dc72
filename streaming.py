"""Live voice -> guitar, block by block: the causal engine behind live.py.

`StreamingTransfer(model, block_size=256)` takes mono float32 blocks at 16 kHz and returns blocks of the
same length. Everything is causal and every piece of state is carried between blocks, so the output does
not depend on the block size:

    input ring --(per frame)--> loudness (features.compute_loudness on the frame's own 512-sample window)
               --(once per `pitch_every` frames)--> f0 + periodicity (features.live_pitch_tracker)
    --> CausalAdjust (octave, note gating, running loudness map onto the training quantiles, pluck envelope)
    --> model.decode (whole decoder steps, S frames per engine step, GRU state carried)
    --> model.synthesize (oscillator phases carried, noise FIR and amplitude ramps rendered with a margin
        of frames, as model.render_chunked does) --> PartitionedConvolver (the learned reverb IR, uniformly
        partitioned FFT convolution) --> output FIFO   (live.py adds the amp, effects.Effects)

Timing. The engine works on a fixed internal step of S frames, P = S * HOP samples (S = STEP_FRAMES = 4 rounded
up to whole decoder steps: 4 for the bundled stride-1 model and for stride-4 models; fewer, larger calls are
cheaper on the CPU, each frame of the step costs HOP samples of latency). Step j (frames
jS .. jS+S-1, frame i centred on input sample i*HOP) runs once the input reaches the last frame's centre plus
A = `lookahead` samples (256: half the loudness window, which is centred as in the offline definition; the
pitch tracker's window ends at most A past its frame). It emits the audio of frames jS - m .. jS + S - m - 1
(m = 2 frames of synthesis margin: the partial amplitudes ramp towards the next frame, the noise FIR is
centred). Emitting with a fixed delay of

    latency_samples = A + (m - 1) * HOP + P - g + (-E mod g),   g = gcd(block_size, P), E = P - HOP + A

(E: the input step j needs past its first sample, jP) means that every block finds its samples ready: g is the
grid on which block ends fall relative to the steps. Any block size (a multiple of HOP, g = HOP) gets
A + P + (m - 2) * HOP = 256 + 256 = 512 samples = 32 ms with the defaults; blocks that are whole steps (256,
512, 1024: g = P) wait for no partial step and get 384 samples = 24 ms. The block size only decides when audio
leaves and how late, never what it is: output sample t equals the offline rendering of the same (causal)
features at sample t - latency_samples (tests check both). On a sound card the block's own buffering (one
block) and the resamplers add to it (live.py).

Measured (an onset of a sung-like test tone in, the guitar's onset out, on the audio; bench.py's live section):
the default tracker (PESTO) answers within ~50 samples of latency_samples; CREPE tiny ~270 samples later, since
its periodicity passes the note gate one 16 ms pitch evaluation later.

Pitch is evaluated once per group of `pitch_every` frames (4 = every 16 ms), on the window that ends
`lookahead` after the group's last frame, and serves the whole group: a live tracker costs milliseconds per
evaluation, one per frame would not fit a 16 ms block on one CPU thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

import features
import notes

HOP = features.HOP
STEP_FRAMES = 4   # frames per internal step (256 samples): a decoder_stride-4 model's step; stride 1 runs 4 at once


class PartitionedConvolver:
    """Streaming linear convolution with a fixed kernel (uniformly partitioned overlap-save).

    The kernel [L] is cut into Q = ceil(L / B) partitions of B samples; each block of B input samples is
    transformed once (FFT of 2B), kept in a frequency-domain delay line of Q spectra, and the output block is
    the inverse FFT of sum_q X_{now-q} H_q (last B samples). Cost per block: one FFT pair + Q spectral
    multiply-adds, independent of how long the stream runs. Equals `synth.fft_convolve` truncated to the
    input's length (tests compare them).
    """

    def __init__(self, kernel: torch.Tensor, block: int):
        k = kernel.detach().reshape(-1).float()
        self.block = int(block)
        q = max(1, math.ceil(k.numel() / self.block))
        parts = torch.nn.functional.pad(k, (0, q * self.block - k.numel())).reshape(q, self.block)
        self.spectra = torch.fft.rfft(parts, 2 * self.block)          # [Q, B+1]
        self.reset()

    def reset(self) -> None:
        self.history = torch.zeros(len(self.spectra), self.block + 1, dtype=self.spectra.dtype)  # X_{now-q}
        self.previous = torch.zeros(self.block)
        self.head = 0

    def process(self, x: torch.Tensor) -> torch.Tensor:
        """x [B] float32 -> [B]: the convolution's next B samples."""
        spec = torch.fft.rfft(torch.cat([self.previous, x]), 2 * self.block)
        self.previous = x
        Q = len(self.spectra)
        self.head = (self.head + 1) % Q
        self.history[self.head] = spec
        order = (self.head - torch.arange(Q)) % Q                      # X_now, X_now-1, ...
        y = torch.fft.irfft((self.history[order] * self.spectra).sum(0), 2 * self.block)
        return y[self.block:]


# ------------------------------------------------------------------------------------------------
# Causal auto-adjust
# ------------------------------------------------------------------------------------------------

HIST_EDGES = np.arange(-features.LOUDNESS_RANGE_DB, 40.0 + 1e-9, 0.25)   # dB bins of the running statistics


def _histogram_quantiles(counts: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles (`levels` in 0..1) of values binned on HIST_EDGES with `counts` [len(edges)-1], linear
    inside a bin; [len(levels)] dB."""
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / max(counts.sum(), 1)
    keep = np.concatenate([[True], np.diff(cdf) > 0])               # strictly increasing for interp
    return np.interp(levels, cdf[keep], HIST_EDGES[keep])


@dataclass
class LiveSettings(notes.AdjustSettings):
    """Options of the causal auto-adjust (`CausalAdjust`; live.py's flags): transfer's `notes.AdjustSettings`
    (same fields and defaults; `pitch`, `floor_db` and `pluck_decay_db_per_s` are not used live), except that
    the octave is fixed at 0 unless asked for (None: auto, `notes.auto_octave` of the notes so far, at onsets)."""
    octave: int | None = 0


class CausalAdjust:
    """notes.adjust_features, frame by frame and causal: every decision uses only frames up to now.

    * octave: settings.octave, or auto: `notes.auto_octave` of the notes so far, re-decided at each onset.
    * note gating: a frame is a note when its periodicity >= threshold and its loudness is above a floor
      (the running 99th percentile of all frames - 40 dB, at least notes.ABS_FLOOR_DB); a note survives
      gaps of up to notes.TRACK_GAP_FRAMES frames. An onset is decided on the frame it happens.
    * loudness of note frames: `notes.quantile_map` from the running quantiles of the note frames seen so far
      (a histogram) onto the config's `loudness_quantiles` (mean/std as Gaussian quantiles without them),
      slope capped; non-note frames pushed `quiet_db` below the softest training note, with a ramp of
      notes.EDGE_RAMP_FRAMES after a note ends.
    * pluck envelope (envelope="pluck"): a note starts at a gating onset or where the pitch moves a semitone
      or more from the note's for PITCH_CHANGE_FRAMES frames; its level is the running maximum of the mapped
      loudness over its first notes.PLUCK_ATTACK_FRAMES frames, moved by the offset that puts the running
      median onset on the config's `pluck_envelope["onset_db_median"]`, plus `notes.pluck_curve`; capped by
      the running minimum of the mapped loudness since its peak + an accent of notes.ACCENT_DB decaying over
      notes.ACCENT_TAU_FRAMES (the offline rule without the dip filling, which needs the future).
    """

    PITCH_CHANGE_FRAMES = 4   # 16 ms: a pitch change is decided within one 256-sample block

    def __init__(self, config: dict, settings: LiveSettings = LiveSettings()):
        self.config, self.settings = config, settings
        self.levels = np.linspace(0.0, 1.0, notes.N_QUANTILES)
        q = config.get("loudness_quantiles")
        if q is not None and len(q) >= 2:
            q = np.asarray(q, np.float64)
            self.q_train = np.interp(self.levels, np.linspace(0, 1, q.size), q)
        else:
            from scipy.stats import norm
            z = norm.ppf(np.clip(self.levels, 0.01, 0.99))
            self.q_train = float(config["loudness_mean"]) + float(config["loudness_std"]) * z
        self.learned = config.get("pluck_envelope")
        self.attack = int(self.learned["attack_frames"]) if self.learned else notes.PLUCK_ATTACK_FRAMES
        self.reset()

    def reset(self) -> None:
        self.all_counts = np.zeros(len(HIST_EDGES) - 1)
        self.note_counts = np.zeros(len(HIST_EDGES) - 1)
        self.in_note, self.gap, self.since_end = False, 0, 10 ** 9
        self.onsets: list[float] = []
        self.offset = 0.0  # dB added to every note's level: training's median onset - the running median
        self.note_midis: list[float] = []
        self.octave = 0
        self.note = None   # current pluck: dict(t, level, peak_t, cap, midi, change)

    def _count(self, counts: np.ndarray, value: float) -> None:
        counts[min(max(np.searchsorted(HIST_EDGES, value, side="right") - 1, 0), len(counts) - 1)] += 1

    def step(self, f0_hz: np.ndarray, periodicity: np.ndarray, loudness_db: np.ndarray):
        """Frames in time order ([n] Hz, 0..1, dB) -> (f0 [n] Hz, loudness [n] dB) for the model. The
        running statistics are updated with all n frames first, then the map is built once for them."""
        s = self.settings
        f0 = np.asarray(f0_hz, np.float64) * 2.0 ** (s.semitones / 12.0)
        loud = np.asarray(loudness_db, np.float64)
        if not s.auto:
            return f0 * 2.0 ** (s.octave or 0), loud + s.loudness_db
        for v in loud:
            self._count(self.all_counts, v)
        floor = max(notes.ABS_FLOOR_DB, _histogram_quantiles(self.all_counts, np.array([0.99]))[0] - notes.FLOOR_RELATIVE_DB)
        state = []
        for per, v in zip(periodicity, loud):               # note gating, frame by frame
            voiced = per >= s.note_threshold and v >= floor
            onset = voiced and not self.in_note
            if voiced:
                self.in_note, self.gap = True, 0
            elif self.in_note:
                self.gap += 1
                if self.gap > notes.TRACK_GAP_FRAMES or v < floor:
                    self.in_note, self.since_end = False, 0
            if self.in_note:
                self._count(self.note_counts, v)
            else:
                self.since_end += 1
            state.append((self.in_note, onset, self.since_end))
        f0 = f0 * 2.0 ** np.array([self._octave(f, onset) for f, (_, onset, _) in zip(f0, state)], np.float64)
        if self.note_counts.sum() == 0:
            return f0, np.minimum(loud, self.q_train[0]) - s.quiet_db + s.loudness_db
        q_in = _histogram_quantiles(self.note_counts, self.levels)
        quiet = np.minimum(loud + self.q_train[0] - q_in[0], self.q_train[0]) - s.quiet_db
        mapped = notes.quantile_map(loud, q_in, self.q_train, s.max_slope)
        out = np.empty_like(loud)
        for k, (in_note, onset, since_end) in enumerate(state):
            if not in_note:
                self.note = None
                w = max(0.0, 1.0 - since_end / (notes.EDGE_RAMP_FRAMES + 1.0))
                out[k] = w * mapped[k] + (1.0 - w) * quiet[k]
            else:
                out[k] = self._pluck(mapped[k], f0[k], onset) if s.envelope == "pluck" else mapped[k]
        return f0, out + s.loudness_db

    def _octave(self, f0_hz: float, onset: bool) -> int:
        """The octave shift of a frame: settings.octave, or (None) `notes.auto_octave` of the pitches of the
        notes so far (each note's pitch at its onset frame) into the config's range, re-decided only at an
        onset, so it never changes inside a note and settles within the first notes."""
        if self.settings.octave is not None:
            return int(self.settings.octave)
        if onset:
            self.note_midis.append(float(features.hz_to_midi(max(f0_hz, 1.0))))
            self.octave = notes.auto_octave(self.note_midis[-50:], *notes.config_pitch_range(self.config))
        return self.octave

    def _pluck(self, mapped: float, f0_hz: float, onset: bool) -> float:
        """The causal pluck envelope of a note frame (mapped loudness dB -> dB)."""
        midi = float(features.hz_to_midi(max(f0_hz, 1.0)))
        n = self.note
        if n is not None and not onset:  # a new note where the pitch has left this one's for a while
            n["change"] = n["change"] + 1 if abs(midi - n["midi"]) >= 1.0 else 0
            onset = n["change"] >= self.PITCH_CHANGE_FRAMES
        if n is None or onset:
            n = self.note = {"t": 0, "level": mapped, "peak_t": 0, "cap": mapped, "midi": midi, "change": 0,
                             "curve": np.zeros(0)}
        elif n["t"] < self.attack and mapped > n["level"]:
            n.update(level=mapped, peak_t=n["t"], cap=mapped)
        if n["t"] == self.attack - 1:
            self.onsets.append(n["level"])
            median = self.learned.get("onset_db_median") if self.learned else None
            if median is not None:                      # changes only when an onset is added
                self.offset = float(median) - float(np.median(self.onsets[-50:]))
        n["cap"] = min(n["cap"], mapped)
        if n["t"] >= len(n["curve"]):                   # the note's curve, extended by doubling (amortised O(1))
            n["curve"] = notes.pluck_curve(max(2 * len(n["curve"]), 256), n["midi"], self.learned)
        y = n["level"] + self.offset + n["curve"][n["t"]]
        accent = notes.ACCENT_DB * math.exp(-(n["t"] - n["peak_t"]) / notes.ACCENT_TAU_FRAMES)
        n["t"] += 1
        return min(y, n["cap"] + accent)


# ------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------

class StreamingTransfer:
    """Voice blocks in, guitar blocks out, at 16 kHz (see the module docstring for the timing).

    Args:
        model: a NeuralGuitar (eval mode; its device is used).
        block_size: samples per `process` call, a multiple of HOP (64).
        pitch: a features.LIVE_PITCH_TRACKERS name, or a tracker object (features.live_pitch_tracker).
        octave: whole octaves added to the sung pitch, or "auto" (CausalAdjust._octave). settings: LiveSettings (its octave is replaced by
            `octave`); adjust=False: features go to the model unchanged apart from the octave.
        pitch_every: frames per pitch evaluation (a divisor of the step; gcd taken): one evaluation serves a
            group of frames and reads the window that ends `lookahead` after the group's LAST frame (the
            newest input the step may use), so a note's voicing is seen as early as the latency allows.
        seed: the synthesizer's noise.
        step_frames: frames per internal step (rounded up to whole decoder steps; default STEP_FRAMES):
            fewer, larger calls cost less CPU, each frame of it adds HOP samples of latency.
        record: keep the per-frame features and noise (`self.trace`) for tests and plots.
    """

    def __init__(self, model, block_size: int = 256, pitch=features.DEFAULT_LIVE_PITCH, octave: int | str = 0,
                 settings: LiveSettings | None = None, adjust: bool = True, pitch_every: int = 4,
                 seed: int = 0, record: bool = False, step_frames: int | None = None):
        if block_size <= 0 or block_size % HOP:
            raise ValueError(f"block_size must be a positive multiple of {HOP}, not {block_size}")
        self.model, self.block_size, self.record = model, int(block_size), record
        self.device = next(model.parameters()).device
        self.tracker = features.live_pitch_tracker(pitch, device=self.device) if isinstance(pitch, str) else pitch
        self.seed = seed
        settings = LiveSettings() if settings is None else settings
        octave = None if octave == "auto" else int(octave)
        self.settings = LiveSettings(**{**settings.__dict__, "octave": octave, "auto": adjust and settings.auto})
        S = model.stride
        self.S = S * max(1, math.ceil((step_frames or STEP_FRAMES) / S))  # frames per internal step: whole decoder steps
        self.P = self.S * HOP                                   # samples per internal step
        self.pitch_every = math.gcd(int(pitch_every), self.S)   # frames per pitch evaluation, dividing the step
        half = features.LOUDNESS_N_FFT // 2
        self.lookahead = HOP * math.ceil(max(half, self.tracker.lookahead) / HOP)
        self.margin = 1 + math.ceil(model.noise.delay / HOP)    # as model.render_chunked
        self.need = self.P - HOP + self.lookahead               # step j runs once the input reaches j*P + need
        g = math.gcd(self.block_size, self.P)                   # block ends, relative to the steps (module doc)
        self.latency_samples = self.lookahead + (self.margin - 1) * HOP + self.P - g + (-self.need) % g
        self.history_len = max(self.tracker.window, 2 * half) + self.P + self.lookahead + self.block_size
        ir = model.reverb.wet_ir().detach().float().cpu() if model.reverb is not None else None
        self.reverb = PartitionedConvolver(ir, self.P) if ir is not None else None
        self.adjust = CausalAdjust(model.config, self.settings)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the stream starts again from silence."""
        self.n_in = 0                                           # input samples received
        self.hist = np.zeros(self.history_len, np.float32)      # input [n_in - len, n_in)
        self.step = 0
        self.dec_state = self.phase = None
        self.buf: dict[str, torch.Tensor] = {}
        self.buf_start = self.emitted = 0
        self.out = np.zeros(0, np.float32)                      # synthesized audio from out_start on
        self.out_start = -self.margin * HOP
        self.emit_at = -self.latency_samples                    # next output sample to emit
        self.gen = torch.Generator().manual_seed(int(self.seed))
        self.adjust.reset()
        if self.reverb is not None:
            self.reverb.reset()
        self.trace = {"f0_in": [], "periodicity": [], "loudness_in": [], "f0_hz": [], "loudness_db": [], "white": []}

    # ---- input side ---------------------------------------------------------------------------------
    def _input(self, start: int, stop: int) -> np.ndarray:
        """Input samples [start, stop) (zeros before sample 0); must lie inside the ring."""
        a = start - (self.n_in - self.history_len)
        assert a >= 0 and stop <= self.n_in, "ring buffer too short"
        return self.hist[a: a + stop - start]

    def _features(self, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Loudness, f0 and periodicity of frames first .. first+S-1 ([S] each)."""
        S, half = self.S, features.LOUDNESS_N_FFT // 2
        seg = self._input(first * HOP - half, (first + S - 1) * HOP + half)
        loud = features.compute_loudness(seg)[half // HOP: half // HOP + S]  # frame half/HOP of seg = `first`
        E, la, w = self.pitch_every, self.tracker.lookahead, self.tracker.window
        ends = [(first + g * E + E - 1) * HOP + la for g in range(S // E)]   # each group's last frame + la
        win = np.stack([self._input(e - w, e) for e in ends])
        f0s, pers = self.tracker(torch.from_numpy(win))
        return loud, np.repeat(f0s, E).astype(np.float64), np.repeat(pers, E).astype(np.float64)

    # ---- one internal step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _run_step(self) -> None:
        """Features, adjust, decode and synthesize frames step*S .. step*S+S-1; appends P samples to self.out."""
        first, dev = self.step * self.S, self.device
        loud, f0, per = self._features(first)
        f0_a, ld_a = self.adjust.step(f0, per, loud)
        f0_m = torch.tensor(f0_a[None], dtype=torch.float32, device=dev)
        ld_m = torch.tensor(ld_a[None], dtype=torch.float32, device=dev)
        ctrl, self.dec_state = self.model.decode(f0_m, ld_m, self.dec_state)
        ctrl = {k: v.float() for k, v in ctrl.items()}
        ctrl["white"] = (torch.rand(1, self.P, generator=self.gen) * 2 - 1).to(dev)
        ctrl["f0"] = f0_m
        if self.record:
            for k, v in (("f0_in", f0), ("periodicity", per), ("loudness_in", loud), ("f0_hz", f0_m[0].cpu().numpy()),
                         ("loudness_db", ld_m[0].cpu().numpy()), ("white", ctrl["white"][0].cpu().numpy())):
                self.trace[k].append(np.asarray(v, np.float32))
        self.buf = ctrl if not self.buf else {k: torch.cat([self.buf[k], v], 1) for k, v in ctrl.items()}
        self.step += 1
        dry = self._synthesize()
        chunk = torch.zeros(self.P, device=dev)
        if dry.numel():
            chunk[self.P - dry.numel():] = dry
        wet = self.reverb.process(chunk.cpu()).to(dev) if self.reverb is not None else 0.0
        self.out = np.concatenate([self.out, (chunk + wet).cpu().numpy().astype(np.float32)])

    def _synthesize(self) -> torch.Tensor:
        """Dry audio of the frames that now have `margin` decoded frames after them (model.render_chunked's
        window: controls from `buf_start`, phases carried, the window slid by the frames emitted)."""
        decoded, hop, m = self.step * self.S, HOP, self.margin
        emit_end = max(decoded - m, 0)
        if emit_end <= self.emitted:
            return torch.zeros(0, device=self.device)
        hop_keys = ("white",)
        out = self.model.synthesize(self.buf, self.buf["f0"], self.buf["white"], initial_phase=self.phase)
        dry = out["dry"][0, (self.emitted - self.buf_start) * hop: (emit_end - self.buf_start) * hop]
        new_start = max(emit_end - m, 0)
        cut = new_start - self.buf_start
        self.phase = self.model._advance_phase(self.buf["f0"][:, :cut + 1], self.phase, cut)
        self.buf = {k: v[:, cut * hop:] if k in hop_keys else v[:, cut:] for k, v in self.buf.items()}
        self.buf_start, self.emitted = new_start, emit_end
        return dry

    # ---- the public side -----------------------------------------------------------------------------
    def process(self, block: np.ndarray) -> np.ndarray:
        """One block of voice [block_size] float32 (16 kHz) -> one block of guitar [block_size] float32,
        `latency_samples` later than the input it answers."""
        x = np.asarray(block, np.float32).reshape(-1)
        if x.size != self.block_size:
            raise ValueError(f"process takes blocks of {self.block_size} samples, got {x.size}")
        self.hist = np.concatenate([self.hist[x.size:], x])
        self.n_in += x.size
        while self.n_in >= self.step * self.P + self.need:
            self._run_step()
        start, n = self.emit_at, x.size
        if self.out_start + self.out.size < start + n:
            raise RuntimeError(f"latency_samples too small: block ends at output sample {start + n}, only "
                               f"{self.out_start + self.out.size} computed")
        y = np.zeros(n, np.float32)
        a = max(start, self.out_start)
        if a < start + n:
            y[a - start:] = self.out[a - self.out_start: start + n - self.out_start]
        done = start + n - self.out_start                       # drop what has been emitted
        if done > 0:
            self.out, self.out_start = self.out[done:], start + n
        self.emit_at += n
        return y

    def features_trace(self) -> dict:
        """The recorded per-frame features (record=True): dict of concatenated numpy arrays."""
        return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in self.trace.items()}
