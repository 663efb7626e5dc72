"""NeuralGuitar: pitch + loudness -> decoder -> harmonic + filtered-noise synth -> reverb -> audio.

The model is built from a plain config dict (`build_config`), and every checkpoint stores that dict,
so `load_model(path)` rebuilds the exact model with no flags. The config also carries the training
set's statistics (STATS_KEYS): loudness mean/std (input scaling) and, for transfer's auto-adjust, loudness
quantiles, pitch range and the plucked-note curve.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

import features
import synth
from lean_layers import ConcatLinear, LeanGRU
from utils import UserError, torch_load

MODEL_VERSION = 1

DEFAULT_CONFIG = {
    "version": MODEL_VERSION,
    "sample_rate": features.SAMPLE_RATE,
    "hop": features.HOP,
    "n_harmonics": 100,
    "n_noise_bands": 65,
    "decoder": "gru",            # "gru" (DDSP RnnFcDecoder) or "transformer" (local causal attention)
    "hidden_size": 512,
    "mlp_layers": 3,
    "transformer_layers": 4,
    "transformer_heads": 8,
    "attention_window": 250,     # frames a transformer layer looks back (1 s at 250 frames/s)
    "reverb": True,
    "reverb_seconds": 1.0,
    "learn_inharmonicity": True,
    "initial_inharmonicity": 1e-6,
    "noise_bias": -5.0,          # added before exp_sigmoid: noise starts quiet
    "decoder_stride": 4,         # control frames per decoder step (see NeuralGuitar.decode); 1 = every frame
    # training-set statistics (filled in by train.py from data.py)
    "loudness_mean": -40.0,      # dB
    "loudness_std": 20.0,        # dB
    "loudness_quantiles": None,  # 101 values, dB, of non-silent frames
    "mean_midi": 60.0,           # mean MIDI pitch of voiced frames
    "pitch_range_midi": None,    # [low, high] MIDI: 5th/95th percentile of voiced frames (auto octave's range)
    "pluck_envelope": None,      # note loudness after onset by pitch band (data.pluck_envelope_statistic)
}
# Keys added after checkpoints already existed: the value that rebuilds those older checkpoints exactly.
LEGACY_DEFAULTS = {"decoder_stride": 1}
STATS_KEYS = ("loudness_mean", "loudness_std", "loudness_quantiles", "mean_midi", "pitch_range_midi",
              "pluck_envelope")  # training-set statistics in the config



def build_config(**overrides) -> dict:
    """DEFAULT_CONFIG updated with `overrides`; an unknown key raises ValueError."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown model config keys: {sorted(unknown)}")
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(overrides)
    if cfg["decoder"] not in ("gru", "transformer"):
        raise ValueError(f"decoder must be 'gru' or 'transformer', not {cfg['decoder']!r}")
    return cfg


def mlp(in_size: int, hidden: int, layers: int, first=nn.Linear) -> nn.Sequential:
    """`layers` x (Linear -> LayerNorm -> LeakyReLU); the first Linear is a `first` (e.g. ConcatLinear)."""
    mods = []
    for i in range(layers):
        linear = first if i == 0 else nn.Linear
        mods += [linear(in_size if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(inplace=True)]
    return nn.Sequential(*mods)


def local_causal_mask(n_query: int, n_key: int, window: int, device) -> torch.Tensor:
    """Boolean attention mask [n_query, n_key]: True where query i (the last n_query of the keys)
    may attend key j, i.e. 0 <= pos(i) - j < window."""
    q = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None, :]
    d = q - k
    return (d >= 0) & (d < window)


