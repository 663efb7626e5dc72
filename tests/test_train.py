"""train.py end to end on a tiny model and a tiny Karplus-Strong dataset (CPU).

Covers: checkpoints + W&B offline files read back from disk, exact resume (epoch boundary, mid-epoch,
after SIGINT), SIGKILL during checkpoint writes, torchrun/DDP with gloo, loss going down, config
conflicts, --fresh, NaN steps. Feature files are written directly in preprocess.py's schema (no CREPE).
"""
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import features
from conftest import pluck
import train
from loss import MultiResolutionSTFTLoss
from model import NeuralGuitar, load_model
from utils import UserError, torch_load

REPO = Path(__file__).resolve().parents[1]
SR, HOP = features.SAMPLE_RATE, features.HOP
PITCHES = (110.0, 146.8, 196.0, 220.0, 246.9, 329.6)
# a tiny model on 1 s crops: one step takes well under a second on a busy CPU core
TINY = ["--crop_seconds", "1", "--batch_size", "2", "--hidden_size", "32", "--n_harmonics", "16",
        "--n_noise_bands", "17", "--reverb_seconds", "0.25", "--num_workers", "0", "--seed", "0",
        "--deterministic"]


def write_pluck_file(path, pitches, seed, note_seconds=0.5):
    """A melody of Karplus-Strong plucks (conftest.pluck), f0 = the known pitches, periodicity 1."""
    audio = np.concatenate([pluck(p, note_seconds, seed=seed * 10 + k) for k, p in enumerate(pitches)])
    F = features.n_frames(audio.size)
    f0 = np.repeat(np.asarray(pitches, np.float32), int(note_seconds * features.FRAME_RATE))[:F]
    torch.save({"audio": torch.from_numpy(audio), "f0_hz": torch.from_numpy(f0), "periodicity": torch.ones(F),
                "loudness_db": torch.as_tensor(features.compute_loudness(audio)), "sample_rate": SR,
                "frame_rate": features.FRAME_RATE, "hop": HOP, "source": path.name, "crepe_model": "none",
                "version": features.FEATURE_VERSION}, path)


