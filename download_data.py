"""Download GuitarSet (Zenodo record 3371780), check it, and extract it safely.

    python download_data.py                                   # mono microphone audio (~ 0.7 GB)
    python download_data.py --subset hex-debleeded --split-strings --styles solo
    python download_data.py --mirror /mnt/share/guitarset     # local copy of the Zenodo files

Layout under --output_dir (default data/raw/guitarset):
    archives/<archive>.zip          the downloaded archive (kept; a re-run verifies it and skips the download)
    archives/<archive>.zip.part     an unfinished download; the next run continues it with an HTTP Range request
    <subset>/...                    the extracted files, e.g. mono-mic/00_BN1-129-Eb_comp_mic.wav

Integrity: every archive's MD5 is checked against the checksum published on the Zenodo record (the same
values mirdata's GuitarSet loader uses); a mismatch deletes the file and exits 1.

Extraction is all-or-nothing: every member of an archive is validated first (absolute paths, `..`
components and symlink entries are refused), then the selected members are written into a temporary
folder inside the target folder and only moved into place when all of them were written.

--split-strings (hex subsets): each 6-channel recording becomes six mono files
`<name>_string1.wav` ... `<name>_string6.wav` (string1 = low E = channel 0, string6 = high e), in the
source's sample rate and sample format. A string counts as silent, and is not written (a note says so),
when the RMS of its loudest 100 ms window is below --silence-db dBFS (default -60 dBFS, full scale = 1.0).
The rule is a plain threshold: debleeded channels of unplayed strings still carry low-level residue, so
tune --silence-db if you see residue kept or quiet playing dropped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import requests
from tqdm import tqdm

from utils import HelpFormatter, UserError, atomic_path, check_output_path, run_main

ZENODO_RECORD = "https://zenodo.org/record/3371780"
ZENODO_FILES = f"{ZENODO_RECORD}/files"


@dataclass(frozen=True)
class Archive:
    """One file of the Zenodo record: its name there, its published MD5, what it holds."""

    name: str
    md5: str
    about: str
    hex: bool = False  # 6-channel hexaphonic-pickup audio (one channel per string, low E first)


# The one table of GuitarSet archives (subset -> archive). MD5s as published on Zenodo record 3371780.
ARCHIVES: dict[str, Archive] = {
    "mono-mic": Archive("audio_mono-mic.zip", "275966d6610ac34999b58426beb119c3",
                        "mono microphone recordings, 44.1 kHz"),
    "mono-pickup-mix": Archive("audio_mono-pickup_mix.zip", "aecce79f425a44e2055e46f680e10f6a",
                               "mono mix of the hexaphonic pickup, 44.1 kHz"),
    "hex-debleeded": Archive("audio_hex-pickup_debleeded.zip", "c31d97279464c9a67e640cb9061fb0c6",
                             "6-channel hexaphonic pickup, bleed removed (~3.6 GB)", hex=True),
    "hex-original": Archive("audio_hex-pickup_original.zip", "f9911bf217cb40e9e68edf3726ef86cc",
                            "6-channel hexaphonic pickup, as recorded", hex=True),
    "annotations": Archive("annotation.zip", "b39b78e63d3446f2e54ddb7a54df9b10",
                           "JAMS annotations (notes, pitch contours, chords, beats)"),
}

STYLES = ("solo", "comp")
CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 15
READ_TIMEOUT_S = 60
SILENCE_WINDOW_S = 0.1
MARKER_NAME = ".download_data.json"
STRING_NAMES = ("low E", "A", "D", "G", "B", "high e")


def log(msg: str) -> None:
    """One progress line on stdout that does not tear a running tqdm bar."""
    tqdm.write(msg, file=sys.stdout)


class _Transient(Exception):
    """A failure worth retrying: connection refused/reset/dropped, timeout, HTTP 5xx/429."""


# ----------------------------------------------------------------------------------------------------
# where archives come from

def source_for(archive: Archive, url: str | None, mirror: str | None) -> str:
    """URL (http/https/file) or local path of `archive`: --url as given, else <mirror>/<name>, else Zenodo."""
    if url:
        return url
    if mirror:
        return mirror.rstrip("/") + "/" + archive.name
    return f"{ZENODO_FILES}/{archive.name}?download=1"


def _local_path(source: str) -> Path | None:
    """The file a `file://` URL or a plain path names, or None for http(s) sources."""
    scheme = urlparse(source).scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        return Path(url2pathname(unquote(urlparse(source).path)))
    if "://" in source:
        raise UserError(f"unsupported URL scheme in {source!r}: use http(s)://, file:// or a local folder")
    return Path(source)


def _host(url: str) -> str:
    return urlparse(url).netloc or url


def _short_reason(exc: BaseException) -> str:
    """A short cause for a requests exception ('[Errno 111] Connection refused' rather than the pool dump)."""
    text = str(exc)
    m = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
    if m:
        return f"connection dropped with {m.group(2)} bytes still expected"
    for pattern in (r"\[Errno -?\d+\] [^'\")\]]+", r"Read timed out", r"Connection aborted",
                    r"Connection broken: [^'\")]+"):
        m = re.search(pattern, text)
        if m:
            return m.group(0).strip()
    return type(exc).__name__ if len(text) > 120 or not text else text


# ----------------------------------------------------------------------------------------------------
# checksums and downloads

def md5sum(path: Path, label: str | None = None) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks (a bar for files over 64 MiB)."""
    h = hashlib.md5()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=f"verify {label or path.name}", leave=False,
                                     disable=size < 64 * 2**20) as bar:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _http_attempt(session: requests.Session, url: str, part: Path, label: str) -> str:
    """One GET of `url` into `part`, continuing it with a Range request when it already has bytes.

    Returns "done" when the body arrived complete, "416" when the server says the part already covers
    the whole file (range not satisfiable). Raises _Transient for retryable failures (the part keeps
    what arrived), UserError for HTTP 4xx.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # byte offsets must be offsets into the file itself
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as r:
        code = r.status_code
        if code == 404:
            raise UserError(f"{label}: not found at {url} (HTTP 404); check the name, --url or --mirror")
        if code == 416 and offset:
            return "416"
        if code == 429 or code >= 500:
            raise _Transient(f"HTTP {code} {r.reason}")
        if code >= 400:
            raise UserError(f"{label}: {url} answered HTTP {code} {r.reason}; check --url / --mirror or try later")
        mode = "wb"
        if offset and code == 206:
            m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                part.unlink()
                raise _Transient(f"server answered range {r.headers.get('Content-Range')!r} for bytes={offset}-")
            mode = "ab"
            log(f"{label}: resuming at {offset / 2**20:.1f} MiB")
        elif offset:
            log(f"{label}: server ignored the Range request (HTTP {code}); restarting from zero")
            offset = 0
        length = r.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=label, leave=False) as bar:
            for chunk in r.iter_content(CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise _Transient(f"connection closed at {part.stat().st_size} of {total} bytes")
    return "done"


def _copy_local(src: Path, part: Path, label: str) -> None:
    """Copy a local archive (--mirror DIR / file:// URL) into `part`, continuing an unfinished copy."""
    if not src.is_file():
        raise UserError(f"{label}: {src} does not exist; check --mirror / --url")
    offset = part.stat().st_size if part.exists() else 0
    size = src.stat().st_size
    if offset > size:
        part.unlink()
        offset = 0
    with open(src, "rb") as fin, open(part, "ab" if offset else "wb") as fout, \
            tqdm(total=size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=label, leave=False) as bar:
        fin.seek(offset)
        for block in iter(lambda: fin.read(2**20), b""):
            fout.write(block)
            bar.update(len(block))


def fetch(source: str, dest: Path, md5: str, retries: int = 5, retry_wait: float = 1.0) -> str:
    """Make `dest` a verified copy of `source` (http(s) URL, file:// URL or local path).

    A `dest` that already exists and matches `md5` is kept (nothing is fetched). An unfinished
    `<dest>.part` is continued. Connection failures are retried `retries` times, waiting
    retry_wait * 2**k seconds before retry k+1; the part file keeps every byte that arrived, so each
    retry continues where the last one stopped. The finished file is renamed to `dest` only after its
    MD5 matched; on a mismatch it is deleted and UserError is raised.
    Returns "present" or "downloaded".
    """
    label = dest.name
    if dest.exists():
        if md5sum(dest) == md5:
            log(f"{label}: already downloaded, md5 ok ({dest})")
            return "present"
        log(f"{label}: existing file does not match md5 {md5}; deleting it and downloading again")
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    local = _local_path(source)
    try:
        if local is not None:
            _copy_local(local, part, label)
        else:
            _download_with_retries(source, part, label, md5, retries, retry_wait)
    except OSError as e:  # disk full, permission denied, ... (requests' own errors were handled above)
        raise UserError(f"{label}: could not write {part}: {e.strerror or e}; free space or choose --output_dir")
    got = md5sum(part, label)
    if got != md5:
        part.unlink()
        raise UserError(f"{label}: checksum mismatch (md5 {got}, expected {md5}); the file was deleted, "
                        f"run again to re-download (or pass --md5 for a custom --url)")
    os.replace(part, dest)
    log(f"{label}: downloaded {dest.stat().st_size / 2**20:.1f} MiB, md5 ok -> {dest}")
    return "downloaded"


def _download_with_retries(url: str, part: Path, label: str, md5: str, retries: int, retry_wait: float) -> None:
    with requests.Session() as session:
        session.headers["User-Agent"] = "neural-guitar-download_data/1"
        restarted_after_416 = False
        attempt = 0
        while True:
            try:
                status = _http_attempt(session, url, part, label)
                if status == "416":
                    if md5sum(part, label) == md5 or restarted_after_416:
                        return  # the part already holds the whole file (md5 is checked by the caller)
                    log(f"{label}: server says {part.name} is already complete but its md5 differs; restarting")
                    part.unlink()
                    restarted_after_416 = True
                    continue
                return
            except (_Transient, requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                reason = _short_reason(e)
                if attempt >= retries:
                    have = part.stat().st_size if part.exists() else 0
                    if have == 0 and isinstance(e, (requests.ConnectionError, requests.Timeout)):
                        raise UserError(f"could not reach {_host(url)} after {attempt + 1} attempt(s) ({reason}): "
                                        f"check network or use --mirror")
                    raise UserError(f"{label}: download from {_host(url)} failed after {attempt + 1} attempt(s) "
                                    f"({reason}); {have} bytes kept in {part}, run again to resume")
                wait = retry_wait * 2**attempt
                attempt += 1
                log(f"{label}: {reason}; retry {attempt}/{retries} in {wait:g} s")
                time.sleep(wait)
            except requests.RequestException as e:  # invalid URL, too many redirects, ...
                raise UserError(f"{label}: cannot download {url}: {_short_reason(e)}")


# ----------------------------------------------------------------------------------------------------
# extraction

def style_of(filename: str) -> str | None:
    """'solo' / 'comp' from a GuitarSet file name (00_BN1-129-Eb_comp_mic.wav -> 'comp'), else None."""
    parts = PurePosixPath(filename).stem.split("_")
    found = [p for p in parts if p in STYLES]
    return found[0] if found else None


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p == "__MACOSX" for p in parts) or parts[-1] in (".DS_Store", "Thumbs.db")


def validate_members(zf: zipfile.ZipFile, target: Path, archive_name: str) -> list[zipfile.ZipInfo]:
    """All file members of `zf`, after checking that each one lands inside `target`.

    Refuses (UserError) absolute names, drive letters, `..` components, and symlink entries
    (unix mode in external_attr); nothing is written here.
    """
    root = target.resolve()
    files = []
    for info in zf.infolist():
        name = info.filename
        norm = name.replace("\\", "/")
        mode = info.external_attr >> 16
        bad = None
        if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
            bad = "absolute path"
        elif ".." in PurePosixPath(norm).parts:
            bad = "'..' in path"
        elif stat.S_ISLNK(mode):
            bad = "symbolic link"
        elif not (root / norm).resolve().is_relative_to(root):
            bad = "path resolves outside the target folder"
        if bad:
            raise UserError(f"refusing to extract {archive_name}: member {name!r} ({bad}) would escape {target}; "
                            f"nothing was extracted (the archive is not a genuine GuitarSet file)")
        if not info.is_dir():
            files.append(info)
    return files


def rms_db_loudest_window(x: np.ndarray, sample_rate: int, window_s: float = SILENCE_WINDOW_S) -> float:
    """RMS in dBFS (full scale 1.0) of the loudest non-overlapping `window_s` window of mono x [T]."""
    n = max(1, int(round(window_s * sample_rate)))
    pad = (-len(x)) % n
    frames = np.pad(x.astype(np.float64), (0, pad)).reshape(-1, n)
    # a zero-padded tail window is shorter in truth: normalise each window by its real length
    lengths = np.full(frames.shape[0], n, dtype=np.float64)
    lengths[-1] = n - pad
    rms = np.sqrt((frames**2).sum(axis=1) / lengths)
    return float(20 * np.log10(max(rms.max(), 1e-12)))


def split_strings(path: Path, silence_db: float) -> tuple[list[Path], list[int]]:
    """Write `<stem>_string{k}.wav` (k = 1..6, channel k-1, low E first) next to a 6-channel file.

    Keeps the sample rate and sample format (subtype). Returns (written paths, silent string numbers).
    A file that does not have 6 channels is left as it is (returns [path], []).
    """
    import soundfile as sf

    info = sf.info(str(path))
    if info.channels != 6:
        log(f"note: {path.name} has {info.channels} channel(s), not 6; kept as is, not split")
        return [path], []
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, 6]
    written, silent = [], []
    for k in range(1, 7):
        channel = audio[:, k - 1]
        level = rms_db_loudest_window(channel, sr)
        if level < silence_db:
            silent.append(k)
            log(f"note: {path.name}: string {k} ({STRING_NAMES[k - 1]}) is silent "
                f"(loudest 100 ms RMS {level:.1f} dBFS < {silence_db:g}); not written")
            continue
        out = path.with_name(f"{path.stem}_string{k}.wav")
        sf.write(str(out), channel, sr, subtype=info.subtype, format="WAV")
        written.append(out)
    path.unlink()
    return written, silent


