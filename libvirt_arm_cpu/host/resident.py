"""The resident checker: the hook's check of a CPU it has not allowed
before, made by a process that has the engine loaded already.

The hook (:mod:`libvirt_arm_cpu.hook`) answers a start like one it allowed
before from its memory (:mod:`.verdicts`) in about 1.3 times an
interpreter's start.  Any other start it must check, and most of that check
is Python importing the engine, its value types and ``dataclasses``: 2.7
times an interpreter's start (bench/README.md), once for each CPU on each
host and boot.  ``libvirt-arm-cpu hook serve`` (:func:`serve`) keeps a
process with all that loaded, on a Unix socket (the settings' ``[hook]
checker``); the hook (:func:`ask`) sends it the domain's XML and its own
settings, and gets back what :func:`libvirt_arm_cpu.host.startcheck.check`
returns, and the lines the check logged, which the hook logs itself.  The
hook still remembers an allowance, so the checker sees each CPU once.

Nothing depends on it.  The hook checks by itself when no checker runs,
when it does not answer within :data:`ANSWER_SECONDS`, when it runs other
code than the hook's (an upgrade: it then exits, for its supervisor to
start the new code), when its check fails unexpectedly, or when another
user runs it.  Each end believes only a peer of its own user (the kernel's
``SO_PEERCRED``), which is what makes ``marshal`` safe between them, as
it is for the hook's memory file.
"""

from __future__ import annotations

import marshal
import os
import stat             # loaded with os already
import sys

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.errors import DataError, Error
from libvirt_arm_cpu.settings import Settings

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (the hook's path)
if TYPE_CHECKING:
    from collections.abc import Callable

    from libvirt_arm_cpu.formats.compact import Stamp

    Log = Callable[[str, str], None]

__all__ = ["ask", "serve", "ANSWER_SECONDS", "EXIT_RESTART"]

PROTOCOL = 1
# a check with try-apply creates a scratch VM: seconds under nested emulation
ANSWER_SECONDS = 20.0
REQUEST_SECONDS = 5.0           # for a hook to send its request
MAX_MESSAGE = 64 << 20          # bytes; a domain's XML is far below
EXIT_RESTART = 75               # EX_TEMPFAIL: the code changed under the checker
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__.rpartition(os.sep)[0]))


# -- the hook's side: light (no socket.py, whose enums cost a millisecond) ---

def ask(conf: Settings, name: str, op: str, data: bytes, log: Log
        ) -> tuple[str | None, bytes | None, tuple[str, str] | None] | None:
    """:func:`libvirt_arm_cpu.host.startcheck.check` of the domain *name*
    (XML *data*) for *op* with *conf*, made by the checker at ``conf.checker``;
    the lines it logged go to *log*.  None when it cannot answer (the
    caller checks by itself).

    :raise Error: what the check could not read, as the check raises it.
    """
    if not conf.checker:
        return None
    try:
        if not stat.S_ISSOCK(os.stat(conf.checker).st_mode):
            return None
    except OSError:
        return None         # none runs: the common case, a stat
    import _socket
    request = (PROTOCOL, __version__, _PACKAGE_DIR, name, op, data,
               tuple(conf.as_dict().items()))
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(ANSWER_SECONDS)
        sock.connect(conf.checker)
        if _peer_uid(sock) != os.geteuid():
            return None
        sock.sendall(marshal.dumps(request))
        sock.shutdown(_socket.SHUT_WR)
        reply = _receive(sock)
    except OSError:         # refused, timed out, reset: check here
        return None
    finally:
        sock.close()
    try:
        answer = marshal.loads(reply) if reply is not None else None
    except (ValueError, EOFError, TypeError):
        return None
    if not (isinstance(answer, tuple) and len(answer) == 3 and answer[0] in ("ok", "error")
            and isinstance(answer[1], list)
            and all(isinstance(x, tuple) and len(x) == 2 for x in answer[1])
            and (isinstance(answer[2], str) if answer[0] == "error" else
                 isinstance(answer[2], tuple) and len(answer[2]) == 3)):
        return None         # "other", "stale", "failed" (or not a checker's): check here
    kind, lines, result = answer
    for level, line in lines:
        log(level, line)
    if kind == "error":
        raise Error(result)
    return result


def _peer_uid(sock) -> int:
    """The user of the process at the other end (struct ucred: pid, uid, gid)."""
    import _socket
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[4:8], sys.byteorder)


