"""Atomic writes: all or nothing."""

from __future__ import annotations

import os

import pytest

from libvirt_arm_cpu.errors import DataError
from libvirt_arm_cpu.fileio import atomic_write


def test_replaces_whole_file(tmp_path):
    target = tmp_path / "f.xml"
    target.write_bytes(b"old")
    atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(os.listdir(tmp_path)) == ["f.xml"]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="cannot write"):
        atomic_write(tmp_path / "nope" / "f.xml", b"x")


def test_rename_failure_leaves_no_temp_file(tmp_path):
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    (target / "child").write_text("keep")
    with pytest.raises(DataError):
        atomic_write(target, b"x")       # cannot replace a non-empty directory
    assert sorted(os.listdir(tmp_path)) == ["dir-in-the-way"]
    assert (target / "child").read_text() == "keep"