def _write_members(zf: zipfile.ZipFile, wanted: list[zipfile.ZipInfo], tmp: Path, label: str,
                   hex_split: bool, silence_db: float) -> tuple[list[Path], int]:
    """Write the `wanted` members under folder `tmp` (hex WAVs split into strings when `hex_split`).
    Returns (paths written, number of silent strings left out)."""
    produced: list[Path] = []
    silent_total = 0
    with tqdm(total=sum(m.file_size for m in wanted), unit="B", unit_scale=True, unit_divisor=1024,
              desc=f"extract {label}", leave=False) as bar:
        for m in wanted:
            out = tmp / m.filename.replace("\\", "/")
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as fin, open(out, "wb") as fout:
                for block in iter(lambda: fin.read(2**20), b""):
                    fout.write(block)
                    bar.update(len(block))
            if hex_split and out.suffix.lower() == ".wav":
                written, silent = split_strings(out, silence_db)
                produced += written
                silent_total += len(silent)
            else:
                produced.append(out)
    return produced, silent_total


def _move_into_place(tmp: Path, produced: list[Path], target: Path) -> list[Path]:
    """Move every path of `produced` (under `tmp`) to the same place under `target`; each move is an atomic
    rename. Returns the paths relative to `target`."""
    rel = [p.relative_to(tmp) for p in produced]
    for r in rel:
        final = target / r
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / r, final)
    return rel


