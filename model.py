"""NeuralGuitar: pitch + loudness -> decoder -> harmonic + filtered-noise synth -> reverb -> audio.

The model is built from a plain config dict (`build_config`), and every checkpoint stores that dict,
so `load_model(path)` rebuilds the exact model with no flags. The config also carries the training
set's statistics: loudness mean/std (input scaling) and loudness quantiles + mean pitch (transfer's
auto-adjust).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import features
import synth
from utils import UserError, torch_load

MODEL_VERSION = 1

DEFAULT_CONFIG = {
    "version": MODEL_VERSION,
    "sample_rate": 16000,
    "hop": 64,
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
    # training-set statistics (filled in by train.py from data.py)
    "loudness_mean": -40.0,      # dB
    "loudness_std": 20.0,        # dB
    "loudness_quantiles": None,  # 101 values, dB, of non-silent frames
    "mean_midi": 60.0,           # mean MIDI pitch of voiced frames
    "pluck_envelope": None,      # note loudness after onset by pitch band (data.pluck_envelope_statistic)
}
STATS_KEYS = ("loudness_mean", "loudness_std", "loudness_quantiles", "mean_midi", "pluck_envelope")  # training-set statistics in the config

ARCHITECTURE_KEYS = ("sample_rate", "hop", "n_harmonics", "n_noise_bands", "decoder", "hidden_size",
                     "mlp_layers", "transformer_layers", "transformer_heads", "attention_window",
                     "reverb", "reverb_seconds")


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


def mlp(in_size: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` x (Linear -> LayerNorm -> LeakyReLU)."""
    mods = []
    for i in range(layers):
        mods += [nn.Linear(in_size if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(inplace=True)]
    return nn.Sequential(*mods)


def local_causal_mask(n_query: int, n_key: int, window: int, device) -> torch.Tensor:
    """Boolean attention mask [n_query, n_key]: True where query i (the last n_query of the keys)
    may attend key j, i.e. 0 <= pos(i) - j < window."""
    q = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None, :]
    d = q - k
    return (d >= 0) & (d < window)


