"""Train Neural Guitar on preprocessed feature files.

    python train.py --data_dir data/processed/guitarset            # train (or resume: same command)
    python train.py --data_dir data/processed/guitarset --fresh    # start over (old checkpoints kept aside)
    torchrun --standalone --nproc_per_node 2 train.py --data_dir ...   # several GPUs (DDP)

What it does, in order: read the crops (data.py), build the model (model.py) with the training set's
loudness/pitch statistics in its config, then Adam on the multi-resolution STFT loss (loss.py) between
each crop and its resynthesis from the crop's own f0 and loudness. Reading this file top to bottom:
flags, the training state (`TrainState`), `main` -> `train` (setup, then the epoch loop), then the epoch
(`run_epoch`, `end_of_epoch`) and the step (`train_step`). Checkpoint files are checkpoints.py's,
W&B is wandb_logging.py's; update_stats.py recomputes a checkpoint's training-set statistics.

Files, all under --checkpoint_dir (default checkpoints/):
    latest.pth          every epoch, every --save_every_steps steps, and on CTRL+C: the resume point
    model_epoch_N.pth   every --save_every epochs (N = epochs done); only the last --keep_last are kept
    best.pth            the epoch with the lowest validation loss so far (training loss without validation)
    wandb/              W&B run files (offline runs are uploaded later with `wandb sync`)
Every checkpoint holds model, optimizer, scheduler, epoch, step, config (model sizes + dataset stats),
rng states, wandb_run_id and version; each is written atomically (a reader never sees half a file), and
temp files of a write that was killed are removed by the next run.

Resume: running the same command again continues from latest.pth exactly where it stopped, mid-epoch
included: crops are a pure function of (seed, epoch, index) (data.py), the batch order of an epoch is a
pure function of (seed, epoch) (DistributedSampler), the batches already done are skipped without being
loaded, and the RNG states (noise synthesis) and the epoch's running loss come from the checkpoint. So a
run interrupted and resumed ends with the same weights, and reports the same epoch losses, as a run that
was never interrupted (tests/test_train.py checks this). A resume with another model, data folder or
training setting (RESUME_KEYS) is refused with the flag to change (or --fresh). Validation and audio
logging run under a forked RNG, so they do not disturb training's random stream.

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
import math
import os
import random
import secrets
import signal
import string
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import model as models
import wandb_logging
from checkpoints import (CHECKPOINT_VERSION, capture_rng, check_resume_conflicts, load_checkpoint, load_state,
                         move_aside, prune_epoch_checkpoints, remove_stale_temp_files, restore_rng,
                         write_checkpoint)
from data import NeuralGuitarDataset
from features import HOP
from loss import MultiResolutionSTFTLoss
from model import STATS_KEYS
from utils import (GracefulStop, HelpFormatter, seeded_eval, UserError, add_device_arguments, apply_threads, check_output_path,
                   pick_device, run_main)

# model config keys exposed as flags: everything in model.DEFAULT_CONFIG except what the data fixes
MODEL_FLAG_KEYS = tuple(k for k in models.DEFAULT_CONFIG
                        if k not in ("version", "sample_rate", "hop") + STATS_KEYS)
# training settings that must match the checkpoint for a resume to continue the same run
RESUME_KEYS = ("batch_size", "crop_seconds", "seed", "val_fraction", "lr", "lr_decay", "lr_decay_steps",
               "grad_clip", "data_dir")
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


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\nSee the module docstring "
                                "(or README, '5. Train') for files, resume, W&B and DDP.",
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", default="data/processed", help="folder of .pt files from preprocess.py (searched recursively)")
    g.add_argument("--crop_seconds", type=float, default=4.0, help="training crop length")
    g.add_argument("--val_fraction", type=float, default=0.1, help="share of files held out for validation (split by file-name hash)")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes (0 = load in the main process)")

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

    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint_dir", default="checkpoints", help="where latest.pth, model_epoch_N.pth, best.pth and wandb/ go")
    g.add_argument("--save_every", type=int, default=1, help="write model_epoch_N.pth every this many epochs")
    g.add_argument("--save_every_steps", type=int, default=0, help="also write latest.pth every this many steps (0 = only at epoch ends and on exit)")
    g.add_argument("--keep_last", type=int, default=5, help="keep only the newest this many model_epoch_N.pth (0 = keep all)")
    g.add_argument("--fresh", action="store_true", help="start over: move the old checkpoint_dir contents to checkpoint_dir/old-<time>/")

    g = p.add_argument_group("logging")
    g.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), default="auto",
                   help="auto = WANDB_MODE if set, else online when logged in (WANDB_API_KEY or `wandb login`) and the "
                        "server answers, else offline (upload later with wandb sync); see wandb_logging.py")
    g.add_argument("--wandb_project", default="neural-guitar", help="W&B project")
    g.add_argument("--run_name", default=None, help="W&B run name (None: W&B picks one)")
    g.add_argument("--audio_every", type=int, default=5, help="log an original/reconstruction audio pair and spectrograms every this many epochs (0 = never)")
    add_device_arguments(g, threads=0, device_help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)",
                         threads_help="On a CPU busy with other work use 1: measured here, a step took 1.1 s with "
                                      "1 thread and 5-16 s with 2 under load")
    return p


def model_overrides(args) -> dict:
    return {k: getattr(args, k) for k in MODEL_FLAG_KEYS}


def resume_args(args) -> dict:
    """The RESUME_KEYS of this command, as a checkpoint records them (`train_args`); the data folder as
    an absolute path, so the same folder named from another working directory still matches."""
    values = {k: getattr(args, k) for k in RESUME_KEYS}
    values["data_dir"] = str(Path(args.data_dir).resolve())
    return values


def check_args(args) -> None:
    """UserError (one line) for a flag value that cannot work, before any data is read."""
    for name in ("batch_size", "epochs", "crop_seconds", "save_every", "lr_decay_steps"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} {getattr(args, name)}: must be positive")
    check_output_path(args.checkpoint_dir, "--checkpoint_dir", is_dir=True)


# ---- the training state ----------------------------------------------------------------------------

@dataclass
class TrainState:
    """Everything the step and the epoch change or read: the model (and its DDP wrapper), optimizer, lr
    schedule, loss, counters, and the W&B run. Checkpoints store it (`checkpoint_state`)."""
    args: argparse.Namespace
    raw_model: models.NeuralGuitar
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    rank: int = 0                          # this process under torchrun (0 otherwise)
    world: int = 1                         # number of processes
    scaler: torch.amp.GradScaler | None = None   # float16 autocast only
    amp_dtype: torch.dtype | None = None   # --amp: the decoder's autocast dtype
    model: torch.nn.Module | None = None   # what the step calls: raw_model or its DDP wrapper
    loss_fn: torch.nn.Module | None = None
    run_id: str = ""                       # W&B run id, kept across resumes
    wandb_run: object = None
    epoch: int = 0                         # finished epochs
    step: int = 0                          # batches done in total (skipped non-finite ones included)
    batch_in_epoch: int = 0                # batches done in the current epoch
    nan_skipped: int = 0                   # steps skipped for a non-finite loss or gradient, in total
    consecutive_nan: int = 0               # ... in a row now (not saved: a resumed run starts at 0)
    best_val: float = math.inf             # lowest epoch score so far (best.pth)
    loss_sum: float = 0.0                  # sum of the current epoch's finite step losses ...
    loss_count: int = 0                    # ... and their number: the epoch's train loss is the mean

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1 or dist.is_initialized()

    @property
    def latest(self) -> Path:
        return Path(self.args.checkpoint_dir) / "latest.pth"

    def autocast(self):
        """Mixed-precision context for the model's forward (--amp), else a no-op."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()