class TransformerCore(nn.Module):
    """Pre-norm causal Transformer with local attention (each frame sees the last `window` frames).

    Streaming: the state is the last `layers * (window - 1)` input frames, enough context for every
    layer's output to equal the unchunked computation exactly.
    """

    def __init__(self, size: int, layers: int, heads: int, window: int):
        super().__init__()
        self.window, self.n_layers = window, layers
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(size, heads, dim_feedforward=2 * size, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(layers))

    @property
    def context(self) -> int:
        return self.n_layers * (self.window - 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """x: [B, F, size]; state: [B, <=context, size] previous inputs. Returns (y [B, F, size], state)."""
        n_new = x.shape[1]
        if state is not None:
            x = torch.cat([state, x], dim=1)
        new_state = x[:, -self.context:] if self.context > 0 else x[:, :0]
        mask = ~local_causal_mask(x.shape[1], x.shape[1], self.window, x.device)  # True = blocked
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        return x[:, -n_new:], new_state


class NeuralGuitar(nn.Module):
    """DDSP decoder + synthesizer.

    forward(f0_hz [B, F] Hz, loudness_db [B, F] dB) -> dict with
        audio [B, F*hop], harmonic [B, F*hop], noise [B, F*hop],
        amplitude [B, F, 1], harmonic_distribution [B, F, K], noise_magnitudes [B, F, N].
    """

    def __init__(self, config: dict):
        super().__init__()
        known = {k: v for k, v in config.items() if k in DEFAULT_CONFIG}
        cfg = build_config(**{**LEGACY_DEFAULTS, **known})
        self.config = cfg
        H, K, N, S = cfg["hidden_size"], cfg["n_harmonics"], cfg["n_noise_bands"], cfg["decoder_stride"]
        self.hop, self.stride = cfg["hop"], S
        self.f0_mlp = mlp(S, H, cfg["mlp_layers"])
        self.loudness_mlp = mlp(S, H, cfg["mlp_layers"])
        if cfg["decoder"] == "gru":
            self.core = LeanGRU(2 * H, H)  # nn.GRU(2H, H, batch_first=True), lean in CPU training
        else:
            self.core_in = ConcatLinear(2 * H, H)
            self.core = TransformerCore(H, cfg["transformer_layers"], cfg["transformer_heads"],
                                        cfg["attention_window"])
        self.out_mlp = mlp(3 * H, H, cfg["mlp_layers"], first=ConcatLinear)
        self.head = nn.Linear(H, S * (1 + K + N))
        self.harmonic = synth.HarmonicSynthesizer(K, cfg["sample_rate"], self.hop,
                                                  cfg["learn_inharmonicity"], cfg["initial_inharmonicity"])
        self.noise = synth.FilteredNoiseSynthesizer(N, self.hop)
        self.reverb = synth.Reverb(cfg["reverb_seconds"], cfg["sample_rate"]) if cfg["reverb"] else None

    @classmethod
    def from_config(cls, config: dict) -> "NeuralGuitar":
        return cls(config)

    # ---- decoder ---------------------------------------------------------------------------
    def scale_inputs(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor):
        """[B, F] Hz, dB -> two [B, F/S, S] network inputs (S = decoder_stride; F padded up to a multiple of
        S by repeating the last frame): MIDI/127 and standardised loudness, S frames per decoder step."""
        f0 = features.hz_to_midi(f0_hz.clamp_min(8.2)).clamp_min(0.0) / 127.0  # MIDI/127
        ld = (loudness_db - self.config["loudness_mean"]) / self.config["loudness_std"]
        pad = -f0.shape[1] % self.stride
        return [torch.cat([x, x[:, -1:].expand(-1, pad)], 1).unflatten(1, (-1, self.stride)) for x in (f0, ld)]

    def decode(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor, state=None):
        """Controls for every frame, like DDSP's RnnFcDecoder (H = hidden_size, K harmonics, N noise bands),
        one decoder step per S = decoder_stride frames (G = F/S steps):

            f0 [B, G, S] -> f0_mlp -> [B, G, H];  loudness [B, G, S] -> loudness_mlp -> [B, G, H]
            x = the two concatenated [B, G, 2H] -> GRU (or transformer) -> y [B, G, H]
            [y, x] [B, G, 3H] -> out_mlp -> [B, G, H] -> head -> [B, G, S (1 + K + N)] -> [B, F, 1 + K + N]
            -> exp_sigmoid

        A step reads its S frames stacked and writes controls for each of them, so nothing is interpolated
        and the synthesizer still gets every frame; the MLPs and the GRU run S times less often (their cost
        is most of a training step). A frame's controls see the rest of its step: S - 1 frames ahead.

        Args:
            f0_hz, loudness_db: [B, F] Hz, dB. state: decoder state from a previous chunk (GRU hidden
            [1, B, H] or transformer context), or None; chunks must be whole decoder steps (F a multiple
            of S) except the last, for the state to carry exactly.
        Returns:
            (controls dict: amplitude [B,F,1], harmonic_distribution [B,F,K], noise_magnitudes [B,F,N];
             new state)
        """
        f0, ld = self.scale_inputs(f0_hz, loudness_db)
        # A list of parts stands for their concatenation: the layers that read one (LeanGRU, ConcatLinear
        # in core_in and out_mlp) never build it, so CPU training keeps no copy of it (lean_layers.py).
        x = [self.f0_mlp(f0), self.loudness_mlp(ld)]
        if self.config["decoder"] == "gru":
            y, state = self.core(x, state)
        else:
            y, state = self.core(self.core_in(x), state)
        y = self.head(self.out_mlp([y, *x]))
        y = y.unflatten(2, (self.stride, -1)).flatten(1, 2)[:, :f0_hz.shape[1]]  # [B, F, 1 + K + N]
        K = self.config["n_harmonics"]
        controls = {
            "amplitude": synth.exp_sigmoid(y[..., :1]),
            "harmonic_distribution": synth.exp_sigmoid(y[..., 1:1 + K]),
            "noise_magnitudes": synth.exp_sigmoid(y[..., 1 + K:] + self.config["noise_bias"]),
        }
        return controls, state

    # ---- synthesis -------------------------------------------------------------------------
    def synthesize(self, controls: dict, f0_hz: torch.Tensor, white_noise=None, initial_phase=None,
                   return_phase: bool = False):
        """Dry audio (harmonic + noise, no reverb) for the frames in `controls`.

        f0_hz [B, F] Hz; white_noise [B, F*hop] or None. Returns dict(harmonic, noise, dry) [B, F*hop]
        (and `phase` [B, K] at the end when return_phase).
        """
        harmonic, phase = self.harmonic(controls["amplitude"], controls["harmonic_distribution"],
                                        f0_hz[..., None], initial_phase=initial_phase, return_phase=True)
        noise = self.noise(controls["noise_magnitudes"], white_noise)
        out = {"harmonic": harmonic, "noise": noise, "dry": harmonic + noise}
        if return_phase:
            out["phase"] = phase
        return out

    def forward(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor, white_noise=None) -> dict:
        controls, _ = self.decode(f0_hz, loudness_db)
        # The decoder may run under autocast (--amp); the DSP needs float32 (phase accuracy, FFTs).
        controls = {k: v.float() for k, v in controls.items()}
        with torch.autocast(f0_hz.device.type, enabled=False):
            out = self.synthesize(controls, f0_hz.float(), white_noise)
            out["audio"] = self.reverb(out["dry"]) if self.reverb is not None else out["dry"]
        out.update(controls)
        return out

    @torch.no_grad()
    def render_chunked(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor, chunk_frames: int = 2500,
                       white_noise: torch.Tensor | None = None, progress=None) -> torch.Tensor:
        """Render a long input in chunks with bounded memory; equals `forward` up to float rounding.

        The decoder runs chunk by chunk carrying its state (GRU hidden / transformer context). The
        synthesizer renders each chunk with `margin` (>= 2) frames of controls on both sides (a frame's
        partial amplitudes depend on f0 one frame back and two ahead through the Nyquist mask and the
        amplitude ramp, the noise FIR on half a filter length each way) and keeps the
        middle, carrying every partial's phase; the reverb carries its tail. Every frame's controls and
        white noise are made once, so seams are seamless (no change of noise realisation either).

        Args:
            f0_hz, loudness_db: [F] or [1, F]. white_noise: [1, F*hop] in [-1, 1], or None (drawn here).
            progress: optional callable(n_frames_done), e.g. a tqdm update.
        Returns:
            audio [1, F*hop].
        """
        f0_hz, loudness_db = f0_hz.reshape(1, -1), loudness_db.reshape(1, -1)
        n_total, hop = f0_hz.shape[1], self.hop
        margin = 1 + math.ceil(self.noise.delay / hop)
        chunk_frames = -(-max(chunk_frames, margin) // self.stride) * self.stride  # whole decoder steps
        buf: dict[str, torch.Tensor] = {}   # controls + "white" for frames [buf_start, decoded)
        buf_start = decoded = emitted = 0
        dec_state = phase = tail = None
        pieces = []
        while emitted < n_total:
            emit_end = min(emitted + chunk_frames, n_total)
            while decoded < min(emit_end + margin, n_total):  # decode ahead by the margin
                e = min(decoded + chunk_frames, n_total)
                ctrl, dec_state = self.decode(f0_hz[:, decoded:e], loudness_db[:, decoded:e], dec_state)
                ctrl["white"] = (torch.rand(1, (e - decoded) * hop, device=f0_hz.device) * 2 - 1
                                 if white_noise is None else white_noise[:, decoded * hop: e * hop])
                buf = ctrl if not buf else {k: torch.cat([buf[k], v], dim=1) for k, v in ctrl.items()}
                decoded = e
            hi = min(emit_end + margin, decoded)  # render frames [buf_start, hi)
            n = hi - buf_start
            ctrl = {k: v[:, : n * hop] if k == "white" else v[:, :n] for k, v in buf.items()}
            out = self.synthesize(ctrl, f0_hz[:, buf_start:hi], ctrl["white"], initial_phase=phase)
            dry = out["dry"][:, (emitted - buf_start) * hop: (emit_end - buf_start) * hop]
            if self.reverb is not None:
                dry, tail = self.reverb(dry, tail, return_tail=True)
            pieces.append(dry)
            # slide the window: the next render starts `margin` frames before the next emit range
            new_start = max(emit_end - margin, 0)
            phase = self._advance_phase(f0_hz[:, buf_start: new_start + 1], phase, new_start - buf_start)
            cut = new_start - buf_start
            buf = {k: v[:, cut * hop:] if k == "white" else v[:, cut:] for k, v in buf.items()}
            buf_start, emitted = new_start, emit_end
            if progress is not None:
                progress(emitted)
        return torch.cat(pieces, dim=1)

    def _advance_phase(self, f0_hz: torch.Tensor, phase, n_frames: int) -> torch.Tensor:
        """Phase of every partial after `n_frames` frames, given f0 [1, >= n_frames] (the frame after
        the last is used for the glide, held if absent). Same arithmetic as the synthesizer."""
        if n_frames == 0:
            return phase
        omega, domega = synth.fundamental_frequency(f0_hz[..., None], self.config["sample_rate"])
        _, final = synth.frame_phases(omega[:, :n_frames], domega[:, :n_frames], self.harmonic.ratios(),
                                      self.hop, phase)
        return final


def read_checkpoint(path, map_location="cpu", flag: str = "--checkpoint") -> dict:
    """A checkpoint's dict (weights_only=True), with at least `model` and a `config` dict.

    Raises UserError (one line: the file and what to do, naming the command-line `flag` that gave it)
    for a missing, unreadable or foreign file.
    """
    try:
        ckpt = torch_load(path, map_location=map_location)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found; point {flag} to an existing .pth file") from None
    except Exception as e:  # corrupt file, not a checkpoint, or unsafe pickle
        raise UserError(f"{path}: not a loadable checkpoint ({type(e).__name__}); re-download or retrain it") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path}: not a Neural Guitar checkpoint (needs 'model' and 'config')")
    return ckpt


def load_model(path, device="cpu") -> NeuralGuitar:
    """Rebuild a model from a checkpoint (`model` state_dict + `config`, `read_checkpoint`), in eval mode."""
    ckpt = read_checkpoint(path, map_location=device)
    if ckpt["config"].get("version", 0) != MODEL_VERSION:
        raise UserError(f"{path}: made by model version {ckpt['config'].get('version')}, this code is "
                        f"version {MODEL_VERSION}; retrain it with train.py")
    try:
        model = NeuralGuitar.from_config(ckpt["config"]).to(device)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: its config does not describe a model ({e}); retrain or re-download it") from None
    load_weights(model, ckpt["model"], path)
    return model.eval()


def load_weights(model: nn.Module, state_dict, path) -> None:
    """`model.load_state_dict(state_dict)`, with one-line UserErrors naming the file `path` for weights that
    do not fit the model built from the checkpoint's config (missing, unexpected or differently shaped
    tensors) and for non-finite weights (NaN or inf in any tensor)."""
    if not isinstance(state_dict, dict):
        raise UserError(f"{path}: its 'model' entry is not a state_dict; retrain or re-download it")
    expected = model.state_dict()
    shape = lambda v: list(v.shape) if torch.is_tensor(v) else type(v).__name__  # noqa: E731
    problems = [f"{k} is {shape(state_dict[k])} in the file, {shape(v)} for its config"
                for k, v in expected.items() if k in state_dict and shape(state_dict[k]) != shape(v)]
    problems += [f"{k} is missing" for k in expected if k not in state_dict]
    problems += [f"{k} is not part of the model" for k in state_dict if k not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{path}: weights do not match the config stored with them: {'; '.join(problems[:3])}"
                        f"{more}; retrain or re-download it")
    for k, v in state_dict.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"{path}: weight {k} holds NaN or inf values; retrain or re-download it")
    model.load_state_dict(state_dict)


def export_for_inference(checkpoint_path, out_path, info: dict | None = None) -> dict:
    """Write a small inference checkpoint from a training one: `model` weights, `config`, `version`
    and an optional `info` dict (how it was made); no optimizer/scheduler/RNG state.

    The output loads with `load_model` (weights_only=True). Returns the written dict.
    """
    from utils import atomic_torch_save

    model = load_model(checkpoint_path)
    payload = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "config": dict(model.config), "version": MODEL_VERSION, "info": dict(info or {})}
    atomic_torch_save(payload, out_path)
    return payload
