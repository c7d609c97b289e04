"""The errors libvirt-arm-cpu raises, and the exit code each maps to.

Every error carries the facts a user needs to act (file and line, register,
field, the value seen) and renders as one line.  The command-line front ends
(CLI, helper, hook) turn them into a message and an exit code in one place
each; nothing else prints tracebacks.

    Error                     root; exit code 1 (the data is wrong)
     +-- UsageError           exit code 2 (the command line is wrong)
     |    +-- UnknownName     a register, field or feature name we do not know
     +-- DataError            exit code 1
     |    +-- ParseError      a file that does not parse (names file and line)
     |         +-- WrongKind  exit code 2: a file of another kind than expected (a host
     |                        profile where a CPU model goes...), saying what to run
     +-- HostError            this machine cannot answer (helper), exit codes 3-8:
          +-- NotArm64        3  not an aarch64 machine
          +-- NoKvm           4  no /dev/kvm (KVM off, or no EL2)
          +-- KvmPermission   5  /dev/kvm not accessible to this user
          |                   6  (not an error: profile written, masks unknown)
          +-- kvm.KvmError    7  an ioctl failed with an unexpected errno
          +-- TimedOut        8  a step did not finish in time
"""

from __future__ import annotations

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:       # collections.abc costs the hook 1 ms a start
    from collections.abc import Iterable

__all__ = ["Error", "UsageError", "UnknownName", "DataError", "ParseError", "WrongKind",
           "HostError", "NotArm64", "NoKvm", "KvmPermission", "TimedOut",
           "EXIT_OK", "EXIT_DATA", "EXIT_USAGE", "EXIT_MASKS_UNKNOWN", "STDIN", "path_label",
           "closest"]

EXIT_OK = 0
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_MASKS_UNKNOWN = 6     # the helper wrote a profile, but the kernel cannot tell writable masks

STDIN = "<stdin>"          # how every message names standard input ('-' on the command line)


def path_label(path: str) -> str:
    """*path* as a message names it: ``-`` (standard input) is ``<stdin>``."""
    return STDIN if path == "-" else path


class Error(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = EXIT_DATA

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(Error):
    """The user asked for something that cannot be: bad option, bad number."""

    exit_code = EXIT_USAGE


class UnknownName(UsageError):
    """A register, field or feature name that the knowledge base lacks.

    :param what: "register", "field of ID_AA64ISAR0_EL1", "feature", ...
    :param name: the name as the user typed it
    :param known: candidates, used to suggest the closest
    """

    def __init__(self, what: str, name: str, known: Iterable[str]) -> None:
        self.what = what
        self.name = name
        self.suggestion = closest(name, known)
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        super().__init__(f"unknown {what} '{name}'{hint}")


class DataError(Error):
    """Input data that is well-formed but wrong (a value that does not fit)."""


class ParseError(DataError):
    """A file that does not parse; names the file and line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.detail = message
        label = path_label(path)
        where = f"{label}:{line}" if line is not None else label
        super().__init__(f"{where}: {message}")


class WrongKind(ParseError):
    """A file of another kind than the one expected: a host profile or a
    register dump where a CPU model goes, a dump or a model where a host
    profile goes.  The command line names the wrong file, so it exits as a
    usage error; it stays a :class:`ParseError` for callers that fall back
    on a file they cannot use (the host cache is probed again).

    :param found: what the file is ("a host profile")
    :param expected: what was expected ("a CPU model")
    :param hint: what to run instead
    """

    exit_code = EXIT_USAGE

    def __init__(self, path: str, found: str, expected: str, hint: str) -> None:
        super().__init__(path, None, f"{found}, not {expected}")
        self.found = found
        self.expected = expected
        self.message = f"{path_label(path)} is {found}, not {expected}: {hint}"
        self.args = (self.message,)


class HostError(Error):
    """This machine cannot answer the question (the helper's failure modes)."""


class NotArm64(HostError):
    exit_code = 3


class NoKvm(HostError):
    exit_code = 4


class KvmPermission(HostError):
    exit_code = 5


class TimedOut(HostError):
    exit_code = 8


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like *name*, compared case-insensitively."""
    by_upper = {k.upper(): k for k in known}
    import difflib      # only when a name is wrong: not on the hook's path
    hits = difflib.get_close_matches(name.upper(), list(by_upper), n=1, cutoff=0.6)
    return by_upper[hits[0]] if hits else None
