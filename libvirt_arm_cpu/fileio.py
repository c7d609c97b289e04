"""Reading inputs, and writing files so that a reader never sees half of one.

Every file the project writes (knowledge base, host profiles, CPU models)
goes through :func:`atomic_write`: the data lands in a temporary file in the
same directory, is flushed to disk, and replaces the target with one
``rename``; a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import os
import stat
import sys

from libvirt_arm_cpu.errors import DataError, ParseError

__all__ = ["atomic_write", "read_input", "MAX_INPUT_BYTES", "read_own", "read_cache", "write_cache",
           "file_stamp", "code_stamp"]

# One limit for every input (profiles, models, domains, dumps): the largest
# real one is a few tens of kB; reading stops past this, before any parsing,
# so a huge or endless input costs neither memory nor time.
MAX_INPUT_BYTES = 8 * 1024 * 1024


def read_input(path: str) -> bytes:
    """The bytes of a file, or of stdin for ``-``.

    :raise ParseError: naming *path* when it cannot be read or is larger
        than :data:`MAX_INPUT_BYTES`.
    """
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as err:
        raise ParseError(path, None, f"cannot read: {err.strerror}") from err
    if len(data) > MAX_INPUT_BYTES:
        raise ParseError(path, None, f"larger than the {MAX_INPUT_BYTES} bytes an input may "
                         f"have (a host profile or domain is a few tens of kB)")
    return data


def _write_through(target: str, data: bytes, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{target}: cannot write: it is a directory")
    try:
        with open(target, "wb") as f:
            f.write(data)
    except OSError as err:
        raise DataError(f"{target}: cannot write: {err.strerror}") from err


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int | None = None,
                 durable: bool = True) -> None:
    """Replace *path* with *data* atomically; ``-`` writes to stdout.

    *durable*: flushed to the disk (file and directory) before it counts as
    written.  A cache that its reader checks (the hook's verdicts and
    compact copy, the profile cache) skips that: after a crash it may be
    stale or unreadable, and is then rebuilt, which costs less than two
    fsyncs on every write.

    A symbolic link is followed (its target is replaced, the link stays);
    a device or FIFO (``/dev/null``, ``/dev/stdout``) is written to, not
    replaced;
    the file gets *mode* if given, else an existing file keeps its
    permission bits (a new one gets 0644); temporary files a killed writer left in the directory
    are removed first (their names carry the writer's pid).

    :raise DataError: when the directory cannot be written.
    """
    target = os.fspath(path)
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if os.path.islink(target):
        target = os.path.realpath(target)
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device, FIFO or socket (``-o /dev/null``): written to, never
        # replaced -- a rename would put a plain file where /dev/null was
        _write_through(target, data, st)
        return
    directory = os.path.dirname(target) or "."
    base = os.path.basename(target)
    if mode is not None:
        keep = mode
    else:
        try:
            keep = os.stat(target).st_mode & 0o7777
        except OSError:
            keep = 0o644
    _remove_stale(directory, base)
    # tempfile.mkstemp's way (O_EXCL, 0600, a random name), without importing
    # tempfile (3 ms, and the hook writes its verdicts with this)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except OSError as err:
        raise DataError(f"{target}: cannot write: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, keep)
        os.replace(tmp, target)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DataError(f"{target}: cannot write: {err.strerror}") from err
    if not durable:
        return
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


def _remove_stale(directory: str, base: str) -> None:
    """Remove ``.<base>.<pid>.*.tmp`` files whose writer is gone (killed
    between creating and renaming them)."""
    prefix = f".{base}."
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid_text = name[len(prefix):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue                    # its writer still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue                    # another user's live process
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


Stamp = tuple[str, int, int]       # a file's absolute path, size, modification time (ns)
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def file_stamp(path: str) -> Stamp | None:
    """What a cache records of a file it was made from (None: there is
    none): a different stamp, and the cache is made again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def code_stamp(modules: tuple[str, ...]) -> tuple[Stamp | None, ...]:
    """:func:`file_stamp` of the package's *modules* (paths within the
    package): a cache stamped with it is not read by edited code."""
    return tuple(file_stamp(os.path.join(_PACKAGE, name)) for name in modules)


def write_cache(path: str, magic: bytes, body: bytes) -> None:
    """A cache file: *magic*, a CRC-32 of *body*, *body*; atomic, this
    user's alone (0600), not synced (a torn cache after a crash is only
    rebuilt).

    :raise DataError: it cannot be written (:func:`atomic_write`).
    """
    import zlib
    atomic_write(path, magic + zlib.crc32(body).to_bytes(4, "big") + body, mode=0o600,
                 durable=False)


def read_own(path: str) -> bytes | None:
    """The bytes of *path* (a cache, a copy) when this user alone can have
    written it: owned by this user, writable by nobody else; None when it
    cannot be read or another could have written it."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            return f.read()
    except OSError:
        return None


def read_cache(path: str, magic: bytes) -> memoryview | None:
    """The body of a cache file :func:`write_cache` wrote; None when there is
    none, it is of another kind or damaged (its CRC), or another user could
    have written it (:func:`read_own`)."""
    import zlib
    data = read_own(path)
    if data is None or not data.startswith(magic) or len(data) < len(magic) + 4:
        return None
    body = memoryview(data)[len(magic) + 4:]
    if zlib.crc32(body) != int.from_bytes(data[len(magic):len(magic) + 4], "big"):
        return None
    return body


def read_text(path: str) -> str:
    """A small system file's text (/proc, /sys), stripped; "" when it cannot
    be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def which(name: str) -> str | None:
    """shutil.which for a plain name (shutil's import pulls in the
    compression modules: milliseconds on the hook's path)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None