def say(msg: str) -> None:
    """One line on stderr, above the progress bar; only rank 0 speaks under torchrun."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        tqdm.write(msg, file=sys.stderr)


# ---- training --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    apply_threads(args.threads)
    dist_info = init_distributed(args.device)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return train(args, dist_info)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        if dist_info is not None and dist.is_initialized():
            dist.destroy_process_group()


def train(args, dist_info) -> int:
    """Set up (checkpoint folder, data, model, W&B), run the epochs, close W&B. Returns the exit code:
    0 done (or --max_steps reached), 130 stopped by a signal after saving latest.pth."""
    rank, world, device = dist_info if dist_info else (0, 1, pick_device(args.device))
    set_up_device(args, device)
    ckpt = open_checkpoint_dir(args, master=rank == 0)
    if ckpt is not None and nothing_left_to_do(ckpt, args):
        return 0
    train_ds, val_ds = load_data(args, master=rank == 0)
    state = build_state(args, ckpt, train_ds, device, rank, world)
    if state.master:
        state.wandb_run = wandb_logging.start(args, state.run_id, Path(args.checkpoint_dir),
                                              state.raw_model.config, say)
    exit_code = 1
    try:
        with GracefulStop(grace_s=2.0 if state.ddp else 0.0, say=say,
                          action="stopping after this step and saving latest.pth") as stopper:
            exit_code = run_epochs(state, train_ds, val_ds, stopper)
    except KeyboardInterrupt:
        exit_code = 130
        raise
    finally:
        wandb_logging.finish(state.wandb_run, exit_code)
    return exit_code


def set_up_device(args, device: torch.device) -> None:
    """--amp note on CPUs without native bfloat16; --deterministic kernels."""
    if args.amp and device.type == "cpu" and not cpu_has_native_bf16():
        say("--amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX); autocast will emulate it and "
            "may be slower than float32")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS for determinism
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def open_checkpoint_dir(args, master: bool) -> dict | None:
    """Prepare --checkpoint_dir: remove temp files of killed checkpoint writes, move the old run aside
    for --fresh; return latest.pth's checkpoint to resume (checked against this command), or None."""
    ckpt_dir = Path(args.checkpoint_dir)
    latest = ckpt_dir / "latest.pth"
    if master:
        n, freed = remove_stale_temp_files(ckpt_dir)
        if n:
            say(f"removed {n} temp file{'s' if n > 1 else ''} ({freed / 1e6:.1f} MB) left in {ckpt_dir}/ by "
                f"checkpoint writes that were interrupted")
        moved = move_aside(ckpt_dir) if args.fresh else None
        if moved:
            say(f"--fresh: moved the previous checkpoints to {moved}/ (leave --fresh off next time to "
                f"resume this new run)")
    if dist.is_initialized():
        dist.barrier()
    if args.fresh or not latest.exists():
        return None
    ckpt = load_checkpoint(latest)
    check_resume_conflicts(ckpt, latest, model_overrides(args), resume_args(args))
    return ckpt


