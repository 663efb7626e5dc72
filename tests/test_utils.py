"""utils.check_output_path: unwritable output locations are refused up front with one line."""
from __future__ import annotations

import os

import pytest

from utils import UserError, check_output_path


def test_writable_locations_pass_and_leave_nothing(tmp_path):
    assert check_output_path(tmp_path / "new" / "deeper" / "x.wav", "-o") == tmp_path / "new" / "deeper" / "x.wav"
    assert check_output_path(tmp_path / "out", "--output_dir", is_dir=True) == tmp_path / "out"
    assert list(tmp_path.iterdir()) == []  # no probe file left, no folder created


def test_path_under_an_existing_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file.txt" / "sub" / "x.wav", "-o")


def test_folder_where_a_file_should_go_and_the_reverse(tmp_path):
    (tmp_path / "dir.wav").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a folder"):
        check_output_path(tmp_path / "dir.wav", "-o")
    with pytest.raises(UserError, match="is a file"):
        check_output_path(tmp_path / "file", "--output_dir", is_dir=True)


def test_read_only_location(tmp_path, monkeypatch):
    # CI runs as root, where chmod does not deny: deny through os.access, then through the probe file
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(UserError, match="cannot write in"):
        check_output_path(tmp_path / "x.wav", "-o")
    monkeypatch.undo()

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(UserError, match="Read-only file system"):
        check_output_path(tmp_path / "x.wav", "-o")
