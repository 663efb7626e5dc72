"""Weights & Biases for train.py: choose the mode, start (or resume) the run, log, finish; audio media.

Modes (`--wandb`): online, offline (files under <checkpoint_dir>/wandb/, uploaded later with `wandb
sync`), disabled; auto = WANDB_MODE when set, else online when wandb has credentials, else offline.
W&B never blocks training: without credentials, with the server unreachable (checked with one HTTP request
of at most REACH_TIMEOUT_S), or when the online start fails within INIT_TIMEOUT_S, the run goes offline
with a one-line reason and training starts. The API key is never printed or stored by this code.
"""
from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from features import SAMPLE_RATE
from utils import seeded_eval

REACH_TIMEOUT_S = 3.0   # the reachability request to the W&B server
INIT_TIMEOUT_S = 20.0   # wandb.init's own limit (wandb.Settings(init_timeout)), unless WANDB_INIT_TIMEOUT is set
LONG_CONFIG_KEYS = ("loudness_quantiles", "pluck_envelope")  # long lists kept out of the W&B run config


def logged_in() -> bool:
    """Whether wandb has credentials for its server (WANDB_API_KEY, an identity token file, the entry
    `wandb login` wrote to ~/.netrc, or its settings), as wandb itself finds them: no prompt, no network.
    (wandb.login(prompt=False) would also print and contact the server; wandb.api.api_key is deprecated.)"""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:
        return wbauth.authenticate_session(host=wandb_setup.singleton().settings.base_url, source="train.py",
                                           prompt=False, update_session=False) is not None
    except Exception:  # credentials in an invalid format: let wandb.init report them
        return True


def server_unreachable(url: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """None when the server at `url` answers an HTTP request within `timeout` seconds (any status, or a
    TLS problem wandb may see differently), else the reason in a few words (e.g. 'connection refused')."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return None
        return str(getattr(e.reason, "strerror", None) or e.reason)
    except (OSError, ValueError) as e:  # timeouts, resets, a malformed URL
        return str(getattr(e, "strerror", None) or e) or type(e).__name__
    return None


def resolve_mode(choice: str) -> tuple[str, str]:
    """--wandb choice -> (mode, why it is offline when online was possible or asked for, else '')."""
    if choice == "auto":
        env = os.environ.get("WANDB_MODE", "").lower()
        if env in ("online", "offline", "disabled"):
            return env, ""
        if env == "dryrun":
            return "offline", ""
    if choice in ("offline", "disabled"):
        return choice, ""
    if not logged_in():
        return "offline", ("not logged in (no WANDB_API_KEY, no `wandb login`)" if choice == "online"
                           else "not logged in")
    from wandb.sdk import wandb_setup

    url = wandb_setup.singleton().settings.base_url
    problem = server_unreachable(url)
    if problem:
        return "offline", f"server {url} unreachable ({problem})"
    return "online", ""


def start(args, run_id: str, ckpt_dir: Path, config: dict, say):
    """wandb.init in the mode `args.wandb` resolves to, resuming run `run_id` (the id a checkpoint
    carries, so an offline run syncs into the same run); None when disabled. An online start that fails
    is torn down and the run goes offline under the same id."""
    mode, why = resolve_mode(args.wandb)
    if mode == "disabled":
        return None
    import wandb

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_config = {**vars(args), **{f"model/{k}": v for k, v in config.items() if k not in LONG_CONFIG_KEYS}}
    if mode == "online":
        try:
            return init_run(args, run_id, ckpt_dir, run_config, "online")
        except Exception as e:  # server trouble, rejected key, timeout
            why = f"online start failed ({type(e).__name__}: {first_line(e)})"
            wandb.teardown()  # else the failed attempt keeps the run id busy ("run ID ... is in use")
    run = init_run(args, run_id, ckpt_dir, run_config, "offline")
    hint = "   (or run `wandb login` once for live logging)" if why.startswith("not logged in") else ""
    say(f"W&B: {why + ', so ' if why else ''}logging offline; upload later with: wandb sync "
        f"{ckpt_dir}/wandb/offline-run-*-{run_id}{hint}")
    return run


def init_run(args, run_id: str, ckpt_dir: Path, run_config: dict, mode: str):
    """wandb.init for train.py: project --wandb_project, name --run_name, files under ckpt_dir/wandb/,
    resuming `run_id` if it exists; its start limited to INIT_TIMEOUT_S (or WANDB_INIT_TIMEOUT)."""
    import wandb

    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))
    return wandb.init(project=args.wandb_project, id=run_id, resume="allow", name=args.run_name,
                      dir=str(ckpt_dir), mode=mode, config=run_config, settings=wandb.Settings(init_timeout=timeout))


def first_line(error: Exception, limit: int = 160) -> str:
    """The first line of an error message, cut to `limit` characters, with any WANDB_API_KEY masked."""
    text = (str(error).strip().splitlines() or [""])[0][:limit]
    key = os.environ.get("WANDB_API_KEY")
    return text.replace(key, "***") if key else text


def log(run, values: dict, step: int) -> None:
    """run.log(values, step=step); nothing without a run."""
    if run is not None:
        run.log(values, step=step)


def finish(run, exit_code: int) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)


@torch.no_grad()
def audio_example(model, dataset, seed: int, device) -> dict:
    """W&B media for one fixed crop (dataset.example()): the original, its reconstruction from its own f0
    and loudness (noise seeded with `seed`, under a forked RNG so training's stream is untouched), and a
    spectrogram comparison image."""
    import matplotlib.pyplot as plt
    import wandb

    item = dataset.example()
    with seeded_eval(model, seed, device):
        recon = model(item["f0_hz"][None].to(device), item["loudness_db"][None].to(device))["audio"][0]
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


def spectrogram_figure(original: np.ndarray, reconstruction: np.ndarray):
    """Matplotlib figure: log-magnitude spectrograms of the original (top) and reconstruction (bottom),
    both [T] at 16 kHz; kHz against seconds, 80 dB range."""
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