def nothing_left_to_do(ckpt: dict, args) -> bool:
    """True (and says why) when the checkpoint already reached --epochs or --max_steps."""
    latest = Path(args.checkpoint_dir) / "latest.pth"
    if ckpt["epoch"] >= args.epochs:
        say(f"{latest} has already trained {ckpt['epoch']} epochs (--epochs {args.epochs}); nothing to "
            f"do. Pass a larger --epochs to continue, or --fresh to start over.")
        return True
    if args.max_steps and ckpt["step"] >= args.max_steps:
        say(f"{latest} is at step {ckpt['step']}, already past --max_steps {args.max_steps}; nothing to do")
        return True
    return False


def load_data(args, master: bool) -> tuple[NeuralGuitarDataset, NeuralGuitarDataset | None]:
    """The train split (every process) and the val split (rank 0 only, else None), described."""
    train_ds = NeuralGuitarDataset(args.data_dir, args.crop_seconds, "train", args.val_fraction, args.seed)
    val_ds = NeuralGuitarDataset(args.data_dir, args.crop_seconds, "val", args.val_fraction, args.seed) \
        if master else None
    say(train_ds.describe())
    if val_ds is not None:
        say(val_ds.describe() if len(val_ds) else "val: no files (one file only, or --val_fraction 0): "
            "best.pth follows the training loss")
    return train_ds, val_ds


