"""Atomic writes: all or nothing."""

from __future__ import annotations

import os
import stat
import threading

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


def test_a_symlink_is_followed_not_replaced(tmp_path):
    real = tmp_path / "real.xml"
    real.write_bytes(b"old")
    link = tmp_path / "link.xml"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.xml", "real.xml"]


def test_an_existing_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "secret.xml"
    target.write_bytes(b"old")
    target.chmod(0o600)
    atomic_write(target, b"new")
    assert (target.stat().st_mode & 0o777) == 0o600
    atomic_write(target, b"newer", mode=0o640)           # an explicit mode wins
    assert (target.stat().st_mode & 0o777) == 0o640


def test_dash_is_standard_output(tmp_path, monkeypatch, capfdbinary):
    monkeypatch.chdir(tmp_path)
    atomic_write("-", b"to stdout\n")
    assert capfdbinary.readouterr().out == b"to stdout\n"
    assert os.listdir(tmp_path) == []


def test_temp_files_of_a_killed_writer_are_cleaned_up(tmp_path):
    import subprocess
    import sys
    target = tmp_path / "f.xml"
    # a writer killed between creating its temporary file and the rename
    code = ("import os, signal, tempfile\n"
            f"fd, _ = tempfile.mkstemp(prefix='.f.xml.' + str(os.getpid()) + '.', suffix='.tmp',"
            f" dir={str(tmp_path)!r})\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    for _ in range(3):
        subprocess.run([sys.executable, "-c", code], timeout=30)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".tmp")]) == 3
    # one of a live process is left alone
    live = tmp_path / f".f.xml.{os.getppid()}.x.tmp"
    live.write_bytes(b"")
    atomic_write(target, b"x")
    assert sorted(os.listdir(tmp_path)) == sorted(["f.xml", live.name])


def test_a_device_is_written_to_never_replaced(tmp_path):
    """``-o /dev/null`` must leave /dev/null a device: a null device node
    made here (the suite runs as root) stands for it."""
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    atomic_write(node, b"anything")
    st = os.stat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["null"]       # no temporary left


def test_a_fifo_is_written_to_never_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic_write(fifo, b"through the pipe\n")
    reader.join(timeout=10)
    assert got == [b"through the pipe\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        atomic_write(tmp_path, b"x")


def test_cache_files_read_back_only_as_written(tmp_path):
    """write_cache/read_cache: the body back; nothing for another kind, a
    damaged file, or one another user could have written."""
    from libvirt_arm_cpu.fileio import read_cache, read_own, write_cache
    f = tmp_path / "c.cache"
    write_cache(str(f), b"MAGIC\n", b"body" * 100)
    assert f.stat().st_mode & 0o777 == 0o600
    assert bytes(read_cache(str(f), b"MAGIC\n")) == b"body" * 100
    assert read_cache(str(f), b"OTHER\n") is None
    data = f.read_bytes()
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert read_cache(str(f), b"MAGIC\n") is None                   # CRC
    f.write_bytes(data[:7])
    assert read_cache(str(f), b"MAGIC\n") is None                   # truncated
    f.write_bytes(data)
    f.chmod(0o620)
    assert read_own(str(f)) is None and read_cache(str(f), b"MAGIC\n") is None
    f.chmod(0o600)
    assert read_own(str(f)) == data
    assert read_own(str(tmp_path / "missing")) is None
