"""Train Neural Guitar on preprocessed feature files.

    python train.py --data_dir data/processed/guitarset            # train (or resume: same command)
    python train.py --data_dir data/processed/guitarset --fresh    # start over (old checkpoints kept aside)
    torchrun --standalone --nproc_per_node 2 train.py --data_dir ...   # several GPUs (DDP)
    python train.py --data_dir data/processed/guitarset --update_stats checkpoints/best.pth
        # no training: recompute the training-set statistics in that checkpoint's config (e.g. add one
        # introduced after it was trained); see data.refresh_checkpoint_statistics

What it does, in order: read the crops (data.py), build the model (model.py) with the training set's
loudness/pitch statistics in its config, then Adam on the multi-resolution STFT loss (loss.py) between
each crop and its resynthesis from the crop's own f0 and loudness.

Files, all under --checkpoint_dir (default checkpoints/):
    latest.pth          every epoch, every --save_every_steps steps, and on CTRL+C: the resume point
    model_epoch_N.pth   every --save_every epochs (N = epochs done); only the last --keep_last are kept
    best.pth            the epoch with the lowest validation loss so far
    wandb/              W&B run files (offline runs are uploaded later with `wandb sync`)
Every checkpoint holds model, optimizer, scheduler, epoch, step, config (model sizes + dataset stats),
rng states, wandb_run_id and version; each is written atomically (a reader never sees half a file).

Resume: running the same command again continues from latest.pth exactly where it stopped, mid-epoch
included: crops are a pure function of (seed, epoch, index) (data.py), the batch order of an epoch is a
pure function of (seed, epoch) (DistributedSampler), the batches already done are skipped without being
loaded, and the RNG states (noise synthesis) come from the checkpoint. So a run interrupted and resumed
ends with the same weights as a run that was never interrupted (tests/test_train.py checks this).
Validation and audio logging run under a forked RNG, so they do not disturb training's random stream.

Epoch, step: `step` counts batches (optimizer steps plus skipped non-finite ones); `epoch` in a
checkpoint is the number of finished epochs and `batch_in_epoch` how far the next one got.

Learning rate: lr * lr_decay ** (step / lr_decay_steps), updated every step (DDSP's exponential decay:
x0.98 per 10k steps by default); --lr_decay 1 keeps it constant.

CTRL+C / SIGTERM: finish the current step, save latest.pth, close W&B, exit 130. A second CTRL+C quits at
once (writes are atomic, so the previous latest.pth stays valid).

DDP: under torchrun (env RANK / WORLD_SIZE / LOCAL_RANK) each process trains on its DistributedSampler
shard; --batch_size is per process. NCCL on CUDA, gloo on CPU. Only rank 0 validates, logs, saves and
shows the progress bar.
"""
from __future__ import annotations

import argparse
import io
import math
import netrc
import os
import random
import secrets
import shutil
import signal
import string
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import model as models
from data import NeuralGuitarDataset, refresh_checkpoint_statistics
from features import HOP, SAMPLE_RATE
from loss import MultiResolutionSTFTLoss
from utils import (HelpFormatter, UserError, add_device_arguments, apply_threads, atomic_path, pick_device,
                   run_main, torch_load)

CHECKPOINT_VERSION = 1
STATS_KEYS = ("loudness_mean", "loudness_std", "loudness_quantiles", "mean_midi", "pluck_envelope")
# model config keys exposed as flags: everything in model.DEFAULT_CONFIG except what the data fixes
MODEL_FLAG_KEYS = tuple(k for k in models.DEFAULT_CONFIG
                        if k not in ("version", "sample_rate", "hop") + STATS_KEYS)
# training settings that must match the checkpoint for a resume to continue the same run
RESUME_KEYS = ("batch_size", "crop_seconds", "seed", "val_fraction", "lr", "lr_decay", "lr_decay_steps",
               "grad_clip")