def build_state(args, ckpt: dict | None, train_ds, device, rank: int, world: int) -> TrainState:
    """Model (seeded with --seed; config from the checkpoint, else the flags + the training set's
    statistics), Adam, the exponential lr schedule and, on resume, everything the checkpoint holds."""
    seed_everything(args.seed)
    config = ckpt["config"] if ckpt else models.build_config(**model_overrides(args), **train_ds.stats)
    raw_model = models.NeuralGuitar.from_config(config).to(device)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay ** (1.0 / args.lr_decay_steps))
    amp_dtype = amp_dtype_for(device) if args.amp else None
    state = TrainState(args, raw_model, optimizer, scheduler, device, rank, world, amp_dtype=amp_dtype,
                       scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
                       run_id=new_run_id())
    if ckpt:
        restore_state(state, ckpt)
    else:
        seed_everything(args.seed + rank)  # noise differs per process; crops/order are seeded separately
    state.model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None) \
        if state.ddp else raw_model
    state.loss_fn = MultiResolutionSTFTLoss().to(device)
    n_params = sum(p.numel() for p in raw_model.parameters())
    say(f"model: {config['decoder']} decoder, hidden {config['hidden_size']}, {config['n_harmonics']} harmonics, "
        f"{config['n_noise_bands']} noise bands, {n_params / 1e6:.2f} M parameters; device {device}"
        f"{f' x {world} processes' if state.ddp else ''}"
        f"{' (amp ' + str(amp_dtype).split('.')[-1] + ')' if args.amp else ''}")
    return state


def restore_state(state: TrainState, ckpt: dict) -> None:
    """Load weights, optimizer, schedule, counters, the epoch's running loss and this process's RNG
    states from a training checkpoint (see checkpoint_state)."""
    latest = state.latest
    models.load_weights(state.raw_model, ckpt["model"], latest)  # one line for weights that do not fit
    load_state(state.optimizer, ckpt["optimizer"], latest)
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    state.epoch, state.step, state.batch_in_epoch = ckpt["epoch"], ckpt["step"], ckpt.get("batch_in_epoch", 0)
    state.nan_skipped, state.best_val = ckpt.get("nan_skipped", 0), ckpt.get("best_val_loss", math.inf)
    state.loss_sum, state.loss_count = ckpt.get("epoch_loss_sum", 0.0), ckpt.get("epoch_loss_count", 0)
    state.run_id = ckpt.get("wandb_run_id") or state.run_id
    rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    if ckpt.get("world_size", 1) != state.world:
        say(f"resuming a {ckpt.get('world_size', 1)}-process run with {state.world} processes: the data order "
            f"of the current epoch differs from an uninterrupted run")
    restore_rng(rngs[state.rank] if state.rank < len(rngs) else rngs[0])
    say(f"resuming from {latest}: epoch {state.epoch} + {state.batch_in_epoch} batches, step {state.step}")


def checkpoint_state(state: TrainState) -> dict:
    """The training checkpoint (checkpoints.py): under DDP a collective call (every process's RNG)."""
    rng = capture_rng()
    if state.ddp:
        all_rng = [None] * state.world
        dist.all_gather_object(all_rng, rng)
        rng = all_rng
    return {
        "model": state.raw_model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict() if state.scaler else None,
        "epoch": state.epoch, "step": state.step, "batch_in_epoch": state.batch_in_epoch,
        "config": state.raw_model.config, "rng": rng, "wandb_run_id": state.run_id, "version": CHECKPOINT_VERSION,
        "best_val_loss": state.best_val, "nan_skipped": state.nan_skipped, "world_size": state.world,
        "train_args": resume_args(state.args),
        "epoch_loss_sum": state.loss_sum, "epoch_loss_count": state.loss_count,
    }


def save(state: TrainState, paths: list[Path]) -> None:
    """Write the checkpoint to `paths` (rank 0); every process must call it under DDP."""
    ckpt = checkpoint_state(state)
    if state.master:
        write_checkpoint(ckpt, paths)
    if state.ddp:
        dist.barrier()


def run_epochs(state: TrainState, train_ds, val_ds, stopper) -> int:
    """Epochs until --epochs, --max_steps or a signal; returns the exit code (0, or 130 after a signal)."""
    args = state.args
    sampler = DistributedSampler(train_ds, num_replicas=state.world, rank=state.rank, shuffle=True, seed=args.seed)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    stopped = False
    while state.epoch < args.epochs and not stopped:
        if stopper.requested and not state.ddp:  # signal during validation/saving: latest.pth is current
            stopped = True
            break
        stopped = run_epoch(state, train_ds, sampler, steps_per_epoch, stopper)
        if state.batch_in_epoch >= steps_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            end_of_epoch(state, train_ds, val_ds)
        elif stopped:
            save(state, [state.latest])  # mid-epoch: the resume point is this exact step
    if stopped and stopper.requested:
        say(f"stopped at epoch {state.epoch} + {state.batch_in_epoch} batches, step {state.step}; saved "
            f"{state.latest}. Run the same command again to resume.")
        return 130
    if stopped:
        say(f"--max_steps {args.max_steps} reached (step {state.step}); saved {state.latest}")
    else:
        say(f"done: {state.epoch} epochs, {state.step} steps; checkpoints in {args.checkpoint_dir}/")
    return 0


