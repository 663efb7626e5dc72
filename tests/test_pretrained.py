"""The bundled demo model: loads safely, renders a plausible guitar tone, and transfer.py uses it by default.

If model code changes incompatibly, these fail: retrain pretrained/guitar_demo.pth (README, "The bundled model").
"""
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import features
import model as model_lib
import transfer

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "pretrained" / "guitar_demo.pth"


def test_bundled_checkpoint_is_small_and_loads_with_weights_only():
    assert CKPT.stat().st_size < 20 * 2**20
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "config", "version", "info"}   # inference only: no optimizer state
    cfg = ckpt["config"]
    assert len(cfg["loudness_quantiles"]) == 101 and 30 < cfg["mean_midi"] < 90
    net = model_lib.load_model(CKPT)
    assert not net.training


def test_bundled_model_renders_a_pitched_note_that_follows_loudness():
    torch.manual_seed(0)
    net = model_lib.load_model(CKPT)
    frames = 700                                    # 1 s at a played level, then 1.8 s at the -80 dB floor
    f0 = torch.full((1, frames), 196.0)             # G3
    loud = torch.cat([torch.full((1, 250), float(np.quantile(net.config["loudness_quantiles"], 0.9))),
                      torch.full((1, frames - 250), -80.0)], dim=1)
    with torch.no_grad():
        y = net(f0, loud)["audio"][0].numpy()
    assert np.isfinite(y).all()
    # the learned reverb IR is 1 s long: judge the rest after it has run out
    note, rest = y[2000:16000], y[int(2.1 * features.SAMPLE_RATE):]
    assert np.sqrt(np.mean(note ** 2)) > 1000 * np.sqrt(np.mean(rest ** 2))  # silence renders as silence
    spec = np.abs(np.fft.rfft(note * np.hanning(note.size)))
    freqs = np.fft.rfftfreq(note.size, 1 / features.SAMPLE_RATE)
    partials = [spec[np.abs(freqs - k * 196.0) < 4].max() for k in range(1, 6)]
    between = [spec[np.abs(freqs - (k + 0.5) * 196.0) < 4].max() for k in range(1, 6)]
    assert min(partials) > 10 * max(between)       # energy on the harmonics of 196 Hz, not between them


def test_transfer_uses_the_bundled_model_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # the default checkpoint is found from any folder
    sr = features.SAMPLE_RATE
    t = np.arange(int(1.5 * sr)) / sr
    hum = 0.3 * np.sin(2 * np.pi * 220 * t) * np.minimum(1, t / 0.05)
    sf.write(tmp_path / "hum.wav", hum.astype(np.float32), sr)
    assert transfer.main([str(tmp_path / "hum.wav"), "-o", str(tmp_path / "out.wav"), "--device", "cpu"]) in (0, None)
    y, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == sr and y.size == hum.size and np.abs(y).max() <= 10 ** (-1 / 20) + 1e-4
