"""Reading inputs, and writing files so that a reader never sees half of one.

Every file the project writes (knowledge base, host profiles, CPU models)
goes through :func:`atomic_write`: the data lands in a temporary file in the
same directory, is flushed to disk, and replaces the target with one
``rename``; a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import os
import sys
import tempfile

from .errors import DataError, ParseError

__all__ = ["atomic_write", "read_input"]


def read_input(path: str) -> bytes:
    """The bytes of a file, or of stdin for ``-``.

    :raise ParseError: naming *path* when it cannot be read.
    """
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ParseError(path, None, f"cannot read: {err.strerror}") from err


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace *path* with *data* atomically.

    :raise DataError: when the directory cannot be written.
    """
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                   dir=directory)
    except OSError as err:
        raise DataError(f"{target}: cannot write: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DataError(f"{target}: cannot write: {err.strerror}") from err
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename stands
    finally:
        os.close(dir_fd)