def make_dataset(folder, n_files=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        write_pluck_file(folder / f"pluck_{i}.pt", [PITCHES[(i + k) % 6] for k in range(6)], seed=i)
    return folder


def read_wandb_records(wandb_file):
    """Records of a W&B transaction log (run-<id>.wandb): a 7-byte header (':W&B', magic, version),
    then LevelDB log format (32 KiB blocks; 7-byte record headers: crc32 u32, length u16, type u8 with
    FULL=1, FIRST=2, MIDDLE=3, LAST=4), each payload a wandb_internal_pb2.Record protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = Path(wandb_file).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding up to the next block
            pos += left
            continue
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            records.append(rec)
    return records


def wandb_history(wandb_file):
    """[{key: value}] of the logged history rows (values JSON-decoded where they are numbers)."""
    rows = []
    for rec in read_wandb_records(wandb_file):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(it.key or "/".join(it.nested_key)): it.value_json for it in rec.history.item})
    return rows


# one torch thread, as in the subprocesses (OMP_NUM_THREADS=1): identical float results, kind to a shared CPU
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("plucks"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """Run A: 2 epochs without interruption. Returns its final model state_dict."""
    ckpt = tmp_path_factory.mktemp("ref")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(["--data_dir", str(data_dir), "--checkpoint_dir", str(ckpt), "--epochs", "2",
                           "--wandb", "disabled", *TINY]) == 0
    finally:
        torch.set_num_threads(n)
    return torch_load(ckpt / "latest.pth")


def run(data_dir, ckpt, *extra, wandb="disabled"):
    return train.main(["--data_dir", str(data_dir), "--checkpoint_dir", str(ckpt), "--wandb", wandb, *TINY,
                       *map(str, extra)])


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k


# ---- tests -------------------------------------------------------------------------------------------

def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--batch_size", "--epochs", "--lr", "--lr_decay", "--crop_seconds", "--decoder", "--hidden_size",
                 "--n_harmonics", "--n_noise_bands", "--checkpoint_dir", "--device", "--audio_every",
                 "--save_every", "--keep_last", "--wandb", "--wandb_project", "--max_steps", "--amp", "--fresh",
                 "--grad_clip", "--deterministic", "--seed", "--num_workers", "--val_fraction", "--run_name"):
        assert flag in out
    assert out.count("(default:") >= 30


def test_short_run_writes_checkpoints_and_offline_wandb(data_dir, tmp_path, capsys):
    ckpt = tmp_path / "ck"
    code = run(data_dir, ckpt, "--epochs", "3", "--audio_every", "2", "--keep_last", "2", "--amp",
               "--run_name", "tiny", wandb="offline")
    assert code == 0
    err = capsys.readouterr().err
    assert "(amp bfloat16)" in err and "wandb sync" in err  # --amp on CPU: bfloat16 autocast (decoder)
    names = sorted(p.name for p in ckpt.glob("*.pth"))
    assert names == ["best.pth", "latest.pth", "model_epoch_2.pth", "model_epoch_3.pth"]  # keep_last 2
    ck = torch_load(ckpt / "latest.pth")  # weights_only=True
    for key in ("model", "optimizer", "scheduler", "epoch", "step", "config", "rng", "wandb_run_id", "version"):
        assert key in ck
    assert ck["epoch"] == 3 and ck["batch_in_epoch"] == 0 and ck["step"] > 0
    cfg = ck["config"]
    assert cfg["hidden_size"] == 32 and len(cfg["loudness_quantiles"]) == 101
    assert -80 < cfg["loudness_mean"] < 20 and 40 < cfg["mean_midi"] < 70  # plucks at 110..330 Hz
    assert set(ck["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert load_model(ckpt / "best.pth").config["n_harmonics"] == 16  # the model API reads it back
    # W&B offline run, read back from its own files
    runs = list((ckpt / "wandb").glob(f"offline-run-*-{ck['wandb_run_id']}"))
    assert len(runs) == 1
    history = wandb_history(next(runs[0].glob("run-*.wandb")))
    train_loss = [float(r["train_loss"]) for r in history if "train_loss" in r]
    assert len(train_loss) == ck["step"] and all(np.isfinite(train_loss))
    assert sum("val_loss" in r for r in history) == 3
    assert any("lr" in r for r in history)
    assert "audio/original/path" in history[-1] or any("audio/original/path" in r for r in history)
    wavs = list(runs[0].glob("files/media/audio/**/*.wav"))
    assert {w.name.split("_")[0] for w in wavs} == {"original", "reconstruction"}
    assert list(runs[0].glob("files/media/images/spectrogram_*.png"))
    import soundfile as sf
    audio, sr = sf.read(wavs[0])
    assert sr == SR and len(audio) == SR  # one 1 s crop at 16 kHz
    # resuming continues the same W&B run (same id; offline, the next piece gets its own folder)
    assert run(data_dir, ckpt, "--epochs", "4", "--audio_every", "2", "--keep_last", "2", wandb="offline") == 0
    runs = sorted((ckpt / "wandb").glob(f"offline-run-*-{ck['wandb_run_id']}"))
    assert len(runs) == 2 and torch_load(ckpt / "latest.pth")["wandb_run_id"] == ck["wandb_run_id"]
    steps = [int(r["_step"]) for r in wandb_history(next(runs[1].glob("run-*.wandb"))) if "train_loss" in r]
    assert steps and min(steps) == ck["step"] + 1


def test_resume_is_exact(data_dir, reference, tmp_path):
    # B: 1 epoch, then the same command with --epochs 2 (epoch-boundary resume)
    ck = tmp_path / "b"
    assert run(data_dir, ck, "--epochs", "1") == 0
    assert torch_load(ck / "latest.pth")["epoch"] == 1
    assert run(data_dir, ck, "--epochs", "2") == 0
    assert_same_weights(torch_load(ck / "latest.pth")["model"], reference["model"])
    # C: stop after 2 steps (mid-epoch), then resume
    ck = tmp_path / "c"
    assert run(data_dir, ck, "--epochs", "2", "--max_steps", "2") == 0
    mid = torch_load(ck / "latest.pth")
    assert (mid["epoch"], mid["batch_in_epoch"], mid["step"]) == (0, 2, 2)
    assert run(data_dir, ck, "--epochs", "2") == 0
    final = torch_load(ck / "latest.pth")
    assert final["step"] == reference["step"]
    assert_same_weights(final["model"], reference["model"])
    # a finished run asked to do the same again does nothing
    assert run(data_dir, ck, "--epochs", "2") == 0


def test_sigint_mid_epoch_saves_and_resumes_exactly(data_dir, reference, tmp_path):
    ck = tmp_path / "ck"
    cmd = [sys.executable, str(REPO / "train.py"), "--data_dir", str(data_dir), "--checkpoint_dir", str(ck),
           "--epochs", "2", "--wandb", "disabled", *TINY]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 120
    while not re.search(r"\| [1-9]\d*/\d+ \[", "".join(out)):  # the bar shows at least one finished step
        assert proc.poll() is None and time.time() < deadline, "".join(out)
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, "".join(out)
    reader.join(timeout=5)
    text = "".join(out)
    assert "stopping after this step" in text and "Run the same command again to resume" in text
    ckpt = torch_load(ck / "latest.pth")
    assert 0 < ckpt["step"] < reference["step"]
    # resume with the same command: ends exactly where the uninterrupted run ended
    assert run(data_dir, ck, "--epochs", "2") == 0
    assert_same_weights(torch_load(ck / "latest.pth")["model"], reference["model"])


def test_sigkill_during_checkpoint_writes_leaves_latest_loadable_and_the_next_run_cleans_up(data_dir, tmp_path, capsys):
    ck = tmp_path / "ck"
    cmd = [sys.executable, str(REPO / "train.py"), "--data_dir", str(data_dir), "--checkpoint_dir", str(ck),
           "--epochs", "100", "--save_every_steps", "1", "--wandb", "disabled", *TINY]
    rng = np.random.default_rng(1)
    last_step = 0
    for attempt in range(3):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kill_at = int(rng.integers(2, 5))  # kill while the kill_at-th checkpoint write is in progress
        seen, deadline = set(), time.time() + 120
        try:
            while len(seen) < kill_at:
                assert proc.poll() is None and time.time() < deadline
                if ck.is_dir():
                    seen |= {p for p in os.listdir(ck) if p.startswith(".latest.pth.") and p.endswith(".tmp")}
                time.sleep(0.0005)
        finally:
            proc.kill()
            proc.wait()
        state = torch_load(ck / "latest.pth")  # never half-written
        assert state["step"] >= last_step and "model" in state and "optimizer" in state
        last_step = state["step"]
    assert last_step > 0
    # temp files of killed writes (one of each kind for sure) are removed by the next run; others stay
    for name in (".latest.pth.k1ll3d.tmp", ".best.pth.abc.tmp", ".model_epoch_7.pth.xyz.tmp"):
        (ck / name).write_bytes(b"\0" * 1_000_000)
    stale = {p.name for p in ck.glob(".*.pth.*.tmp")}
    others = (ck / ".notes.txt.abc.tmp", ck / "mine.tmp", ck / ".latest.pth.tmp")
    for p in others:
        p.write_text("not train.py's")
    assert run(data_dir, ck, "--epochs", "100", "--save_every_steps", "1", "--max_steps", last_step + 1) == 0
    assert re.search(rf"removed {len(stale)} temp files \(\d+\.\d MB\)", capsys.readouterr().err)
    assert not list(ck.glob(".*.pth.*.tmp")) and all(p.exists() for p in others)


def test_torchrun_two_processes_gloo(data_dir, tmp_path):
    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(REPO / "train.py"), "--data_dir", str(data_dir), "--checkpoint_dir", str(ck), "--epochs", "1",
           "--device", "cpu", "--wandb", "disabled", *TINY]
    res = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.count("done: 1 epochs") == 1  # only rank 0 talks
    state = torch_load(ck / "latest.pth")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["epoch"] == 1
    assert sorted(p.name for p in ck.glob("*.pth")) == ["best.pth", "latest.pth", "model_epoch_1.pth"]
    assert not any(k.startswith("module.") for k in state["model"])  # the plain model, not the DDP wrapper


def test_loss_decreases_on_plucks(data_dir, tmp_path):
    ck = tmp_path / "ck"
    assert run(data_dir, ck, "--epochs", "8", "--lr", "3e-3") == 0
    ckpt = torch_load(ck / "latest.pth")
    trained = load_model(ck / "latest.pth")
    torch.manual_seed(0)  # train.py builds the model right after seeding with --seed
    initial = NeuralGuitar.from_config(ckpt["config"]).eval()
    from data import NeuralGuitarDataset
    val = NeuralGuitarDataset(data_dir, crop_seconds=1.0, split="train")
    batch = torch.utils.data.default_collate([val[i] for i in range(len(val))])
    loss_fn = MultiResolutionSTFTLoss()

    def loss_of(model):
        torch.manual_seed(1)
        with torch.no_grad():
            return loss_fn(model(batch["f0_hz"], batch["loudness_db"])["audio"], batch["audio"]).item()
    before, after = loss_of(initial), loss_of(trained)
    assert after < 0.85 * before, (before, after)


def test_conflicting_config_and_fresh(data_dir, tmp_path, capsys):
    ck = tmp_path / "ck"
    assert run(data_dir, ck, "--epochs", "1", "--max_steps", "1") == 0
    with pytest.raises(UserError) as e:
        run(data_dir, ck, "--epochs", "1", "--hidden_size", "64")
    msg = str(e.value)
    assert "--hidden_size 32" in msg and "--fresh" in msg and "\n" not in msg
    with pytest.raises(UserError, match="--lr"):
        run(data_dir, ck, "--epochs", "1", "--lr", "1e-3")
    # --fresh: the old run is moved aside, a new one starts from step 0
    assert run(data_dir, ck, "--epochs", "1", "--max_steps", "1", "--hidden_size", "64", "--fresh") == 0
    assert "--fresh: moved the previous checkpoints to" in capsys.readouterr().err
    old = list(ck.glob("old-*/latest.pth"))
    assert len(old) == 1 and torch_load(old[0])["config"]["hidden_size"] == 32
    new = torch_load(ck / "latest.pth")
    assert new["config"]["hidden_size"] == 64 and new["step"] == 1


def nan_loss_at(monkeypatch, steps):
    """Make train.batch_loss return NaN at the given steps (counted from 0, before the step)."""
    real = train.batch_loss
    monkeypatch.setattr(train, "batch_loss",
                        lambda state, batch: real(state, batch) * (math.nan if state.step in steps else 1.0))


def test_nan_loss_steps_are_skipped(data_dir, tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    nan_loss_at(monkeypatch, {0, 2})
    assert run(data_dir, ck, "--epochs", "1") == 0
    state = torch_load(ck / "latest.pth")
    assert state["nan_skipped"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {state["step"] - 2.0}  # no optimizer step for the NaN batches
    # too many in a row: a clear stop
    nan_loss_at(monkeypatch, {0, 1, 2})
    with pytest.raises(UserError, match="in a row"):
        run(data_dir, tmp_path / "ck2", "--epochs", "1", "--max_nan_steps", "2")


def test_data_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .pt feature files"):
        run(tmp_path / "empty", tmp_path / "ck", "--epochs", "1")
    old = tmp_path / "old"
    make_dataset(old, n_files=1)
    d = torch_load(old / "pluck_0.pt")
    d["version"] = 0
    torch.save(d, old / "pluck_0.pt")
    res = subprocess.run([sys.executable, str(REPO / "train.py"), "--data_dir", str(old), "--wandb", "disabled"],
                         cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "re-run preprocess.py" in res.stderr
    assert not (tmp_path / "checkpoints").exists()



# ---- reliability: W&B, output locations, stale temp files, resume checks, messages -------------------

FAKE_KEY = "fake" + "0123456789" * 4  # a well-formed (44 characters), unknown W&B API key


def wandb_subprocess_env(home, base_url, key=FAKE_KEY):
    """Environment for a train.py subprocess with W&B credentials (key) and server (base_url) of its
    own: a private HOME (no ~/.netrc), no WANDB_MODE."""
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / "wandb-config"), WANDB_CACHE_DIR=str(home / "cache"),
               WANDB_BASE_URL=base_url)
    if key:
        env["WANDB_API_KEY"] = key
    return env


def train_with_wandb(data_dir, tmp_path, base_url):
    """train.py --wandb auto, one step, with the fake key and `base_url`: (exit code, output, seconds)."""
    cmd = [sys.executable, str(REPO / "train.py"), "--data_dir", str(data_dir), "--checkpoint_dir",
           str(tmp_path / "ck"), "--epochs", "1", "--max_steps", "1", "--wandb", "auto", *TINY]
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=tmp_path, env=wandb_subprocess_env(tmp_path / "home", base_url),
                         capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout + res.stderr, time.monotonic() - start


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_key_without_reachable_server_trains_offline_within_seconds(data_dir, tmp_path):
    code, out, seconds = train_with_wandb(data_dir, tmp_path, f"http://127.0.0.1:{closed_port()}")
    assert code == 0, out
    assert seconds < 20, (seconds, out)
    assert "unreachable" in out and "logging offline" in out and "wandb sync" in out
    assert "--max_steps 1 reached" in out
    assert FAKE_KEY not in out  # never printed
    run_id = torch_load(tmp_path / "ck" / "latest.pth")["wandb_run_id"]
    assert list((tmp_path / "ck" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert not any(FAKE_KEY in p.read_text(errors="ignore") for p in (tmp_path / "ck").rglob("*") if p.is_file()
                   and p.suffix in (".log", ".yaml", ".json", ".txt"))  # nor stored


def test_wandb_online_start_failing_falls_back_offline_with_the_same_run_id(data_dir, tmp_path):
    """A server that answers, but not as W&B (every request: 501): the online start fails at once; the
    offline run that follows must not trip over the failed attempt's run id."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, out, seconds = train_with_wandb(data_dir, tmp_path, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, out
    assert seconds < 20, (seconds, out)
    assert "online start failed" in out and "logging offline" in out and FAKE_KEY not in out
    run_id = torch_load(tmp_path / "ck" / "latest.pth")["wandb_run_id"]
    assert list((tmp_path / "ck" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_wandb_online_without_login_says_why(data_dir, tmp_path, monkeypatch, capsys):
    import wandb_logging

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))          # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    mode, why = wandb_logging.resolve_mode("online")
    assert mode == "offline" and why.startswith("not logged in") and "WANDB_API_KEY" in why
    assert run(data_dir, tmp_path / "ck", "--epochs", "1", "--max_steps", "1", wandb="online") == 0
    err = capsys.readouterr().err
    assert "W&B: not logged in (no WANDB_API_KEY, no `wandb login`), so logging offline" in err
    assert "wandb login" in err


def test_unwritable_checkpoint_dir_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    (tmp_path / "afile").write_text("x")
    missing_data = tmp_path / "no-data-here"  # reading data would fail with another message
    code, _, err = run_cli(train.main, ["--data_dir", missing_data, "--checkpoint_dir", tmp_path / "afile" / "ck",
                                        "--wandb", "disabled"], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--checkpoint_dir" in err and "is a file" in err
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)  # a read-only location (CI runs as root)
    code, _, err = run_cli(train.main, ["--data_dir", missing_data, "--checkpoint_dir", tmp_path / "ck",
                                        "--wandb", "disabled"], monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--checkpoint_dir" in err and "cannot write" in err
    assert not (tmp_path / "ck").exists()


def test_resume_refuses_another_data_dir_and_accepts_the_same_one_named_differently(data_dir, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    assert run(data_dir, ck, "--epochs", "1", "--max_steps", "1") == 0
    assert torch_load(ck / "latest.pth")["train_args"]["data_dir"] == str(data_dir.resolve())
    other = tmp_path / "copy"
    shutil.copytree(data_dir, other)
    with pytest.raises(UserError) as e:
        run(other, ck, "--epochs", "1")
    msg = str(e.value)
    assert f"--data_dir {data_dir.resolve()}" in msg and "--fresh" in msg and "\n" not in msg
    same = data_dir.parent / ".." / data_dir.parent.name / data_dir.name  # the same folder, another spelling
    assert run(same, ck, "--epochs", "1", "--max_steps", "2") == 0
    assert torch_load(ck / "latest.pth")["step"] == 2


def test_epoch_without_a_finite_step_never_becomes_best(data_dir, tmp_path, monkeypatch, capsys):
    nan_loss_at(monkeypatch, set(range(1000)))
    ck = tmp_path / "ck"
    assert run(data_dir, ck, "--epochs", "1", "--val_fraction", "0", "--max_nan_steps", "1000") == 0
    assert "epoch 1: train loss n/a" in capsys.readouterr().err
    state = torch_load(ck / "latest.pth")
    assert state["epoch"] == 1 and state["nan_skipped"] == state["step"] > 0
    assert not (ck / "best.pth").exists() and state["best_val_loss"] == math.inf


def epoch_losses(text):
    return re.findall(r"epoch (\d+): train loss (\S+), val loss (\S+)", text)


def test_mid_epoch_resume_reports_the_uninterrupted_epoch_loss(data_dir, tmp_path, capsys):
    assert run(data_dir, tmp_path / "a", "--epochs", "1") == 0
    uninterrupted = epoch_losses(capsys.readouterr().err)
    ck = tmp_path / "b"
    assert run(data_dir, ck, "--epochs", "1", "--max_steps", "2") == 0
    mid = torch_load(ck / "latest.pth")
    assert (mid["batch_in_epoch"], mid["epoch_loss_count"]) == (2, 2) and mid["epoch_loss_sum"] > 0
    capsys.readouterr()
    assert run(data_dir, ck, "--epochs", "1") == 0
    resumed = epoch_losses(capsys.readouterr().err)
    assert len(uninterrupted) == 1 and resumed == uninterrupted
    end = torch_load(ck / "latest.pth")
    assert (end["epoch"], end["batch_in_epoch"], end["epoch_loss_sum"], end["epoch_loss_count"]) == (1, 0, 0.0, 0)


def test_config_that_does_not_match_its_weights_is_one_line_on_resume(data_dir, tmp_path):
    ck = tmp_path / "ck"
    assert run(data_dir, ck, "--epochs", "1", "--max_steps", "1") == 0
    state = torch_load(ck / "latest.pth")
    key = next(k for k, v in state["model"].items() if v.dim() == 2)
    state["model"][key] = state["model"][key][:-1]  # one row short: a size mismatch
    torch.save(state, ck / "latest.pth")
    with pytest.raises(UserError) as e:
        run(data_dir, ck, "--epochs", "1")
    msg = str(e.value)
    assert str(ck / "latest.pth") in msg and "do not match" in msg and key in msg and "\n" not in msg


def test_data_warnings_are_one_plain_line(data_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    d = torch_load(data / "pluck_0.pt")
    d["audio"] = torch.zeros_like(d["audio"])
    d["loudness_db"] = torch.full_like(d["loudness_db"], -80.0)
    torch.save(d, data / "silent.pt")
    res = subprocess.run([sys.executable, str(REPO / "train.py"), "--data_dir", str(data), "--checkpoint_dir",
                          str(tmp_path / "ck"), "--epochs", "1", "--max_steps", "1", "--wandb", "disabled",
                          "--val_fraction", "0", *TINY], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if "silent.pt" in line]
    assert lines == [f"{data / 'silent.pt'}: silent throughout (below -70.0 dB); left out of the train split"]
    assert "Warning" not in res.stderr and "warn(" not in res.stderr


def test_checkpoint_from_before_decoder_stride_resumes_as_stride_1(tmp_path):
    """A training checkpoint written before `decoder_stride` existed has no such key: it was trained with the
    every-frame decoder, so `--decoder_stride 1` resumes it and the new default is refused with the flag."""
    from checkpoints import CHECKPOINT_VERSION, REQUIRED_KEYS, check_resume_conflicts, load_checkpoint

    path = tmp_path / "latest.pth"
    ckpt = {k: {} for k in REQUIRED_KEYS}
    ckpt.update(version=CHECKPOINT_VERSION, epoch=1, step=3, config={"hidden_size": 32})
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded["config"]["decoder_stride"] == 1
    check_resume_conflicts(loaded, path, {"decoder_stride": 1}, {})
    with pytest.raises(UserError, match="--decoder_stride 1 to resume"):
        check_resume_conflicts(loaded, path, {"decoder_stride": 4}, {})