def extract(archive_path: Path, target: Path, styles: str = "all", hex_split: bool = False,
            silence_db: float = -60.0) -> list[str]:
    """Extract the wanted members of a verified archive into `target`, all or nothing.

    Every member is validated before anything is written; the selected ones are written into a
    temporary folder inside `target` (so moves are renames on one filesystem), split into strings
    if asked, and moved into place only when all succeeded. The temporary folder is removed on any
    error or interrupt. Returns the written paths relative to `target` (posix form).
    """
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile:
        raise UserError(f"{archive_path} is not a valid zip archive; delete it and run again")
    with zf:
        members = validate_members(zf, target, archive_path.name)
        wanted = [m for m in members if not _is_junk(m.filename)
                  and (styles == "all" or style_of(m.filename) == styles)]
        if not wanted:
            raise UserError(f"{archive_path.name}: no member matches --styles {styles}; nothing extracted")
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
        try:
            produced, silent_total = _write_members(zf, wanted, tmp, archive_path.name, hex_split, silence_db)
            rel = _move_into_place(tmp, produced, target)  # only once all were written
        except zipfile.BadZipFile as e:
            raise UserError(f"{archive_path.name} is damaged ({e}); delete it and run again")
        except (RuntimeError, NotImplementedError) as e:  # encrypted / unsupported compression
            raise UserError(f"cannot extract {archive_path.name}: {e}")
        except OSError as e:
            raise UserError(f"could not write into {target}: {e.strerror or e}; free space or choose --output_dir")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    skipped = len(members) - len(wanted)
    msg = f"extracted {len(rel)} file(s) to {target}"
    if skipped:
        msg += f" ({skipped} member(s) left out by --styles {styles} or as non-data)"
    if hex_split:
        msg += f"; {silent_total} silent string(s) not written"
    log(msg)
    return [r.as_posix() for r in rel]