MODEL_FLAG_HELP = {
    "decoder": "decoder core: gru (DDSP RnnFcDecoder) or transformer (local causal attention)",
    "hidden_size": "decoder width (MLPs and GRU/transformer)",
    "n_harmonics": "harmonic oscillators in the synthesizer",
    "n_noise_bands": "filtered-noise bands (0 Hz .. Nyquist)",
    "mlp_layers": "layers of each decoder MLP",
    "transformer_layers": "transformer decoder: layers",
    "transformer_heads": "transformer decoder: attention heads",
    "attention_window": "transformer decoder: frames each layer looks back",
    "reverb": "learnable reverb (impulse response) after the synth",
    "reverb_seconds": "reverb impulse response length",
    "learn_inharmonicity": "learn the string stiffness B (partial k at k*f0*sqrt(1+B*k^2))",
    "initial_inharmonicity": "starting value of B",
    "noise_bias": "added to the noise gains before exp_sigmoid (negative = starts quiet)",
}


# ---- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\nSee the module docstring "
                                "(or README, Training) for files, resume, W&B and DDP.",
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", default="data/processed", help="folder of .pt files from preprocess.py (searched recursively)")
    g.add_argument("--crop_seconds", type=float, default=4.0, help="training crop length")
    g.add_argument("--val_fraction", type=float, default=0.1, help="share of files held out for validation (split by file-name hash)")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes (0 = load in the main process)")
    g.add_argument("--update_stats", metavar="CHECKPOINT", default=None,
                   help="do not train: recompute the training-set statistics in CHECKPOINT's config from "
                        "--data_dir's training split (--val_fraction), e.g. to add pluck_envelope to a model "
                        "trained before it existed; weights untouched, written atomically "
                        "(data.refresh_checkpoint_statistics)")

    g = p.add_argument_group("model (stored in the checkpoint; must match it to resume)")
    for key in MODEL_FLAG_KEYS:
        default = models.DEFAULT_CONFIG[key]
        help_ = MODEL_FLAG_HELP.get(key, "model config (model.DEFAULT_CONFIG)")
        if isinstance(default, bool):
            g.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif key == "decoder":
            g.add_argument("--decoder", choices=("gru", "transformer"), default=default, help=help_)
        elif isinstance(default, (int, float, str)):
            g.add_argument(f"--{key}", type=type(default), default=default, help=help_)

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=16, help="crops per step (per process under torchrun)")
    g.add_argument("--epochs", type=int, default=100, help="total epochs (a resumed run stops at the same total)")
    g.add_argument("--max_steps", type=int, default=0, help="stop after this many steps in total (0 = no limit)")
    g.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    g.add_argument("--lr_decay", type=float, default=0.98, help="exponential decay: lr x this every --lr_decay_steps (applied smoothly per step)")
    g.add_argument("--lr_decay_steps", type=int, default=10000, help="steps per --lr_decay factor")
    g.add_argument("--grad_clip", type=float, default=3.0, help="clip the gradient norm to this (0 = off)")
    g.add_argument("--max_nan_steps", type=int, default=20, help="stop after this many consecutive steps with a non-finite loss (each is skipped)")
    g.add_argument("--seed", type=int, default=0, help="seeds model init, crops, batch order and noise")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision for the decoder (the DSP and the loss stay float32): bfloat16 on CPU "
                        "(~1.9x faster steps at the default size on CPUs with AVX512-BF16/AMX) and on CUDA where "
                        "supported, else float16 with loss scaling")
    g.add_argument("--deterministic", action="store_true", help="deterministic kernels (torch.use_deterministic_algorithms); slower on GPU")
    g.add_argument("--debug_nan_steps", default="", help=argparse.SUPPRESS)  # test hook: "3,4" -> NaN loss at those steps

    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint_dir", default="checkpoints", help="where latest.pth, model_epoch_N.pth, best.pth and wandb/ go")
    g.add_argument("--save_every", type=int, default=1, help="write model_epoch_N.pth every this many epochs")
    g.add_argument("--save_every_steps", type=int, default=0, help="also write latest.pth every this many steps (0 = only at epoch ends and on exit)")
    g.add_argument("--keep_last", type=int, default=5, help="keep only the newest this many model_epoch_N.pth (0 = keep all)")
    g.add_argument("--fresh", action="store_true", help="start over: move the old checkpoint_dir contents to checkpoint_dir/old-<time>/")

    g = p.add_argument_group("logging")
    g.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), default="auto",
                   help="auto = online when logged in (WANDB_API_KEY or ~/.netrc), else offline (upload later with wandb sync)")
    g.add_argument("--wandb_project", default="neural-guitar", help="W&B project")
    g.add_argument("--run_name", default=None, help="W&B run name (None: W&B picks one)")
    g.add_argument("--audio_every", type=int, default=5, help="log an original/reconstruction audio pair and spectrograms every this many epochs (0 = never)")
    add_device_arguments(g, threads=0, device_help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)",
                         threads_help="On a CPU busy with other work use 1: measured here, a step took 1.1 s with "
                                      "1 thread and 5-16 s with 2 under load")
    return p


