"""Training data: preprocessed feature files (`preprocess.py` -> `<name>.pt`) -> aligned random crops.

Each item is one crop of `crop_seconds` taken from one file, with audio and frame features aligned on
the frame grid: a crop starting at frame `s` holds

    audio[s * HOP : s * HOP + crop_samples]      (crop_samples = crop_frames * HOP)
    f0_hz / loudness_db / periodicity[s : s + crop_frames]

(frame i is centred on sample i * HOP, see features.py; the file's audio is zero-padded at load time to
exactly F * HOP samples so every frame has its HOP samples).

Decisions (documented here once):
- Split: by file, from a hash (SHA-1) of the file's path relative to `data_dir` (POSIX form), so the
  split is the same on every machine and does not depend on `seed` or on which other files exist. A
  file is in "val" when its hash, read as a number in [0, 1), is below `val_fraction`. With >= 2
  files (and val_fraction > 0) each split gets at least one file: if the hash puts none in val, the
  file with the smallest hash moves there; if it puts all there, the one with the largest hash goes back
  to train. With a single file, val is empty (train.py then validates on nothing and says so).
- Length: an epoch has `sum(max(1, F_i // crop_frames))` crops, i.e. about one pass over the audio.
  Item i belongs to file j for the j-th block of that many indices; its start frame is drawn uniformly
  from the file's non-silent crop positions with an RNG seeded by (seed, epoch, i). Crops are
  therefore a pure function of (seed, epoch, index): reproducible, independent of DataLoader workers,
  and an interrupted epoch resumes with exactly the same crops (call `set_epoch` each epoch).
- Silence: a crop whose loudness never reaches `silence_db` (default features.SILENCE_DB, -70 dB) is
  never drawn (the set of allowed start frames is precomputed, so nothing is re-drawn). Files that are
  silent throughout are left out, with a one-line message (`log`); if every file is silent that is a UserError.
- Short files (fewer frames than a crop): the crop is the whole file, padded at the end: audio with
  zeros, f0 with its last value (keeps log-pitch finite), periodicity with 0, loudness with the floor
  of digital silence (-LOUDNESS_RANGE_DB = -80 dB, features.py). `mask` [crop_frames] is 1 for real
  frames and 0 for padding (train.py zeroes the prediction there, so padding costs nothing in the
  loss). Every item carries `mask`, all ones for ordinary crops, so batches collate.
- Validation ("val"): deterministic crops that tile each val file (start frames 0, C, 2C, ..., the last
  one moved back to end with the file), silent tiles left out; the same every epoch, so val losses are
  comparable across epochs.
- Statistics (`stats`, for the model config): always computed over the TRAIN split (see
  `dataset_statistics`). `refresh_checkpoint_statistics` recomputes them for an existing checkpoint
  (e.g. one trained before a statistic existed), from the same split, without retraining.

Memory: every file of the split is held in RAM (float32 audio, ~64 kB per second of audio), which
keeps items cheap and lets DataLoader workers share the tensors after fork.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import notes
from features import (FEATURE_VERSION, FRAME_RATE, HOP, LOUDNESS_RANGE_DB, SAMPLE_RATE, SILENCE_DB, VOICED_THRESHOLD,
                      n_frames)
from model import STATS_KEYS, read_checkpoint
from utils import UserError, atomic_torch_save, torch_load

FEATURE_KEYS = ("audio", "f0_hz", "periodicity", "loudness_db")
REQUIRED_KEYS = FEATURE_KEYS + ("sample_rate", "hop", "version")
PLUCK_BANDS = 6            # pluck envelope: pitch bands of equal note counts ...
PLUCK_NOTES_PER_BAND = 50  # ... but fewer bands when the training set has fewer notes than 50 per band
PLUCK_MIN_NOTES = 20       # a band's curve runs while at least this many of its notes still sound
PLUCK_TAIL_FRAMES = 125    # past its end the curve goes on at the slope of its last 0.5 s

# Expected conditions in the data (a silent file, no notes) are reported as one plain line through this
# logger (printed to stderr as is when the application configures no logging), not as Python warnings.
log = logging.getLogger(__name__)


# ---- files ---------------------------------------------------------------------------------------

def find_feature_files(data_dir: str | Path) -> list[Path]:
    """All `*.pt` files under `data_dir` (recursive), sorted by relative path.

    Raises UserError (one line) when the folder is missing or holds no .pt files.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir}: folder not found; run preprocess.py first "
                        f"(it writes data/processed/<set>/*.pt) or pass the folder that holds the .pt files")
    files = sorted(p for p in data_dir.rglob("*.pt") if p.is_file())
    if not files:
        raise UserError(f"--data_dir {data_dir}: no .pt feature files in it; run preprocess.py on your "
                        f"audio first, or pass the folder that holds its output")
    return files


