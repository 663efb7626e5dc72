"""download_data.py against a real HTTP server on 127.0.0.1 (Range support written here, in the test).

The archives are GuitarSet-shaped zips made in the test from tiny WAVs: mono-mic files named like
`00_BN1-129-Eb_comp_mic.wav` and 6-channel hex files with one silent string. Nothing is mocked:
download_data.main() runs in-process against the server; only the expected MD5 is passed by --md5.
"""
from __future__ import annotations

import hashlib
import io
import re
import socket
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import download_data  # noqa: E402
from utils import run_main  # noqa: E402

SR = 44100
MIC_NAMES = ["00_BN1-129-Eb_comp_mic.wav", "00_BN1-129-Eb_solo_mic.wav", "01_Jazz2-187-F#_comp_mic.wav"]
HEX_NAMES = ["00_BN1-129-Eb_solo_hex_cln.wav", "00_BN1-129-Eb_comp_hex_cln.wav"]
SILENT_CHANNEL = 3  # 0-based: string 4 (G) is silent in the solo hex file


def wav_bytes(audio: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def mono_wav(seed: int, seconds: float = 1.0) -> bytes:
    # noise does not compress: the archive stays a few hundred kB, enough to cut a download midway
    rng = np.random.default_rng(seed)
    return wav_bytes((0.3 * rng.standard_normal(int(SR * seconds))).clip(-1, 1).astype(np.float32))


def hex_audio(silent: int | None, seconds: float = 0.5) -> np.ndarray:
    """[T, 6]: channel c is a sine at 100*(c+1) Hz (0.5 amplitude), except `silent` (all zeros)."""
    t = np.arange(int(SR * seconds)) / SR
    x = np.stack([0.5 * np.sin(2 * np.pi * 100 * (c + 1) * t) for c in range(6)], axis=1).astype(np.float32)
    if silent is not None:
        x[:, silent] = 0.0
    return x


def make_zip(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.create_system = 3
                info.external_attr = 0o120777 << 16  # unix symlink entry; data is the link target
            zf.writestr(info, data)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


MIC_ZIP = make_zip({n: mono_wav(i) for i, n in enumerate(MIC_NAMES)})
HEX_ZIP = make_zip({HEX_NAMES[0]: wav_bytes(hex_audio(SILENT_CHANNEL)), HEX_NAMES[1]: wav_bytes(hex_audio(None))})


class Server:
    """ThreadingHTTPServer on 127.0.0.1 serving `files` at /files/<name>, honouring `Range: bytes=N-`.

    hits: list of (name, Range header or None). drop_first: names whose first GET sends the full
    Content-Length but closes the connection after half the body. ignore_range: answer 200 always.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: list[tuple[str, str | None]] = []
        self.drop_first: set[str] = set()
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.hits.append((name, rng))
                data = server.files.get(name)
                if data is None or not self.path.startswith("/files/"):
                    self.send_error(404)
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if name in server.drop_first:
                    server.drop_first.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def names_hit(self, name: str) -> list[str | None]:
        return [r for n, r in self.hits if n == name]


@pytest.fixture
def server():
    s = Server()
    s.files = {"audio_mono-mic.zip": MIC_ZIP, "audio_hex-pickup_debleeded.zip": HEX_ZIP}
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def run_cli(argv: list[str]) -> int:
    """Run main() the way the command line does (utils.run_main): returns the exit code."""
    with pytest.raises(SystemExit) as e:
        run_main(lambda _: download_data.main(argv))
    return e.value.code


def error_lines(err: str) -> list[str]:
    """The lines run_main printed for an error (stderr also carries tqdm bars, drawn with \\r)."""
    assert "Traceback" not in err
    return [l for l in re.split(r"[\r\n]+", err) if l.startswith("error:")]


def base_args(server: Server, out: Path, subset="mono-mic", data=MIC_ZIP) -> list[str]:
    return ["--subset", subset, "--output_dir", str(out), "--mirror", server.base, "--md5", md5(data),
            "--retries", "0"]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_download_extract_and_md5(server, tmp_path, capsys):
    out = tmp_path / "gs"
    assert run_cli(base_args(server, out)) == 0
    archive = out / "archives" / "audio_mono-mic.zip"
    assert md5(archive.read_bytes()) == md5(MIC_ZIP)
    assert not archive.with_name("audio_mono-mic.zip.part").exists()
    extracted = sorted(p.name for p in (out / "mono-mic").glob("*.wav"))
    assert extracted == sorted(MIC_NAMES)
    with zipfile.ZipFile(io.BytesIO(MIC_ZIP)) as zf:
        for n in MIC_NAMES:
            assert (out / "mono-mic" / n).read_bytes() == zf.read(n)
    assert not list((out / "mono-mic").glob(".extract-*")), "temporary extraction folder left behind"
    assert server.names_hit("audio_mono-mic.zip") == [None]
    assert "md5 ok" in capsys.readouterr().out


def test_published_checksum_table_is_used(server, tmp_path, monkeypatch, capsys):
    # without --md5 the table's checksum applies: patch the table only, not the download code
    out = tmp_path / "gs"
    entry = download_data.ARCHIVES["mono-mic"]
    monkeypatch.setitem(download_data.ARCHIVES, "mono-mic",
                        download_data.Archive(entry.name, md5(MIC_ZIP), entry.about))
    assert run_cli(["--output_dir", str(out), "--mirror", server.base, "--retries", "0"]) == 0
    assert len(list((out / "mono-mic").glob("*.wav"))) == len(MIC_NAMES)


def test_interrupted_download_resumes_with_range(server, tmp_path, capsys):
    out = tmp_path / "gs"
    server.drop_first.add("audio_mono-mic.zip")
    assert run_cli(base_args(server, out)) == 1  # --retries 0: the dropped connection ends this run
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "run again to resume" in err[0]
    part = out / "archives" / "audio_mono-mic.zip.part"
    have = part.stat().st_size
    assert 0 < have < len(MIC_ZIP)
    assert not (out / "mono-mic").exists() or not list((out / "mono-mic").iterdir())

    assert run_cli(base_args(server, out)) == 0
    assert server.names_hit("audio_mono-mic.zip") == [None, f"bytes={have}-"]
    assert md5((out / "archives" / "audio_mono-mic.zip").read_bytes()) == md5(MIC_ZIP)
    assert not part.exists()
    assert "resuming at" in capsys.readouterr().out


def test_dropped_connection_retried_within_one_run(server, tmp_path):
    out = tmp_path / "gs"
    server.drop_first.add("audio_mono-mic.zip")
    args = base_args(server, out)[:-1] + ["2", "--retry-wait", "0.01"]
    assert run_cli(args) == 0
    hits = server.names_hit("audio_mono-mic.zip")
    assert hits[0] is None and re.fullmatch(r"bytes=\d+-", hits[1])
    assert md5((out / "archives" / "audio_mono-mic.zip").read_bytes()) == md5(MIC_ZIP)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, capsys):
    out = tmp_path / "gs"
    server.drop_first.add("audio_mono-mic.zip")
    assert run_cli(base_args(server, out)) == 1
    server.ignore_range = True
    assert run_cli(base_args(server, out)) == 0
    assert server.names_hit("audio_mono-mic.zip")[1].startswith("bytes=")  # asked, got 200
    assert md5((out / "archives" / "audio_mono-mic.zip").read_bytes()) == md5(MIC_ZIP)
    assert "restarting from zero" in capsys.readouterr().out


def test_complete_file_not_fetched_again(server, tmp_path, capsys):
    out = tmp_path / "gs"
    assert run_cli(base_args(server, out)) == 0
    assert run_cli(base_args(server, out)) == 0
    assert len(server.names_hit("audio_mono-mic.zip")) == 1
    text = capsys.readouterr().out
    assert "already downloaded, md5 ok" in text and "already extracted" in text


def test_wrong_checksum_deletes_file(server, tmp_path, capsys):
    out = tmp_path / "gs"
    args = base_args(server, out)
    args[args.index("--md5") + 1] = "0" * 32
    assert run_cli(args) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "checksum mismatch" in err[0] and "deleted" in err[0]
    assert files_under(out) == [], "nothing may stay behind: no archive, no .part, no extracted files"


@pytest.mark.parametrize("evil", ["../evil.wav", "ABS", "link_comp_mic.wav"], ids=["dotdot", "absolute", "symlink"])
def test_malicious_member_refused_and_nothing_extracted(server, tmp_path, capsys, evil):
    out = tmp_path / "gs"
    outside = tmp_path / "outside_evil.wav"
    if evil == "ABS":
        evil = str(outside)
    members = {MIC_NAMES[0]: mono_wav(0, 0.1), evil: b"x" if evil != "link_comp_mic.wav" else str(outside).encode(),
               MIC_NAMES[1]: mono_wav(1, 0.1)}
    data = make_zip(members, symlinks=("link_comp_mic.wav",))
    server.files["audio_mono-mic.zip"] = data
    assert run_cli(base_args(server, out, data=data)) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "refusing to extract" in err[0] and "nothing was extracted" in err[0]
    assert files_under(out / "mono-mic") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs"]  # nothing written beside output_dir
    assert not outside.exists()


def test_404_is_one_line(server, tmp_path, capsys):
    out = tmp_path / "gs"
    args = ["--subset", "annotations", "--output_dir", str(out), "--mirror", server.base, "--retries", "0"]
    assert run_cli(args) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "404" in err[0] and "annotation.zip" in err[0]
    assert files_under(out) == []


def test_offline_message(tmp_path, capsys):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--output_dir", str(tmp_path / "gs"), "--mirror", f"http://127.0.0.1:{port}/files",
            "--retries", "1", "--retry-wait", "0.01"]
    assert run_cli(args) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1
    assert f"could not reach 127.0.0.1:{port} after 2 attempt(s)" in err[0] and "use --mirror" in err[0]


def test_split_strings_skips_silent_string(server, tmp_path, capsys):
    out = tmp_path / "gs"
    assert run_cli(base_args(server, out, "hex-debleeded", HEX_ZIP) + ["--split-strings"]) == 0
    hexdir = out / "hex-debleeded"
    solo, comp = (n[:-4] for n in HEX_NAMES)
    expected = [f"{comp}_string{k}.wav" for k in range(1, 7)]
    expected += [f"{solo}_string{k}.wav" for k in range(1, 7) if k != SILENT_CHANNEL + 1]
    assert sorted(p.name for p in hexdir.glob("*.wav")) == sorted(expected)
    truth = hex_audio(None)
    for k in range(1, 7):  # string k is channel k-1 (string1 = low E = channel 0), bit-exact in PCM_16
        x, sr = sf.read(hexdir / f"{comp}_string{k}.wav", dtype="float32")
        info = sf.info(hexdir / f"{comp}_string{k}.wav")
        assert sr == SR and x.ndim == 1 and info.subtype == "PCM_16"
        assert np.max(np.abs(x - truth[:, k - 1])) < 1.0 / 2**15 + 1e-6
    text = capsys.readouterr().out
    assert f"string {SILENT_CHANNEL + 1} (G) is silent" in text


def test_styles_solo_filters(server, tmp_path):
    out = tmp_path / "gs"
    assert run_cli(base_args(server, out) + ["--styles", "solo"]) == 0
    assert sorted(p.name for p in (out / "mono-mic").glob("*.wav")) == ["00_BN1-129-Eb_solo_mic.wav"]
    # same archive, other style: no second download, the comp files are added
    assert run_cli(base_args(server, out) + ["--styles", "comp"]) == 0
    assert len(server.names_hit("audio_mono-mic.zip")) == 1
    assert len(list((out / "mono-mic").glob("*.wav"))) == 3


def test_local_directory_mirror(tmp_path):
    src = tmp_path / "copy"
    src.mkdir()
    (src / "audio_mono-mic.zip").write_bytes(MIC_ZIP)
    out = tmp_path / "gs"
    for mirror in (str(src), src.as_uri()):
        assert run_cli(["--output_dir", str(out), "--mirror", mirror, "--md5", md5(MIC_ZIP), "--force-extract"]) == 0
    assert len(list((out / "mono-mic").glob("*.wav"))) == 3


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        download_data.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "default: data/raw/guitarset" in text and "default: 5" in text and "audio_hex-pickup_debleeded.zip" in text


def test_unwritable_output_dir_is_one_line_before_any_download(server, tmp_path, monkeypatch, capsys):
    import os

    (tmp_path / "file.txt").write_text("x")
    assert run_cli(base_args(server, tmp_path / "file.txt" / "gs")) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "--output_dir" in err[0] and "is a file, not a folder" in err[0]
    assert run_cli(base_args(server, tmp_path / "file.txt")) == 1  # a file where the folder should go
    assert "is a file; give a folder" in error_lines(capsys.readouterr().err)[0]
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # read-only (root ignores chmod)
    assert run_cli(base_args(server, tmp_path / "ro")) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "cannot write in" in err[0]
    assert server.hits == [], "nothing may be downloaded before the output location is checked"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