def model_overrides(args) -> dict:
    return {k: getattr(args, k) for k in MODEL_FLAG_KEYS}


# ---- small reusable pieces -----------------------------------------------------------------------

def capture_rng() -> dict:
    """Python / NumPy / torch / CUDA RNG states as tensors and plain lists (loadable with weights_only)."""
    py = random.getstate()
    npy = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": npy[0], "keys": torch.from_numpy(npy[1].astype(np.int64)), "pos": int(npy[2]),
                  "has_gauss": int(npy[3]), "cached_gaussian": float(npy[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng`."""
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def amp_dtype_for(device: torch.device) -> torch.dtype:
    """Autocast dtype for --amp: bfloat16 on CPU and on CUDA GPUs that support it, else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def write_checkpoint(state: dict, paths: list[Path]) -> None:
    """Serialise `state` once and write it to every path atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    for path in paths:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch_load(path)
    except Exception as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}); copy a model_epoch_N.pth over it to "
                        f"resume from there, or pass --fresh to start over") from None
    needed = ("model", "optimizer", "scheduler", "epoch", "step", "config", "rng", "version")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise UserError(f"{path}: not a training checkpoint of this train.py; pass --fresh to start over "
                        f"(the old files are moved aside)")
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt['version']}, this train.py writes "
                        f"{CHECKPOINT_VERSION}; pass --fresh to start over")
    return ckpt


def check_resume_conflicts(ckpt: dict, args, latest: Path) -> None:
    """UserError naming the flag when this command asks for a different model or training setup."""
    for key in MODEL_FLAG_KEYS:
        old, new = ckpt["config"].get(key), getattr(args, key)
        if old != new:
            raise UserError(f"{latest} was trained with --{key} {old} but this command asks for {new}; "
                            f"pass --{key} {old} to resume it, or --fresh to start a new run")
    old_args = ckpt.get("train_args", {})
    for key in RESUME_KEYS:
        if key in old_args and old_args[key] != getattr(args, key):
            raise UserError(f"{latest} was trained with --{key} {old_args[key]} but this command asks for "
                            f"{getattr(args, key)}; pass --{key} {old_args[key]} to resume it, or --fresh "
                            f"to start a new run")


def move_aside(ckpt_dir: Path) -> Path | None:
    """--fresh: move everything in ckpt_dir (except earlier old-* folders) into ckpt_dir/old-<time>/."""
    if not ckpt_dir.is_dir():
        return None
    entries = [p for p in ckpt_dir.iterdir() if not p.name.startswith("old-")]
    if not entries:
        return None
    dest = ckpt_dir / time.strftime("old-%Y%m%d-%H%M%S")
    n = 1
    while dest.exists():
        dest = ckpt_dir / f"{time.strftime('old-%Y%m%d-%H%M%S')}-{n}"
        n += 1
    dest.mkdir()
    for p in entries:
        shutil.move(str(p), str(dest / p.name))
    return dest


def prune_epoch_checkpoints(ckpt_dir: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    def epoch_of(p):
        try:
            return int(p.stem.rsplit("_", 1)[1])
        except ValueError:
            return -1
    files = sorted(ckpt_dir.glob("model_epoch_*.pth"), key=epoch_of)
    for p in files[:-keep_last]:
        p.unlink(missing_ok=True)


def new_run_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def resolve_wandb_mode(choice: str) -> str:
    """auto -> WANDB_MODE if set, online when an API key is available (env or netrc), else offline."""
    if choice != "auto":
        return choice
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if host and netrc.netrc().authenticators(host):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


class GracefulStop:
    """SIGINT/SIGTERM -> `requested` becomes True (the loop finishes its step, saves, exits 130).
    A second signal raises KeyboardInterrupt at once. Under torchrun the launcher forwards the
    terminal's CTRL+C again, so repeats within `grace_s` of the first are ignored there."""

    def __init__(self, grace_s: float = 0.0, say=print):
        self.requested, self.first_at, self.grace_s, self.say = False, 0.0, grace_s, say
        self.previous = {}

    def _handler(self, signum, frame):
        now = time.monotonic()
        if not self.requested:
            self.requested, self.first_at = True, now
            self.say(f"{signal.Signals(signum).name}: stopping after this step and saving latest.pth "
                     f"(press CTRL+C again to quit at once)")
        elif now - self.first_at >= self.grace_s:
            raise KeyboardInterrupt

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def ignore_signals_in_worker(_worker_id: int) -> None:
    """DataLoader workers leave CTRL+C to the main process (which finishes the step, then stops them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batches(loader, stopper):
    """Iterate `loader`; when a DataLoader worker died because of CTRL+C, end quietly so the loop can
    save (the step counters only move after a completed step, so the saved state is consistent)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if stopper.requested:
                return
            raise
        yield batch


def init_distributed(device_flag: str):
    """Under torchrun: init the process group and return (rank, world_size, device); else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_flag)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return rank, world, device


def spectrogram_figure(original: np.ndarray, reconstruction: np.ndarray):
    """Matplotlib figure: log-magnitude spectrograms of the original (top) and reconstruction (bottom)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    window = torch.hann_window(1024)
    for ax, audio, title in zip(axes, (original, reconstruction), ("original", "reconstruction")):
        spec = torch.stft(torch.as_tensor(audio), 1024, 256, window=window, return_complex=True).abs()
        db = 20 * torch.log10(spec.clamp_min(1e-5))
        ax.imshow(db.numpy(), origin="lower", aspect="auto", vmin=float(db.max()) - 80, vmax=float(db.max()),
                  extent=(0, len(audio) / SAMPLE_RATE, 0, SAMPLE_RATE / 2000), cmap="magma")
        ax.set_title(title)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    return fig


# ---- training ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args.threads)
    if args.update_stats:
        changed = refresh_checkpoint_statistics(args.update_stats, args.data_dir, args.val_fraction)
        print(f"{args.update_stats}: training-set statistics recomputed from {args.data_dir}; "
              f"{'updated ' + ', '.join(changed) if changed else 'nothing changed'}")
        return 0
    dist_info = init_distributed(args.device)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return train(args, dist_info)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        if dist_info is not None and dist.is_initialized():
            dist.destroy_process_group()


def train(args, dist_info) -> int:
    rank, world, device = dist_info if dist_info else (0, 1, pick_device(args.device))
    master = rank == 0
    ddp = dist_info is not None

    def say(msg: str) -> None:
        if master:
            tqdm.write(msg, file=sys.stderr)

    for name in ("batch_size", "epochs", "crop_seconds", "save_every", "lr_decay_steps"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} {getattr(args, name)}: must be positive")
    if args.amp and device.type == "cpu" and not cpu_has_native_bf16():
        say("--amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX); autocast will emulate it and "
            "may be slower than float32")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS for determinism
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    debug_nan_steps = {int(s) for s in args.debug_nan_steps.split(",") if s.strip()}

    # -- checkpoint dir: --fresh, resume --
    ckpt_dir = Path(args.checkpoint_dir)
    latest = ckpt_dir / "latest.pth"
    if args.fresh and master:
        moved = move_aside(ckpt_dir)
        if moved:
            say(f"--fresh: moved the previous checkpoints to {moved}/ (leave --fresh off next time to "
                f"resume this new run)")
    if ddp:
        dist.barrier()
    ckpt = None
    if latest.exists() and not args.fresh:
        ckpt = load_checkpoint(latest)
        check_resume_conflicts(ckpt, args, latest)
        if ckpt["epoch"] >= args.epochs:
            say(f"{latest} has already trained {ckpt['epoch']} epochs (--epochs {args.epochs}); nothing to "
                f"do. Pass a larger --epochs to continue, or --fresh to start over.")
            return 0
        if args.max_steps and ckpt["step"] >= args.max_steps:
            say(f"{latest} is at step {ckpt['step']}, already past --max_steps {args.max_steps}; nothing to do")
            return 0

    # -- data --
    train_ds = NeuralGuitarDataset(args.data_dir, args.crop_seconds, "train", args.val_fraction, args.seed)
    val_ds = NeuralGuitarDataset(args.data_dir, args.crop_seconds, "val", args.val_fraction, args.seed) \
        if master else None
    say(train_ds.describe())
    if val_ds is not None:
        say(val_ds.describe() if len(val_ds) else "val: no files (one file only, or --val_fraction 0): "
            "best.pth follows the training loss")

    # -- model, optimizer, schedule --
    seed_everything(args.seed)
    config = ckpt["config"] if ckpt else models.build_config(**model_overrides(args), **train_ds.stats)
    raw_model = models.NeuralGuitar.from_config(config).to(device)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay ** (1.0 / args.lr_decay_steps))
    amp_dtype = amp_dtype_for(device) if args.amp else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    epoch, step, batch_in_epoch, nan_skipped = 0, 0, 0, 0
    best_val = math.inf
    run_id = new_run_id()
    if ckpt:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step, batch_in_epoch = ckpt["epoch"], ckpt["step"], ckpt.get("batch_in_epoch", 0)
        nan_skipped, best_val = ckpt.get("nan_skipped", 0), ckpt.get("best_val_loss", math.inf)
        run_id = ckpt.get("wandb_run_id") or run_id
        rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if ckpt.get("world_size", 1) != world:
            say(f"resuming a {ckpt.get('world_size', 1)}-process run with {world} processes: the data order "
                f"of the current epoch differs from an uninterrupted run")
        restore_rng(rngs[rank] if rank < len(rngs) else rngs[0])
        say(f"resuming from {latest}: epoch {epoch} + {batch_in_epoch} batches, step {step}")
    else:
        seed_everything(args.seed + rank)  # noise differs per process; crops/order are seeded separately
    model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ddp else raw_model
    loss_fn = MultiResolutionSTFTLoss().to(device)
    n_params = sum(p.numel() for p in raw_model.parameters())
    say(f"model: {config['decoder']} decoder, hidden {config['hidden_size']}, {config['n_harmonics']} harmonics, "
        f"{config['n_noise_bands']} noise bands, {n_params / 1e6:.2f} M parameters; device {device}"
        f"{f' x {world} processes' if ddp else ''}{' (amp ' + str(amp_dtype).split('.')[-1] + ')' if args.amp else ''}")

    # -- W&B (rank 0) --
    wandb_run = None
    if master:
        wandb_run = start_wandb(args, run_id, ckpt_dir, config, say)

    def checkpoint_state() -> dict:
        rng = capture_rng()
        if ddp:
            all_rng = [None] * world
            dist.all_gather_object(all_rng, rng)
            rng = all_rng
        return {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch, "config": raw_model.config,
            "rng": rng, "wandb_run_id": run_id, "version": CHECKPOINT_VERSION, "best_val_loss": best_val,
            "nan_skipped": nan_skipped, "world_size": world,
            "train_args": {k: getattr(args, k) for k in RESUME_KEYS},
        }

    def save(paths: list[Path]) -> None:
        state = checkpoint_state()  # collective under DDP: every rank calls save()
        if master:
            write_checkpoint(state, paths)
        if ddp:
            dist.barrier()

    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if args.amp else nullcontext

    def train_step(batch: dict, stop_requested: bool) -> tuple[float, bool, float, bool]:
        """Forward, loss, backward, clip, optimizer step (skipped for a non-finite loss or gradient).
        Returns (loss, loss_finite, grad_norm, stop): under DDP every process agrees on the last two."""
        audio = batch["audio"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True).repeat_interleave(HOP, dim=1)  # 0 = padding
        with autocast():
            pred = model(batch["f0_hz"].to(device, non_blocking=True),
                         batch["loudness_db"].to(device, non_blocking=True))["audio"]
        loss = loss_fn(pred.float() * mask, audio)
        if step in debug_nan_steps:
            loss = loss * float("nan")
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                   args.grad_clip if args.grad_clip > 0 else math.inf)
        flags = torch.tensor([float(stop_requested), float(not torch.isfinite(loss))], device=device)
        if ddp:  # every process must agree on stopping and on skipping
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        loss_ok = flags[1].item() == 0
        if loss_ok and (scaler or torch.isfinite(grad_norm)):  # a GradScaler skips overflowing steps itself
            if scaler:
                scaler.step(optimizer)
            else:
                optimizer.step()
            scheduler.step()
        if scaler:
            scaler.update()
        return loss.item(), loss_ok and bool(torch.isfinite(grad_norm)), float(grad_norm), bool(flags[0].item())

    def end_of_epoch(train_loss: float) -> None:
        """Validate, log (audio every --audio_every epochs), save latest / model_epoch_N / best."""
        nonlocal best_val
        val_loss = None
        if master:
            val_loss = validate(raw_model, val_ds, loss_fn, args, device, autocast)
            log = {"epoch": epoch, "train_loss_epoch": train_loss}
            if val_loss is not None:
                log["val_loss"] = val_loss
            if wandb_run is not None and args.audio_every and epoch % args.audio_every == 0:
                example_ds = val_ds if val_ds is not None and len(val_ds) else train_ds
                log.update(audio_example(raw_model, example_ds, args, device))
            if wandb_run is not None:
                wandb_run.log(log, step=step)
            say(f"epoch {epoch}: train loss {train_loss:.4f}"
                + (f", val loss {val_loss:.4f}" if val_loss is not None else ""))
        score = torch.tensor([val_loss if val_loss is not None else train_loss], device=device)
        if ddp:
            dist.broadcast(score, 0)
        paths = [latest]
        if epoch % args.save_every == 0 or epoch == args.epochs:
            paths.append(ckpt_dir / f"model_epoch_{epoch}.pth")
        if score.item() < best_val:
            best_val = score.item()
            paths.append(ckpt_dir / "best.pth")
        save(paths)
        if master:
            prune_epoch_checkpoints(ckpt_dir, args.keep_last)

    # -- loop --
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    consecutive_nan, stopped, exit_code = 0, False, 0
    try:
        with GracefulStop(grace_s=2.0 if ddp else 0.0, say=say) as stopper:
            while epoch < args.epochs and not stopped:
                if stopper.requested and not ddp:  # signal during validation/saving: latest.pth is current
                    stopped = True
                    break
                train_ds.set_epoch(epoch)
                sampler.set_epoch(epoch)
                order = list(sampler)[batch_in_epoch * args.batch_size:]  # skip what a resumed run did
                loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=order,
                                    num_workers=args.num_workers, pin_memory=device.type == "cuda",
                                    worker_init_fn=ignore_signals_in_worker,
                                    generator=torch.Generator().manual_seed(args.seed * 100003 + epoch))
                bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch, disable=not master, dynamic_ncols=True,
                           desc=f"epoch {epoch + 1}/{args.epochs}", unit="step", file=sys.stderr)
                model.train()
                loss_sum, loss_count = 0.0, 0
                try:
                    for batch in batches(loader, stopper):
                        loss, ok, grad_norm, stop = train_step(batch, stopper.requested)
                        step, batch_in_epoch = step + 1, batch_in_epoch + 1
                        if ok:
                            loss_sum, loss_count, consecutive_nan = loss_sum + loss, loss_count + 1, 0
                        else:
                            nan_skipped, consecutive_nan = nan_skipped + 1, consecutive_nan + 1
                            say(f"step {step}: non-finite loss or gradient, step skipped ({nan_skipped} so far)")
                            if consecutive_nan >= args.max_nan_steps:
                                raise UserError(
                                    f"{consecutive_nan} steps in a row had a non-finite loss (NaN/inf), each "
                                    f"skipped; stopped at step {step}. {latest} still holds the last good state: "
                                    f"try a lower --lr or --grad_clip, or check the data in {args.data_dir}")
                        lr = optimizer.param_groups[0]["lr"]
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                        bar.update(1)
                        if wandb_run is not None:
                            wandb_run.log({"train_loss": loss, "lr": lr, "grad_norm": grad_norm,
                                           "nan_skipped": nan_skipped}, step=step)
                        if stop or (args.max_steps and step >= args.max_steps):
                            stopped = True
                            break
                        if args.save_every_steps and step % args.save_every_steps == 0 \
                                and batch_in_epoch < steps_per_epoch:
                            save([latest])
                finally:
                    bar.close()
                if stopper.requested and batch_in_epoch < steps_per_epoch:
                    stopped = True  # the batches ended early because a DataLoader worker got the signal
                if batch_in_epoch >= steps_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                    end_of_epoch(loss_sum / max(loss_count, 1))
                elif stopped:
                    save([latest])  # mid-epoch: the resume point is this exact step
            if stopped and stopper.requested:
                say(f"stopped at epoch {epoch} + {batch_in_epoch} batches, step {step}; saved {latest}. "
                    f"Run the same command again to resume.")
                exit_code = 130
            elif stopped:
                say(f"--max_steps {args.max_steps} reached (step {step}); saved {latest}")
            else:
                say(f"done: {epoch} epochs, {step} steps; checkpoints in {ckpt_dir}/")
    except KeyboardInterrupt:
        exit_code = 130
        raise
    except BaseException:
        exit_code = 1
        raise
    finally:
        if wandb_run is not None:
            wandb_run.finish(exit_code=exit_code)
    return exit_code


@torch.no_grad()
def validate(model, val_ds, loss_fn, args, device, autocast) -> float | None:
    """Mean loss over the fixed validation crops (None without validation files). Runs under a forked
    RNG seeded with --seed, so the noise is the same every epoch and training's RNG is untouched."""
    if val_ds is None or len(val_ds) == 0:
        return None
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    total, count = 0.0, 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(args.seed)
        loader = DataLoader(val_ds, batch_size=args.batch_size, shuffle=False, num_workers=0)
        for batch in loader:
            mask = batch["mask"].to(device).repeat_interleave(HOP, dim=1)
            with autocast():
                pred = model(batch["f0_hz"].to(device), batch["loudness_db"].to(device))["audio"]
            loss = loss_fn(pred.float() * mask, batch["audio"].to(device))
            total += loss.item() * len(batch["audio"])
            count += len(batch["audio"])
    model.train()
    return total / count


@torch.no_grad()
def audio_example(model, dataset, args, device) -> dict:
    """W&B media for one fixed crop: the original, its reconstruction from its own f0/loudness, and a
    spectrogram comparison image."""
    import matplotlib.pyplot as plt
    import wandb

    item = dataset.example()
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(args.seed)
        recon = model(item["f0_hz"][None].to(device), item["loudness_db"][None].to(device))["audio"][0]
    model.train()
    original = item["audio"].numpy()
    recon = recon.float().cpu().numpy()
    fig = spectrogram_figure(original, recon)
    media = {
        "audio/original": wandb.Audio(original, sample_rate=SAMPLE_RATE, caption="original crop"),
        "audio/reconstruction": wandb.Audio(np.clip(recon, -1, 1), sample_rate=SAMPLE_RATE,
                                            caption="resynthesised from the crop's f0 + loudness"),
        "spectrogram": wandb.Image(fig, caption="top: original, bottom: reconstruction"),
    }
    plt.close(fig)
    return media


def start_wandb(args, run_id: str, ckpt_dir: Path, config: dict, say):
    """wandb.init in the chosen mode (resuming run `run_id`), or None when disabled. Never prints the key."""
    mode = resolve_wandb_mode(args.wandb)
    if mode == "disabled":
        return None
    import wandb

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_config = {**{k: v for k, v in vars(args).items() if k not in ("debug_nan_steps",)},
                  **{f"model/{k}": v for k, v in config.items() if k not in ("loudness_quantiles", "pluck_envelope")}}

    def init(m):
        return wandb.init(project=args.wandb_project, id=run_id, resume="allow", name=args.run_name,
                          dir=str(ckpt_dir), mode=m, config=run_config)
    try:
        run = init(mode)
    except Exception as e:  # e.g. no network for an online run
        if mode != "online":
            raise
        say(f"W&B online init failed ({type(e).__name__}); logging offline instead")
        mode, run = "offline", init("offline")
    if mode == "offline":
        why = "not logged in, so " if args.wandb == "auto" else ""
        say(f"W&B: {why}logging offline; upload later with: wandb sync {ckpt_dir}/wandb/offline-run-*-{run_id}"
            f"{'   (or run `wandb login` once for live logging)' if why else ''}")
    return run


if __name__ == "__main__":
    run_main(main)