def load_feature_file(path: str | Path) -> dict:
    """Load and validate one feature file.

    Returns dict(audio f32[F*HOP] (zero-padded to whole frames), f0_hz / periodicity / loudness_db
    f32[F]). Raises UserError naming the file and preprocess.py for anything unusable: unreadable
    file, missing keys, other feature version, wrong rates, misaligned lengths, NaN/inf values.
    """
    path = Path(path)
    try:
        d = torch_load(path)
    except Exception as e:  # truncated/corrupt file, not a torch file, unsafe pickle
        raise UserError(f"{path}: cannot be read as a feature file ({type(e).__name__}); "
                        f"delete it and re-run preprocess.py") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a Neural Guitar feature file; re-run preprocess.py")
    version = d.get("version")
    if version is None or (isinstance(version, int) and version < FEATURE_VERSION):
        raise UserError(f"{path}: made by an older preprocess.py (feature version {version}, this code "
                        f"needs {FEATURE_VERSION}); re-run preprocess.py")
    if version != FEATURE_VERSION:
        raise UserError(f"{path}: feature version {version!r} is not the {FEATURE_VERSION} this code reads "
                        f"(made by a newer preprocess.py?); re-run this code's preprocess.py")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; re-run preprocess.py")
    if int(d["sample_rate"]) != SAMPLE_RATE or int(d["hop"]) != HOP:
        raise UserError(f"{path}: sample_rate {d['sample_rate']} / hop {d['hop']}, expected {SAMPLE_RATE} / "
                        f"{HOP}; re-run preprocess.py")
    out = {}
    for k in FEATURE_KEYS:
        v = d[k]
        if not isinstance(v, torch.Tensor) or v.dim() != 1:
            raise UserError(f"{path}: '{k}' must be a 1-D tensor; re-run preprocess.py")
        v = v.to(torch.float32)
        if not torch.isfinite(v).all():
            raise UserError(f"{path}: '{k}' contains NaN or inf; re-run preprocess.py on its source audio")
        out[k] = v
    T, F = out["audio"].numel(), n_frames(out["audio"].numel())
    for k in FEATURE_KEYS[1:]:
        if out[k].numel() != F:
            raise UserError(f"{path}: '{k}' has {out[k].numel()} frames but {T} samples need {F}; "
                            f"re-run preprocess.py")
    if F == 0:
        raise UserError(f"{path}: holds no audio; delete it or re-run preprocess.py")
    out["audio"] = torch.nn.functional.pad(out["audio"], (0, F * HOP - T))
    return out