def run_epoch(state: TrainState, train_ds, sampler, steps_per_epoch: int, stopper) -> bool:
    """Train the batches of the current epoch not done yet (a resumed epoch skips the first
    state.batch_in_epoch without loading them). Returns True when training must stop (signal, --max_steps)."""
    args = state.args
    train_ds.set_epoch(state.epoch)
    sampler.set_epoch(state.epoch)
    order = list(sampler)[state.batch_in_epoch * args.batch_size:]
    loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=order, num_workers=args.num_workers,
                        pin_memory=state.device.type == "cuda", worker_init_fn=ignore_signals_in_worker,
                        generator=torch.Generator().manual_seed(args.seed * 100003 + state.epoch))
    bar = tqdm(total=steps_per_epoch, initial=state.batch_in_epoch, disable=not state.master, dynamic_ncols=True,
               desc=f"epoch {state.epoch + 1}/{args.epochs}", unit="step", file=sys.stderr)
    state.model.train()
    stop = False
    try:
        for batch in batches(loader, stopper):
            loss, ok, grad_norm, stop = train_step(state, batch, stopper.requested)
            record_step(state, loss, ok, grad_norm)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{state.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            bar.update(1)
            stop = stop or bool(args.max_steps and state.step >= args.max_steps)
            if stop:
                break
            if args.save_every_steps and state.step % args.save_every_steps == 0 \
                    and state.batch_in_epoch < steps_per_epoch:
                save(state, [state.latest])
    finally:
        bar.close()
    # a DataLoader worker that got the signal ends the batches early
    return stop or (stopper.requested and state.batch_in_epoch < steps_per_epoch)


def crop_loss(state: TrainState, model, batch: dict) -> torch.Tensor:
    """The loss of one batch: `model`'s resynthesis of each crop from its own f0 [B, F] Hz and loudness
    [B, F] dB, zeroed where the crop is padding, against the crop's audio [B, F * HOP] (multi-resolution
    STFT loss). Training and validation both use it."""
    device = state.device
    audio = batch["audio"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True).repeat_interleave(HOP, dim=1)  # 0 = padding
    with state.autocast():
        pred = model(batch["f0_hz"].to(device, non_blocking=True),
                     batch["loudness_db"].to(device, non_blocking=True))["audio"]
    return state.loss_fn(pred.float() * mask, audio)


def batch_loss(state: TrainState, batch: dict) -> torch.Tensor:
    """The training loss of one batch (`crop_loss` through the DDP wrapper, if any)."""
    return crop_loss(state, state.model, batch)


def train_step(state: TrainState, batch: dict, stop_requested: bool) -> tuple[float, bool, float, bool]:
    """Loss, backward, clip, optimizer and lr step (skipped for a non-finite loss or gradient).
    Returns (loss, finite, grad_norm, stop): under DDP every process agrees on the last two."""
    optimizer, scaler, grad_clip = state.optimizer, state.scaler, state.args.grad_clip
    loss = batch_loss(state, batch)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.raw_model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    flags = torch.tensor([float(stop_requested), float(not torch.isfinite(loss))], device=state.device)
    if state.ddp:  # every process must agree on stopping and on skipping
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    loss_ok = flags[1].item() == 0
    if loss_ok and (scaler or torch.isfinite(grad_norm)):  # a GradScaler skips overflowing steps itself
        if scaler:
            scaler.step(optimizer)
        else:
            optimizer.step()
        state.scheduler.step()
    if scaler:
        scaler.update()
    return loss.item(), loss_ok and bool(torch.isfinite(grad_norm)), float(grad_norm), bool(flags[0].item())


def record_step(state: TrainState, loss: float, ok: bool, grad_norm: float) -> None:
    """Count a finished step: the epoch's running loss (finite steps only) or a skipped step, which
    stops training after --max_nan_steps in a row; the step's W&B values."""
    state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
    if ok:
        state.loss_sum, state.loss_count, state.consecutive_nan = state.loss_sum + loss, state.loss_count + 1, 0
    else:
        state.nan_skipped, state.consecutive_nan = state.nan_skipped + 1, state.consecutive_nan + 1
        say(f"step {state.step}: non-finite loss or gradient, step skipped ({state.nan_skipped} so far)")
        if state.consecutive_nan >= state.args.max_nan_steps:
            raise UserError(f"{state.consecutive_nan} steps in a row had a non-finite loss (NaN/inf), each "
                            f"skipped; stopped at step {state.step}. {state.latest} still holds the last good "
                            f"state: try a lower --lr or --grad_clip, or check the data in {state.args.data_dir}")
    wandb_logging.log(state.wandb_run, {"train_loss": loss, "lr": state.optimizer.param_groups[0]["lr"],
                                        "grad_norm": grad_norm, "nan_skipped": state.nan_skipped}, state.step)


def end_of_epoch(state: TrainState, train_ds, val_ds) -> None:
    """Validate and log (rank 0), then save latest.pth, model_epoch_N.pth (every --save_every epochs)
    and best.pth when the epoch's score (val loss, else train loss) is the lowest so far. An epoch
    without a score (no finite step and no validation) never becomes best."""
    args = state.args
    train_loss = state.loss_sum / state.loss_count if state.loss_count else None
    state.loss_sum, state.loss_count = 0.0, 0
    val_loss = None
    if state.master:
        val_loss = validate(state, val_ds)
        log_epoch(state, train_loss, val_loss, val_ds if val_ds is not None and len(val_ds) else train_ds)
    score = val_loss if val_loss is not None else train_loss
    score = torch.tensor([math.nan if score is None else score], device=state.device)
    if state.ddp:
        dist.broadcast(score, 0)
    ckpt_dir = Path(args.checkpoint_dir)
    paths = [state.latest]
    if state.epoch % args.save_every == 0 or state.epoch == args.epochs:
        paths.append(ckpt_dir / f"model_epoch_{state.epoch}.pth")
    if math.isfinite(score.item()) and score.item() < state.best_val:
        state.best_val = score.item()
        paths.append(ckpt_dir / "best.pth")
    save(state, paths)
    if state.master:
        prune_epoch_checkpoints(ckpt_dir, args.keep_last)


def log_epoch(state: TrainState, train_loss: float | None, val_loss: float | None, example_ds) -> None:
    """The epoch's losses on stderr and to W&B, with an audio example every --audio_every epochs."""
    args = state.args
    values = {"epoch": state.epoch}
    if train_loss is not None:
        values["train_loss_epoch"] = train_loss
    if val_loss is not None:
        values["val_loss"] = val_loss
    if state.wandb_run is not None and args.audio_every and state.epoch % args.audio_every == 0:
        values.update(wandb_logging.audio_example(state.raw_model, example_ds, args.seed, state.device))
    wandb_logging.log(state.wandb_run, values, state.step)
    say(f"epoch {state.epoch}: train loss "
        + (f"{train_loss:.4f}" if train_loss is not None else "n/a (no finite step in this epoch)")
        + (f", val loss {val_loss:.4f}" if val_loss is not None else ""))


@torch.no_grad()
def validate(state: TrainState, val_ds) -> float | None:
    """Mean loss over the fixed validation crops (None without validation files). Runs under a forked
    RNG seeded with --seed, so the noise is the same every epoch and training's RNG is untouched."""
    if val_ds is None or len(val_ds) == 0:
        return None
    total, count = 0.0, 0
    with seeded_eval(state.raw_model, state.args.seed, state.device) as model:
        for batch in DataLoader(val_ds, batch_size=state.args.batch_size, shuffle=False, num_workers=0):
            loss = crop_loss(state, model, batch)
            total += loss.item() * len(batch["audio"])
            count += len(batch["audio"])
    return total / count


# ---- small pieces ----------------------------------------------------------------------------------

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


def new_run_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


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


if __name__ == "__main__":
    run_main(main)