def _receive(sock) -> bytes | None:
    """Everything the peer sends until it closes; None past MAX_MESSAGE."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > MAX_MESSAGE:
            return None
        parts.append(chunk)


# -- the checker's side ------------------------------------------------------

def serve(path: str, log: Log, conf: Settings | None = None) -> int:
    """Answer the hooks' checks on the Unix socket *path* until SIGTERM or
    SIGINT (exit status 0), or until this package's code changes on disk
    (:data:`EXIT_RESTART`, after telling the hook that asked to check by
    itself).  *log* (level, message) gets what the checker does, "checker
    ready on PATH" first.  With *conf* (the hook's settings), this host's
    profile and the knowledge base are read before it listens, their
    compact copy made again where an upgrade made it stale.

    :raise DataError: *path* is not a socket, or a checker already answers there.
    """
    import gc
    import signal
    import socket

    from libvirt_arm_cpu import methodcache
    methodcache.install()
    from libvirt_arm_cpu.host import startcheck
    startcheck.load_engine()
    if conf is not None:
        from libvirt_arm_cpu.host.hostcache import hook_inputs
        try:
            hook_inputs(conf)
        except (Error, OSError) as e:       # the hook's own check will say it again
            log("warning", f"checker: this host's profile: {e}")
    methodcache.save()
    code = _code_stamps()
    gc.freeze()         # what is loaded now stays: collections pass over requests' objects only

    listener = _listen(path, socket)
    ident = os.stat(path)

    def stop(signum, _frame):
        raise SystemExit(0)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    log("info", f"checker ready on {path} (pid {os.getpid()})")
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                if not _answer_one(conn, code, log):
                    log("info", f"checker on {path}: this package's code changed; exiting "
                                f"for the new code to be started")
                    return EXIT_RESTART
    except SystemExit:
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        listener.close()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == (ident.st_dev, ident.st_ino):
                os.unlink(path)
        except OSError:
            pass


def _listen(path: str, socket):
    """A listening socket at *path*, readable by this user alone; a socket
    left there by a checker that died is replaced."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise DataError(f"{path}: cannot use it for the checker's socket: {e.strerror}") from None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise DataError(f"{path}: exists and is not a socket; remove it or name another "
                            f"path ([hook] checker)")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)         # nobody answers: a checker that died left it
        else:
            raise DataError(f"{path}: a checker already answers there")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(path)
    except OSError as e:
        listener.close()
        raise DataError(f"{path}: cannot listen there: {e.strerror}") from None
    finally:
        os.umask(umask)
    listener.listen(32)
    return listener


def _code_stamps() -> list[Stamp]:
    """The identity (formats.compact.stamp: path, size, modification time)
    of every module of this package loaded now: what an upgrade changes."""
    from libvirt_arm_cpu.formats.compact import stamp
    out = []
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.startswith(_PACKAGE_DIR + os.sep):
            try:
                out.append(stamp(file))
            except OSError:
                continue
    return out


def _unchanged(code: list[Stamp]) -> bool:
    from libvirt_arm_cpu.formats.compact import stamp
    try:
        return all(stamp(was[0]) == was for was in code)
    except OSError:         # removed: changed too
        return False


def _answer_one(conn, code: list[Stamp], log: Log) -> bool:
    """Read one hook's request on *conn* and answer it; False when this
    package's code changed (the hook was told to check by itself)."""
    conn.settimeout(REQUEST_SECONDS)
    try:
        if _peer_uid(conn) != os.geteuid():
            log("warning", "checker: a request from another user, not answered")
            return True
        raw = _receive(conn)
        request = marshal.loads(raw) if raw is not None else None
    except (OSError, ValueError, EOFError, TypeError):
        return True
    if not (isinstance(request, tuple) and len(request) == 7 and request[0] == PROTOCOL
            and isinstance(request[3], str) and isinstance(request[4], str)):
        log("warning", "checker: a request it does not understand (another version's "
                       "hook?), left to the hook")
        reply, fresh = ("other", None, None), True
    else:
        # its own code first: an upgrade that changed the version too must
        # not leave it answering "other" for ever
        if not _unchanged(code):
            reply, fresh = ("stale", None, None), False
        elif request[1:3] != (__version__, _PACKAGE_DIR):
            reply, fresh = ("other", None, None), True       # another install's hook
        else:
            reply, fresh = _check(request, log), True
        # "ok" and "error" are the hook's answer; the rest it checks by itself
        log("info", f"checker: domain '{request[3]}' ({request[4]}): {reply[0]}")
    try:
        conn.settimeout(REQUEST_SECONDS)
        conn.sendall(marshal.dumps(reply))
    except OSError:
        pass                # the hook gave up: it checks by itself
    return fresh


def _check(request: tuple, log: Log) -> tuple:
    """The reply to a well-formed request: ("ok", lines, check's result),
    ("error", lines, message) or ("failed", None, None)."""
    from libvirt_arm_cpu.host.startcheck import check
    _, _, _, name, op, data, settings = request
    try:
        conf = Settings(**dict(settings))
    except (TypeError, ValueError):
        return ("other", None, None)
    lines: list[tuple[str, str]] = []
    try:
        result = check(name, op, data, None, conf, lambda level, line: lines.append((level, line)))
    except Error as e:
        return ("error", lines, str(e))
    except Exception as e:      # noqa: BLE001 - the hook checks by itself, and says it
        log("error", f"checker: domain '{name}': {type(e).__name__}: {e} (left to the hook)")
        return ("failed", None, None)
    return ("ok", lines, result)