def split_fraction(relative_path: str) -> float:
    """Stable position in [0, 1) of a file for the train/val split (SHA-1 of its POSIX relative path)."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_files(relative_paths: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic file-level split -> (train, val), both sorted. See the module docstring."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val_fraction {val_fraction}: must be in [0, 1)")
    pos = {p: split_fraction(p) for p in relative_paths}
    val = {p for p in relative_paths if pos[p] < val_fraction}
    if len(relative_paths) >= 2 and val_fraction > 0:
        if not val:
            val = {min(relative_paths, key=pos.get)}
        elif len(val) == len(relative_paths):
            val.discard(max(relative_paths, key=pos.get))
    train = sorted(p for p in relative_paths if p not in val)
    return train, sorted(val)


# ---- statistics ----------------------------------------------------------------------------------

def dataset_statistics(files: list, silence_db: float = SILENCE_DB) -> dict:
    """Training-set statistics for the model config.

    Args:
        files: feature dicts (as from `load_feature_file`) or paths to .pt files.
    Returns:
        dict with the keys model.STATS_KEYS: loudness_mean, loudness_std: float dB over non-silent frames (loudness >= silence_db);
             loudness_quantiles: 101 floats, dB, the 0..100 % quantiles of those frames;
             mean_midi: float, mean MIDI pitch of voiced frames (periodicity >= features.VOICED_THRESHOLD,
             f0 > 0); pitch_range_midi: [low, high] MIDI, the 5th and 95th percentile of those frames'
             pitch (`notes.pitch_range`, auto octave's target); pluck_envelope: dict or None, see
             `pluck_envelope_statistic`.
        Plain Python numbers, so the dict can go into a checkpoint config.
    """
    feats = [f if isinstance(f, dict) else load_feature_file(f) for f in files]
    if not feats:
        raise UserError("no training files to compute dataset statistics from; check --data_dir")
    loud = np.concatenate([f["loudness_db"].numpy() for f in feats]).astype(np.float64)
    loud = loud[loud >= silence_db]
    if loud.size == 0:
        raise UserError(f"every frame of the training files is below {silence_db} dB (silent); "
                        f"check the audio given to preprocess.py")
    f0 = np.concatenate([f["f0_hz"].numpy() for f in feats]).astype(np.float64)
    per = np.concatenate([f["periodicity"].numpy() for f in feats])
    voiced = (per >= VOICED_THRESHOLD) & (f0 > 0)
    if not voiced.any():
        log.warning(f"no voiced frames (periodicity >= {VOICED_THRESHOLD}) in the training files; mean_midi "
                    f"uses all frames with f0 > 0")
        voiced = f0 > 0
    mean_midi = notes.mean_midi(f0, voiced) if voiced.any() else 60.0
    pitch_range = notes.pitch_range(f0, voiced) if voiced.any() else None
    return {
        "loudness_mean": float(loud.mean()),
        "loudness_std": float(max(loud.std(), 1e-3)),
        "loudness_quantiles": [float(q) for q in notes.loudness_quantiles(loud)],
        "mean_midi": mean_midi,
        "pitch_range_midi": pitch_range,
        "pluck_envelope": pluck_envelope_statistic(feats),
    }


def note_envelopes(f0_hz: np.ndarray, periodicity: np.ndarray, loudness_db: np.ndarray,
                   attack_frames: int = notes.PLUCK_ATTACK_FRAMES) -> list[tuple[float, np.ndarray, float]]:
    """The notes of one file, found as transfer.py finds sung notes (notes.detect_notes with its
    defaults, notes.note_segments), each as (pitch: notes.note_midi, MIDI; loudness relative to its
    onset level (notes.note_onset): float64 [n] dB, frame t after the note's first frame; the onset
    level, dB). f0_hz, periodicity, loudness_db: [F] (Hz, 0..1, dB)."""
    loud = np.asarray(loudness_db, np.float64)
    f0 = np.asarray(f0_hz, np.float64)
    note = notes.detect_notes(periodicity, loud)
    found = []
    for a, b in notes.note_segments(note, f0):
        level = notes.note_onset(loud[a:b], attack_frames)[1]
        found.append((notes.note_midi(f0[a:b]), loud[a:b] - level, level))
    return found


def median_curve(relative_db: list, min_notes: int = PLUCK_MIN_NOTES) -> np.ndarray:
    """Frame-by-frame median of notes of different lengths ([n_i] dB each), over the notes still sounding
    at that frame; it ends where fewer than min(min_notes, number of notes) sound. Returns float64 [H]."""
    lengths = np.sort([r.size for r in relative_db])[::-1]
    H = int(lengths[min(min_notes, lengths.size) - 1])
    table = np.full((len(relative_db), H), np.nan)
    for i, r in enumerate(relative_db):
        table[i, :min(H, r.size)] = r[:H]
    return np.nanmedian(table, axis=0)


def tail_slope_db_per_s(curve: np.ndarray, tail_frames: int = PLUCK_TAIL_FRAMES) -> float:
    """Least-squares slope of a curve's last `tail_frames` frames, dB/s, never above 0 (a plucked note
    does not swell); the fixed notes.PLUCK_DECAY_DB_PER_S decay when the curve has one frame."""
    tail = np.asarray(curve, np.float64)[-tail_frames:]
    if tail.size < 2:
        return -notes.PLUCK_DECAY_DB_PER_S
    return min(0.0, float(np.polyfit(np.arange(tail.size), tail, 1)[0]) * FRAME_RATE)


def pluck_envelope_statistic(files: list, n_bands: int = PLUCK_BANDS, notes_per_band: int = PLUCK_NOTES_PER_BAND,
                             min_notes: int = PLUCK_MIN_NOTES, attack_frames: int = notes.PLUCK_ATTACK_FRAMES
                             ) -> dict | None:
    """What a training note's loudness does after its onset, by pitch band (transfer.py's pluck envelope).

    Notes are found with the functions transfer.py applies to a voice (`note_envelopes`), so the statistic
    and its use agree. Notes are split into k = clip(n_notes // notes_per_band, 1, n_bands) pitch bands of
    equal note counts (edges: the note-pitch quantiles i/k; a band left empty by many notes of one pitch
    is merged into its neighbour); per band, the curve is the frame-by-frame median of the notes' loudness
    relative to their onset level (`median_curve`: attack and decay, over the notes still sounding), and
    its tail slope (`tail_slope_db_per_s`) continues it for longer notes.

    Args:
        files: feature dicts (as from `load_feature_file`) or paths to .pt files.
    Returns:
        None when no file holds a note, else dict(attack_frames int (the onset rule, notes.note_onset),
        band_edges_midi: k-1 floats ascending (a note of pitch m is in band notes.pluck_band(edges, m)),
        curves_db: k lists of floats, dB relative to the onset level, one per frame (250/s) from the
        note's first frame, tail_db_per_s: k floats <= 0, notes: k ints (notes per band),
        onset_db_median: float, the median onset level of all the notes, dB (where transfer.py puts the
        median sung onset)).
    """
    feats = [f if isinstance(f, dict) else load_feature_file(f) for f in files]
    found = [n for f in feats for n in note_envelopes(f["f0_hz"].numpy(), f["periodicity"].numpy(),
                                                      f["loudness_db"].numpy(), attack_frames)]
    if not found:
        log.warning("no notes found in the training files; transfer.py will use its fixed pluck decay")
        return None
    midi = np.array([m for m, _, _ in found])
    k = int(np.clip(len(found) // notes_per_band, 1, n_bands))
    edges = sorted({float(e) for e in np.quantile(midi, np.arange(1, k) / k)})
    while True:  # many notes of one pitch can leave a band empty: merge it into its neighbour
        bands = np.array([notes.pluck_band(edges, m) for m in midi])
        empty = np.flatnonzero(np.bincount(bands, minlength=len(edges) + 1) == 0)
        if empty.size == 0:
            break
        del edges[max(int(empty[0]) - 1, 0)]
    curves, tails, counts = [], [], []
    for b in range(len(edges) + 1):
        curve = median_curve([r for (_, r, _), i in zip(found, bands) if i == b], min_notes)
        curves.append([float(v) for v in curve])
        tails.append(tail_slope_db_per_s(curve))
        counts.append(int(np.sum(bands == b)))
    return {"attack_frames": int(attack_frames), "band_edges_midi": edges, "curves_db": curves,
            "tail_db_per_s": tails, "notes": counts,
            "onset_db_median": float(np.median([level for _, _, level in found]))}


INPUT_SCALING_KEYS = ("loudness_mean", "loudness_std")  # statistics the trained weights depend on


def refresh_checkpoint_statistics(checkpoint, data_dir, val_fraction: float = 0.1, output=None) -> list[str]:
    """Recompute the training-set statistics in a checkpoint's config from its data folder, without
    retraining (the weights and every other entry stay as they are); e.g. to add a statistic that was
    introduced after the model was trained (such as `pluck_envelope`).

    The training split is rebuilt exactly as train.py builds it (`NeuralGuitarDataset(data_dir, split=
    "train", val_fraction=val_fraction).stats`). Its input-scaling statistics (INPUT_SCALING_KEYS) must
    equal the checkpoint's (to 1e-6 relative): otherwise this is not the data (or --val_fraction) the model
    was trained on, and UserError is raised with nothing written. Then every statistic is replaced and the
    checkpoint is written atomically to `output` (default: over `checkpoint`).
    Returns the names of the statistics whose stored value changed (added ones included).
    """
    checkpoint = Path(checkpoint)
    ckpt = read_checkpoint(checkpoint, flag="update_stats.py's checkpoint argument")
    config = ckpt["config"]
    stats = NeuralGuitarDataset(data_dir, split="train", val_fraction=val_fraction).stats
    for key in INPUT_SCALING_KEYS:
        old = config.get(key)
        if old is None or abs(float(old) - stats[key]) > 1e-6 * max(1.0, abs(stats[key])):
            raise UserError(f"{checkpoint}: its {key} is {old} but the training split of {data_dir} (val_fraction "
                            f"{val_fraction}) gives {stats[key]:.6g}: not the data this model was trained on; "
                            f"pass the --data_dir and --val_fraction it was trained with")
    changed = [k for k in STATS_KEYS if config.get(k) != stats[k]]
    ckpt["config"] = {**config, **stats}
    atomic_torch_save(ckpt, checkpoint if output is None else output)
    return changed


# ---- dataset -------------------------------------------------------------------------------------

class NeuralGuitarDataset(Dataset):
    """Aligned crops of audio and frame features from the .pt files under `data_dir`.

    Args:
        data_dir: folder searched recursively for `*.pt` feature files.
        crop_seconds: crop length; rounded to whole frames (crop_frames = round(s * 250)).
        split: "train" (random crops, see `set_epoch`) or "val" (fixed tiling crops).
        val_fraction: share of files (by hash) held out for validation.
        seed: seeds the crop positions of the train split.
        silence_db: crops whose loudness stays below this are never drawn.

    Item: dict(audio f32[crop_samples] (-1..1), f0_hz f32[crop_frames] Hz, loudness_db
        f32[crop_frames] dB, periodicity f32[crop_frames] 0..1, mask f32[crop_frames] 1 = real frame).
    """

    def __init__(self, data_dir, crop_seconds: float = 4.0, split: str = "train", val_fraction: float = 0.1,
                 seed: int = 0, silence_db: float = SILENCE_DB):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        self.data_dir = Path(data_dir)
        self.split, self.seed, self.silence_db = split, int(seed), float(silence_db)
        self.crop_frames = max(1, int(round(crop_seconds * FRAME_RATE)))
        self.crop_samples = self.crop_frames * HOP
        self.epoch = 0
        paths = find_feature_files(self.data_dir)
        rel = [p.relative_to(self.data_dir).as_posix() for p in paths]
        train, val = split_files(rel, val_fraction)
        self.train_files, self.val_files = train, val
        self.files = train if split == "train" else val
        self._stats = None
        self._train_feats = None
        self.items, self.starts, self.names = [], [], []  # loaded features, allowed start frames, names
        for name in self.files:
            feat = load_feature_file(self.data_dir / name)
            starts = self._allowed_starts(feat["loudness_db"])
            if starts.size == 0:
                log.warning(f"{self.data_dir / name}: silent throughout (below {self.silence_db} dB); "
                            f"left out of the {split} split")
                continue
            self.items.append(feat)
            self.starts.append(starts)
            self.names.append(name)
        if split == "train":
            self._train_feats = self.items
            if not self.items:
                raise UserError(f"--data_dir {self.data_dir}: every training file is silent (below "
                                f"{self.silence_db} dB); check the audio given to preprocess.py")
            counts = [max(1, self._n_frames(f) // self.crop_frames) for f in self.items]
            self.index = np.cumsum([0] + counts)  # item i -> file searchsorted(index, i, 'right') - 1
        else:
            # fixed tiles: (file, start) for every non-silent tile of every val file
            self.tiles = []
            for j, (feat, starts) in enumerate(zip(self.items, self.starts)):
                allowed = set(starts.tolist())
                last = max(self._n_frames(feat) - self.crop_frames, 0)
                tiles = sorted({min(s, last) for s in range(0, max(self._n_frames(feat), 1), self.crop_frames)})
                self.tiles += [(j, s) for s in tiles if s in allowed]

    # -- helpers --
    @staticmethod
    def _n_frames(feat: dict) -> int:
        return feat["loudness_db"].numel()

    def _allowed_starts(self, loudness_db: torch.Tensor) -> np.ndarray:
        """Start frames whose crop has at least one frame at or above silence_db (int64 array)."""
        loud = (loudness_db.numpy() >= self.silence_db).astype(np.int64)
        F = loud.size
        if F <= self.crop_frames:
            return np.zeros(1, dtype=np.int64) if loud.any() else np.zeros(0, dtype=np.int64)
        c = np.concatenate([[0], np.cumsum(loud)])
        n_loud = c[self.crop_frames:] - c[:-self.crop_frames]  # frames above the floor in crop at s
        return np.nonzero(n_loud > 0)[0].astype(np.int64)

    def _crop(self, feat: dict, start: int) -> dict:
        C, Fn = self.crop_frames, self._n_frames(feat)
        end = min(start + C, Fn)
        n = end - start
        audio = feat["audio"][start * HOP: end * HOP]
        f0 = feat["f0_hz"][start:end]
        loud = feat["loudness_db"][start:end]
        per = feat["periodicity"][start:end]
        mask = torch.ones(C, dtype=torch.float32)
        if n < C:  # short file: pad to a full crop (see module docstring)
            pad = C - n
            floor = -LOUDNESS_RANGE_DB
            audio = torch.nn.functional.pad(audio, (0, pad * HOP))
            f0 = torch.cat([f0, f0[-1:].expand(pad)])
            loud = torch.cat([loud, torch.full((pad,), floor)])
            per = torch.nn.functional.pad(per, (0, pad))
            mask[n:] = 0.0
        return {"audio": audio.clone(), "f0_hz": f0.clone(), "loudness_db": loud.clone(),
                "periodicity": per.clone(), "mask": mask}

    # -- public --
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's crop positions (train split); call before iterating each epoch."""
        self.epoch = int(epoch)

    @property
    def stats(self) -> dict:
        """`dataset_statistics` of the TRAIN split (loaded on demand for a val dataset)."""
        if self._stats is None:
            if self._train_feats is None:
                self._train_feats = [load_feature_file(self.data_dir / n) for n in self.train_files]
            self._stats = dataset_statistics(self._train_feats, self.silence_db)
        return self._stats

    def __len__(self) -> int:
        return int(self.index[-1]) if self.split == "train" else len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.split == "val":
            j, start = self.tiles[i]
            return self._crop(self.items[j], start)
        j = int(np.searchsorted(self.index, i, side="right") - 1)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        starts = self.starts[j]
        return self._crop(self.items[j], int(starts[rng.integers(starts.size)]))

    def example(self) -> dict:
        """A fixed, loud crop (the same on every call), e.g. for listening to reconstructions: the
        loudest (mean loudness) val tile, or for train the loudest crop position of the first file."""
        if self.split == "val":
            scores = [float(self.items[j]["loudness_db"][s: s + self.crop_frames].mean()) for j, s in self.tiles]
            return self[int(np.argmax(scores))]
        feat, starts = self.items[0], self.starts[0]
        starts = starts[:: max(1, self.crop_frames // 4)]
        scores = [float(feat["loudness_db"][s: s + self.crop_frames].mean()) for s in starts]
        return self._crop(feat, int(starts[int(np.argmax(scores))]))

    def describe(self) -> str:
        """One line: files, hours of audio, crops per epoch."""
        seconds = sum(f["audio"].numel() for f in self.items) / SAMPLE_RATE
        return (f"{self.split}: {len(self.items)} files, {seconds / 60:.1f} min of audio, {len(self)} crops of "
                f"{self.crop_frames / FRAME_RATE:g} s")