def _marker_ok(target: Path, wanted: dict) -> bool:
    """True when a previous run extracted this archive with the same settings and its files are there."""
    try:
        done = json.loads((target / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    entry = done.get(wanted["archive"])
    return (isinstance(entry, dict) and all(entry.get(k) == v for k, v in wanted.items())
            and all((target / f).is_file() for f in entry.get("files", [])))


def _marker_write(target: Path, wanted: dict, files: list[str]) -> None:
    try:
        done = json.loads((target / MARKER_NAME).read_text())
    except (OSError, ValueError):
        done = {}
    done[wanted["archive"]] = {**wanted, "files": files}
    with atomic_path(target / MARKER_NAME) as tmp:
        tmp.write_text(json.dumps(done, indent=1))


# ----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {k:16s} {a.name:32s} {a.about}" for k, a in ARCHIVES.items())
    p = argparse.ArgumentParser(
        prog="download_data.py",
        description=f"Download GuitarSet from Zenodo ({ZENODO_RECORD}), verify MD5s, extract safely.\n\n"
                    f"Subsets:\n{table}",
        formatter_class=HelpFormatter)
    p.add_argument("--subset", nargs="+", choices=list(ARCHIVES), default=["mono-mic"], metavar="SUBSET",
                   help="one or more of: " + ", ".join(ARCHIVES))
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", default="data/raw/guitarset",
                   help="archives go to <output_dir>/archives, files to <output_dir>/<subset>/")
    p.add_argument("--styles", choices=["all", *STYLES], default="all",
                   help="extract only solo (mostly single lines) or comp (chords) excerpts")
    p.add_argument("--split-strings", action="store_true",
                   help="hex subsets: write six mono files <name>_string1..6.wav (1 = low E) instead of the "
                        "6-channel file; silent strings are skipped")
    p.add_argument("--silence-db", type=float, default=-60.0,
                   help="with --split-strings: a string whose loudest 100 ms RMS is below this (dBFS) is silent")
    p.add_argument("--mirror", default=None,
                   help=f"base replacing {ZENODO_FILES}: an http(s) URL, a file:// URL or a local folder "
                        f"holding the archives")
    p.add_argument("--url", default=None, help="full URL (or file:// / path) of the one archive to fetch; "
                                               "overrides --mirror")
    p.add_argument("--md5", default=None, help="expected MD5 of the archive instead of the published one "
                                               "(with --url / --mirror for a single subset)")
    p.add_argument("--retries", type=int, default=5, help="retries on connection errors, exponential backoff")
    p.add_argument("--retry-wait", type=float, default=1.0, help="seconds before the first retry (doubles)")
    p.add_argument("--no-extract", action="store_true", help="only download and verify the archives")
    p.add_argument("--force-extract", action="store_true",
                   help="extract again even when a previous run did it with the same settings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    subsets = list(dict.fromkeys(args.subset))
    if args.url and len(subsets) != 1:
        raise UserError("--url names one archive: give exactly one --subset with it")
    if args.md5 is not None:
        if len(subsets) != 1:
            raise UserError("--md5 is the checksum of one archive: give exactly one --subset with it")
        if not re.fullmatch(r"[0-9a-fA-F]{32}", args.md5):
            raise UserError(f"--md5 {args.md5!r} is not an MD5 (32 hex digits)")
    if args.split_strings and not any(ARCHIVES[s].hex for s in subsets):
        raise UserError("--split-strings applies to hex audio: use it with --subset hex-debleeded or hex-original")
    if args.retries < 0 or args.retry_wait < 0:
        raise UserError("--retries and --retry-wait must be >= 0")

    out = check_output_path(args.output_dir, "--output_dir", is_dir=True)
    for subset in subsets:
        archive = ARCHIVES[subset]
        md5 = (args.md5 or archive.md5).lower()
        dest = out / "archives" / archive.name
        source = source_for(archive, args.url, args.mirror)
        log(f"{subset}: {archive.name} from {source}")
        fetch(source, dest, md5, retries=args.retries, retry_wait=args.retry_wait)
        if args.no_extract:
            continue
        target = out / subset
        split = args.split_strings and archive.hex
        settings = {"archive": archive.name, "md5": md5, "styles": args.styles, "split_strings": split,
                    "silence_db": args.silence_db if split else None}
        if not args.force_extract and _marker_ok(target, settings):
            log(f"{subset}: already extracted in {target} with these settings (--force-extract to redo)")
            continue
        files = extract(dest, target, styles=args.styles, hex_split=split, silence_db=args.silence_db)
        _marker_write(target, settings, files)
    return 0


if __name__ == "__main__":
    run_main(main)