class _GRURecurrence(torch.autograd.Function):
    """The recurrent half of `nn.GRU` (PyTorch's equations and gate order r, z, n) with a lean backward.

        r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z),  n = tanh(gi_n + r * gh_n),
        h_t = (1 - z) * n + z * h_{t-1},  where gh = h_{t-1} W_hh^T + b_hh

    Inputs: gi [B, F, 3H] (= x W_ih^T + b_ih for all frames, computed outside with one matmul), h0 [B, H],
    w_hh [3H, H], b_hh [3H]. Output: h for every frame [B, F, H].
    Only gi and the outputs are kept for backward; the gates are recomputed frame by frame there
    (one extra [B, H] x [H, 3H] matmul per frame). PyTorch's CPU GRU instead keeps every gate of
    every frame: 343 MB against ~130 MB at batch 16 x 1000 frames x 512, and measured no slower.
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
            _, _, z, n = _GRURecurrence._gates(gi[:, t], h, w_hh, b_hh)
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
            gh, r, z, n = _GRURecurrence._gates(gi[:, t], h_prev, w_hh, b_hh)
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


def split_linear(parts, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(torch.cat(parts, -1), weight, bias)` without making the concatenation.

    parts: tensors [..., I_i] with sum(I_i) = weight's in-features; returns [..., O]. Each part meets its
    own columns of the weight through a chain of `addmm`s, so autograd keeps the parts themselves (which
    their producers keep anyway) instead of a concatenated copy (62.5 MB for the GRU input at batch
    16 x 4 s), at the same speed. (Adding in place instead would make backward copy the gradient.)
    Under autocast it concatenates after all: the chain would round every partial sum to bfloat16, and
    autocast keeps bfloat16 copies of the parts anyway.
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


def run_gru(gru: nn.GRU, x, h0: torch.Tensor | None = None):
    """`gru(x, h0)` for a one-layer batch-first nn.GRU: x [B, F, I] (or a list of parts [B, F, I_i]
    that make it up when concatenated), h0 [1, B, H] or None -> (y [B, F, H], h [1, B, H]).

    When gradients are needed on CPU (training), the recurrence runs through `_GRURecurrence`, which
    keeps far less for backward than PyTorch's CPU GRU, and the input projection reads the parts
    through `split_linear`; elsewhere (inference, CUDA's cuDNN GRU, autocast) it is `gru` itself. Both
    compute the same equations with the same weights.
    """
    parts = [x] if isinstance(x, torch.Tensor) else list(x)
    lean = (torch.is_grad_enabled() and parts[0].device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and (any(p.requires_grad for p in parts) or gru.weight_hh_l0.requires_grad))
    if not lean:
        return gru(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1), h0)
    gi = split_linear(parts, gru.weight_ih_l0, gru.bias_ih_l0)  # [B, F, 3H]: all frames in one go
    h_init = gi.new_zeros(gi.shape[0], gru.hidden_size) if h0 is None else h0[0]
    y = _GRURecurrence.apply(gi, h_init, gru.weight_hh_l0, gru.bias_hh_l0)
    return y, y[:, -1][None]


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
        cfg = build_config(**{k: v for k, v in config.items() if k in DEFAULT_CONFIG})
        self.config = cfg
        H, K, N = cfg["hidden_size"], cfg["n_harmonics"], cfg["n_noise_bands"]
        self.hop = cfg["hop"]
        self.f0_mlp = mlp(1, H, cfg["mlp_layers"])
        self.loudness_mlp = mlp(1, H, cfg["mlp_layers"])
        if cfg["decoder"] == "gru":
            self.core = nn.GRU(2 * H, H, batch_first=True)
        else:
            self.core_in = nn.Linear(2 * H, H)
            self.core = TransformerCore(H, cfg["transformer_layers"], cfg["transformer_heads"],
                                        cfg["attention_window"])
        self.out_mlp = mlp(3 * H, H, cfg["mlp_layers"])
        self.head = nn.Linear(H, 1 + K + N)
        self.harmonic = synth.HarmonicSynthesizer(K, cfg["sample_rate"], self.hop,
                                                  cfg["learn_inharmonicity"], cfg["initial_inharmonicity"])
        self.noise = synth.FilteredNoiseSynthesizer(N, self.hop)
        self.reverb = synth.Reverb(cfg["reverb_seconds"], cfg["sample_rate"]) if cfg["reverb"] else None

    @classmethod
    def from_config(cls, config: dict) -> "NeuralGuitar":
        return cls(config)

    # ---- decoder ---------------------------------------------------------------------------
    def scale_inputs(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor):
        """[B, F] Hz, dB -> two [B, F, 1] network inputs: MIDI/127 and standardised loudness."""
        f0 = features.hz_to_midi(f0_hz.clamp_min(8.2)).clamp_min(0.0)[..., None] / 127.0  # MIDI/127
        ld = ((loudness_db - self.config["loudness_mean"]) / self.config["loudness_std"])[..., None]
        return f0, ld

    def decode(self, f0_hz: torch.Tensor, loudness_db: torch.Tensor, state=None):
        """Controls for every frame.

        Args:
            f0_hz, loudness_db: [B, F]. state: decoder state from a previous chunk (GRU hidden
            [1, B, H] or transformer context), or None.
        Returns:
            (controls dict: amplitude [B,F,1], harmonic_distribution [B,F,K], noise_magnitudes [B,F,N];
             new state)
        """
        f0, ld = self.scale_inputs(f0_hz, loudness_db)
        # x = [f0 features, loudness features] ([B, F, 2H]): the layers that read it (core input, out_mlp's
        # first Linear, which reads [core output, x]) take its parts through `split_linear`, so CPU float32
        # training keeps no concatenated copies for backward (62.5 + 94 MB at batch 16 x 4 s).
        x = [self.f0_mlp(f0), self.loudness_mlp(ld)]
        if self.config["decoder"] == "gru":
            y, state = run_gru(self.core, x, state)
        else:
            y, state = self.core(split_linear(x, self.core_in.weight, self.core_in.bias), state)
        first = self.out_mlp[0]
        y = self.head(self.out_mlp[1:](split_linear([y, *x], first.weight, first.bias)))
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
        chunk_frames = max(chunk_frames, margin)
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
    model = NeuralGuitar.from_config(ckpt["config"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval()


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
