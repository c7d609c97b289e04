"""The fleet's inventory: host profiles collected from many hosts, and the
saved CPU models, each with its history.

A fleet's model is the baseline of its hosts' profiles; this module keeps
those profiles in one place, collected over SSH (each host prints its own
profile: ``libvirt-arm-cpu collect --local``) or, for a host without this
project, its host CPU as a remote libvirt connection reports it (hwcap
names only: less precise, and marked so).  Every distinct profile a host
gave is kept, so "what changed on this host, and can the guests started
before still come back" has an answer.  One folder (``--inventory DIR``,
``LIBVIRT_ARM_CPU_INVENTORY``, default :data:`DEFAULT_DIR`)::

    hosts.txt                       hosts 'collect' takes when none are named: one a
                                    line, '#' comments, a libvirt URI ('qemu+ssh://...')
    profiles/HOST.xml               each host's current profile, so that
                                    'cpu-baseline DIR/profiles/' is the fleet's model
    hosts/HOST/capabilities.xml     the host's 'virsh capabilities' (hosts collected
                                    through libvirt; 'cpu-compare MODEL' takes it)
    hosts/HOST/history/N-STAMP-ID.xml  every distinct profile or host CPU it gave, N
                                    counting up in the order recorded
    hosts/HOST/status.json          the last collection of each method, failed or not
    models/NAME/N-STAMP-ID.xml      every distinct version of a saved CPU model

A collection whose content equals the current one (everything but the probe
time) adds no history.  Every file is written atomically; one collection
at a time writes (a lock file).  The comparisons (:func:`profile_changes`,
:func:`host_cpu_changes`, :func:`model_changes`) are pure functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from dataclasses import dataclass, field

from libvirt_arm_cpu import drift, modelstore
from libvirt_arm_cpu.engine.compare import compare_passthrough
from libvirt_arm_cpu.errors import DataError, Error, ParseError, UsageError
from libvirt_arm_cpu.fileio import MAX_INPUT_BYTES, atomic_write, read_input
from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml
from libvirt_arm_cpu.formats.hostcpu import from_xml as host_cpu_from_xml
from libvirt_arm_cpu.formats.kinds import HOST_PROFILE, kind_of
from libvirt_arm_cpu.formats.profile import from_xml as profile_from_xml
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb.registers import Field, KnowledgeBase
from libvirt_arm_cpu.model import CpuModel, HostCpu, HostProfile
from libvirt_arm_cpu.service import load_input
from libvirt_arm_cpu.xmlsafe import parse_untrusted, shown

__all__ = ["Inventory", "Entry", "Outcome", "CollectFailed", "DEFAULT_DIR",
           "REMOTE_COMMAND", "default_directory", "describe_qemu", "host_name", "read_hosts_file",
           "profile_changes", "host_cpu_changes", "model_changes", "same_profile",
           "passthrough_after", "ssh_argv", "fetch_ssh", "parse_collected",
           "fetch_libvirt", "libvirt_name"]

DEFAULT_DIR = "/var/lib/libvirt-arm-cpu/inventory"
ENV_DIR = "LIBVIRT_ARM_CPU_INVENTORY"
# what 'collect' runs on each host: print its profile (settings' profile,
# probed again when stale, as the hook reads it)
REMOTE_COMMAND = "libvirt-arm-cpu collect --local"

PROFILE, LIBVIRT_CPU, MODEL = "profile", "libvirt-cpu", "model"
SSH, LIBVIRT = "ssh", "libvirt"
# what a collection came to
NEW, CHANGED, UNCHANGED, FAILED = "new", "changed", "unchanged", "failed"
# why one failed
UNREACHABLE, TIMEOUT, COMMAND_MISSING, NOT_AARCH64, NOT_A_PROFILE, REMOTE_ERROR = (
    "unreachable", "timeout", "command-missing", "not-aarch64", "not-a-profile", "remote-error")

# a host as 'collect' takes it: [user@]name, the name a folder's: letters,
# digits, . _ - and ':' (IPv6), never a path, never an ssh option
_HOST = re.compile(r"(?:([A-Za-z0-9_][A-Za-z0-9._-]{0,63})@)?([A-Za-z0-9][A-Za-z0-9._:-]{0,252})")
_STAMP = re.compile(r"[^0-9TZ]")
_STDERR_LIMIT = 64 * 1024


def default_directory() -> str:
    return os.environ.get(ENV_DIR) or DEFAULT_DIR


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _stamp(iso: str) -> str:
    """An ISO 8601 time as a file name's first part: 20261205T101500Z (the
    digits of a remote host's own text, nothing else)."""
    text = _STAMP.sub("", iso)[:16]
    return text if re.fullmatch(r"\d{8}T\d{6}Z?", text) else _STAMP.sub("", _now())


def host_name(dest: str) -> str:
    """The inventory's name of the host at *dest* (``[user@]host``): the
    host part.

    :raise UsageError: for anything else (an option, a path, a URI).
    """
    m = _HOST.fullmatch(dest)
    if not m or ".." in dest:
        raise UsageError(f"'{shown(dest)}' is not a host ([user@]host: letters, digits and "
                         f". _ - :; use ~/.ssh/config or --ssh-config for ports and options)")
    return m.group(2)


def read_hosts_file(path: str) -> tuple[list[str], list[str]]:
    """The hosts of a hosts file: (SSH destinations, libvirt URIs), one a
    line, '#' starting a comment.

    :raise ParseError: naming the line of a host that is not one.
    """
    try:
        text = read_input(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(path, None, "not a text file (invalid UTF-8)") from None
    hosts, uris = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "://" in line:
            uris.append(line)
            continue
        try:
            host_name(line)
        except UsageError as err:
            raise ParseError(path, number, str(err)) from None
        hosts.append(line)
    return hosts, uris


# -- what changed: pure (profiles: drift.profile_changes) ----------------------------

def same_profile(a: HostProfile, b: HostProfile) -> bool:
    """The same content (fingerprint, registers, everything) but for when
    it was probed."""
    return dataclasses.replace(a, probed_at="") == dataclasses.replace(b, probed_at="")


def profile_changes(old: HostProfile, new: HostProfile, kb: KnowledgeBase) -> list[str]:
    """What differs between two profiles of one host, one line each (kernel,
    QEMU, loader, capabilities, CPUs, ID register fields and their
    writability, firmware): :func:`libvirt_arm_cpu.drift.profile_changes`,
    which ``host --check`` shows too."""
    return drift.profile_changes(old, new, kb)


def host_cpu_changes(old: HostCpu, new: HostCpu) -> list[str]:
    """What differs between two libvirt host CPUs of one host, one line each."""
    out = [f"{name}: {getattr(old, name) or 'none'} -> {getattr(new, name) or 'none'}"
           for name in ("arch", "model", "vendor") if getattr(old, name) != getattr(new, name)]
    gone, added = sorted(old.features - new.features), sorted(new.features - old.features)
    if gone:
        out.append(f"features lost ({len(gone)}): {' '.join(gone)}")
    if added:
        out.append(f"features gained ({len(added)}): {' '.join(added)}")
    return out


def model_changes(old: CpuModel, new: CpuModel, kb: KnowledgeBase) -> list[str]:
    """What differs between two versions of a saved CPU model, one line
    each: its ID register fields, the hosts it was made from, its vCPU
    features off, its firmware registers."""
    out = []
    for name in sorted(set(old.values) | set(new.values),
                       key=lambda n: (kb.register(n).encoding, n)):
        a, b = old.values.get(name), new.values.get(name)
        if a == b:
            continue
        fields = kb.register(name).fields if a is not None and b is not None else ()
        if not fields:
            out.append(f"{name}: {'absent' if a is None else f'{a:#x}'} -> "
                       f"{'absent' if b is None else f'{b:#x}'}")
        for f in fields:
            fa, fb = f.get(a), f.get(b)                       # type: ignore[arg-type]
            if fa != fb:
                out.append(f"{name}.{f.name}: {_meaning(f, fa)} -> {_meaning(f, fb)}")
    for what, was, now in (("hosts", old.hosts, new.hosts),
                           ("vCPU features off", old.vcpu_off, new.vcpu_off)):
        if was != now:
            out.append(f"{what}: {', '.join(was) or 'none'} -> {', '.join(now) or 'none'}")
    for name in sorted(set(old.firmware) | set(new.firmware)):
        fw_old = _firmware(old.firmware, name)
        fw_new = _firmware(new.firmware, name)
        if fw_old != fw_new:
            out.append(f"firmware {name}: {fw_old} -> {fw_new}")
    return out


def _meaning(f: Field, value: int) -> str:
    text = str(value) if f.width <= 4 else f"{value:#x}"
    meaning = f.meaning(value)
    return f"{text} ({meaning})" if meaning else text


def _firmware(values: dict[str, int | None], name: str) -> str:
    if name not in values:
        return "not managed"
    v = values[name]
    return "hidden" if v is None else f"{v:#x}"


def passthrough_after(old: HostProfile, new: HostProfile, kb: KnowledgeBase
                      ) -> tuple[bool, list[str]]:
    """Can a host-passthrough guest started when the host was *old* run on
    (migrate back to) the host as it is *new*?  (yes/no, and why not)."""
    c = compare_passthrough(old, new, kb)
    return c.result != "incompatible", [str(r) for r in c.reasons]


# -- the inventory -------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One version in a history: *stamp* its time (probe time for a
    profile, recording time otherwise), *ident* a short digest, *seq* its
    place in the order recorded."""

    kind: str
    path: str
    stamp: str
    ident: str
    seq: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass
class Outcome:
    """What one collection of one host came to."""

    host: str
    method: str                 # ssh, libvirt
    source: str                 # the SSH destination or libvirt URI
    status: str                 # new, changed, unchanged, failed
    reason: str = ""            # why it failed (unreachable, timeout, ...)
    detail: str = ""            # the failure's message, or a one-line summary
    changes: list[str] = field(default_factory=list)
    path: str | None = None     # the current file

    @property
    def ok(self) -> bool:
        return self.status != FAILED

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "method": self.method, "source": self.source,
                "status": self.status, "reason": self.reason or None,
                "detail": self.detail or None, "path": self.path,
                "changes": list(self.changes)}


class Inventory:
    """An inventory folder (see the module's docstring)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or default_directory()

    # where things are
    @property
    def hosts_file(self) -> str:
        return os.path.join(self.root, "hosts.txt")

    @property
    def profiles_dir(self) -> str:
        return os.path.join(self.root, "profiles")

    def profile_path(self, host: str) -> str:
        return os.path.join(self.profiles_dir, _checked(host) + ".xml")

    def host_dir(self, host: str) -> str:
        return os.path.join(self.root, "hosts", _checked(host))

    def capabilities_path(self, host: str) -> str:
        return os.path.join(self.host_dir(host), "capabilities.xml")

    def model_dir(self, name: str) -> str:
        return os.path.join(self.root, "models", modelstore.check_name(name))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (two 'collect' runs of one inventory)."""
        import fcntl

        try:
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise DataError(f"{self.root}: cannot write the inventory: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # reading
    def hosts(self) -> list[str]:
        """Every host the inventory has heard of (collected, or tried)."""
        names: set[str] = set()
        for where, suffix in ((self.profiles_dir, ".xml"), (os.path.join(self.root, "hosts"), "")):
            try:
                entries = os.listdir(where)
            except OSError:
                continue
            names.update(n[:len(n) - len(suffix)] for n in entries
                         if n.endswith(suffix) and not n.startswith("."))
        return sorted(n for n in names if _HOST.fullmatch(n))

    def has(self, host: str) -> bool:
        return os.path.exists(self.host_dir(host)) or os.path.exists(self.profile_path(host))

    def current_profile(self, host: str) -> HostProfile | None:
        path = self.profile_path(host)
        if not os.path.exists(path):
            return None
        return profile_from_xml(read_input(path), path)

    def current_host_cpu(self, host: str) -> HostCpu | None:
        path = self.capabilities_path(host)
        if not os.path.exists(path):
            return None
        return host_cpu_from_xml(read_input(path), path)

    def history(self, host: str) -> list[Entry]:
        """The host's versions, oldest first."""
        return _entries(os.path.join(self.host_dir(host), "history"))

    def model_history(self, name: str) -> list[Entry]:
        return _entries(self.model_dir(name))

    def models(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(os.path.join(self.root, "models"))
                          if not n.startswith("."))
        except OSError:
            return []

    def status(self, host: str) -> dict[str, dict[str, str]]:
        """The last collection of each method: {method: {time, status, ...}}."""
        path = os.path.join(self.host_dir(host), "status.json")
        try:
            data = json.loads(read_input(path))
        except (ParseError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # writing (callers hold locked())
    def record_profile(self, host: str, data: bytes, profile: HostProfile, source: str,
                       kb: KnowledgeBase) -> Outcome:
        """Make *profile* (its XML *data*, already checked) the host's
        current one; a new version in its history unless it is the same."""
        old = self.current_profile_or_none(host)
        path = self.profile_path(host)
        out = Outcome(host, SSH, source, NEW, path=path)
        if old is not None and same_profile(old, profile):
            out.status, out.detail = UNCHANGED, f"probed {old.probed_at}"
        else:
            if old is not None:
                out.status, out.changes = CHANGED, profile_changes(old, profile, kb)
            self._add_version(host, PROFILE, _stamp(profile.probed_at),
                              profile.fingerprint.digest[:12], data)
            os.makedirs(self.profiles_dir, exist_ok=True)
            atomic_write(path, data)
            out.detail = _summary(profile)
        self._set_status(host, out)
        return out

    def current_profile_or_none(self, host: str) -> HostProfile | None:
        """The current profile, None also when it cannot be read (replaced)."""
        try:
            return self.current_profile(host)
        except ParseError:
            return None

    def record_host_cpu(self, host: str, data: bytes, cpu: HostCpu, source: str) -> Outcome:
        """The same for a host CPU read through libvirt (*data*: its
        capabilities)."""
        path = self.capabilities_path(host)
        try:
            old = self.current_host_cpu(host)
        except ParseError:
            old = None
        out = Outcome(host, LIBVIRT, source, NEW, path=path)
        if old is not None and old == cpu:
            out.status = UNCHANGED
        else:
            if old is not None:
                out.status, out.changes = CHANGED, host_cpu_changes(old, cpu)
            ident = hashlib.sha256(repr((cpu.arch, cpu.model, cpu.vendor,
                                         sorted(cpu.features))).encode()).hexdigest()[:12]
            self._add_version(host, LIBVIRT_CPU, _stamp(_now()), ident, data)
            atomic_write(path, data)
        out.detail = (f"libvirt host CPU {cpu.model or '(no model)'}, {len(cpu.features)} "
                      f"features (hwcap names only: less precise than a profile)")
        self._set_status(host, out)
        return out

    def record_failure(self, out: Outcome) -> None:
        self._set_status(out.host, out)

    def record_models(self, names: Sequence[str] | None = None) -> list[Outcome]:
        """Record the model store's saved models: a new version of each
        whose file differs from its latest recorded one."""
        catalog = kb_load.features()
        outs = []
        for name in names if names is not None else modelstore.names():
            path = modelstore.path_of(name)
            data = read_input(path)
            model_from_xml(data, path, catalog)           # a model, or ParseError naming it
            ident = hashlib.sha256(data).hexdigest()[:12]
            history = self.model_history(name)
            out = Outcome(name, MODEL, path, NEW, path=path)
            if history and history[-1].ident == ident:
                out.status = UNCHANGED
            else:
                if history:
                    out.status = CHANGED
                    out.changes = model_changes(
                        model_from_xml(read_input(history[-1].path), history[-1].path, catalog),
                        model_from_xml(data, path, catalog), kb_load.registers())
                os.makedirs(self.model_dir(name), exist_ok=True)
                atomic_write(_next(self.model_dir(name), f"{_stamp(_now())}-{ident}"), data)
            outs.append(out)
        return outs

    def _add_version(self, host: str, kind: str, stamp: str, ident: str, data: bytes) -> None:
        where = os.path.join(self.host_dir(host), "history")
        os.makedirs(where, exist_ok=True)
        prefix = "libvirt-" if kind == LIBVIRT_CPU else ""
        atomic_write(_next(where, f"{prefix}{stamp}-{ident}"), data)

    def _set_status(self, host: str, out: Outcome) -> None:
        state = self.status(host)
        state[out.method] = {"time": _now(), "source": out.source, "status": out.status,
                             "reason": out.reason, "detail": out.detail}
        os.makedirs(self.host_dir(host), exist_ok=True)
        atomic_write(os.path.join(self.host_dir(host), "status.json"),
                     (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


def _checked(host: str) -> str:
    if not _HOST.fullmatch(host) or "@" in host or ".." in host:
        raise UsageError(f"'{shown(host)}' is not a host name of the inventory")
    return host


def _next(where: str, rest: str) -> str:
    """The path of the next version in *where*: NNNN-*rest*.xml, NNNN one
    more than the last one's (the order they were recorded in, whatever the
    hosts' clocks say)."""
    last = max((e.seq for e in _entries(where)), default=0)
    return os.path.join(where, f"{last + 1:04d}-{rest}.xml")


_ENTRY = re.compile(r"(\d{4,9})-(libvirt-)?(\d{8}T\d{6}Z?)-([0-9a-f]{1,64})\.xml\Z")


def _entries(where: str) -> list[Entry]:
    try:
        names = os.listdir(where)
    except OSError:
        return []
    out = []
    for n in names:
        m = _ENTRY.match(n)
        if m:
            out.append(Entry(LIBVIRT_CPU if m.group(2) else PROFILE, os.path.join(where, n),
                             m.group(3), m.group(4), int(m.group(1))))
    return sorted(out, key=lambda e: (e.seq, e.name))


def describe_qemu(p: HostProfile) -> str:
    """'QEMU 10.0.0', or 'QEMU missing' where the probe found none."""
    q = p.qemu
    return shown(f"QEMU {q.version}" if q.status == "found" and q.version else
                 f"QEMU {q.status}", 40)


def _summary(p: HostProfile) -> str:
    return (f"{shown(p.hostname, 40)}: Linux {shown(p.kernel_release, 40)}, "
            f"{describe_qemu(p)}, probed {shown(p.probed_at, 30)}")


# -- collecting ----------------------------------------------------------------------

class CollectFailed(DataError):
    """A host that gave no profile; *reason* says which way (unreachable,
    timeout, command-missing, not-aarch64, not-a-profile, remote-error)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def ssh_argv(dest: str, command: str = REMOTE_COMMAND, connect_timeout: int = 10,
             ssh_config: str | None = None, options: Sequence[str] = ()) -> list[str]:
    """The ssh command line that runs *command* on *dest*: never asks for a
    password or a host key (BatchMode), gives up connecting after
    *connect_timeout* seconds."""
    host_name(dest)
    argv = ["ssh", "-n", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}"]
    if ssh_config:
        argv += ["-F", ssh_config]
    for opt in options:
        argv += ["-o", opt]
    return argv + ["--", dest, command]


def _run_bounded(argv: list[str], timeout: float) -> tuple[int | None, bytes, bytes, bool]:
    """Run *argv*; (exit code, stdout, stderr, overflow).  Exit code None:
    it did not finish in *timeout* seconds, or printed more than an input
    may have (*overflow*); either way it was killed, with its process
    group."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}
    too_much = threading.Event()

    def drain(stream, key: str, limit: int) -> None:
        size = 0
        while True:
            block = stream.read1(65536)
            if not block:
                return
            if size < limit:
                chunks[key].append(block[:limit - size])
            size += len(block)
            if key == "out" and size > limit:
                too_much.set()
                _kill(proc)
                return

    readers = [threading.Thread(target=drain, args=(proc.stdout, "out", MAX_INPUT_BYTES),
                                daemon=True),
               threading.Thread(target=drain, args=(proc.stderr, "err", _STDERR_LIMIT),
                                daemon=True)]
    for t in readers:
        t.start()
    try:
        code: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait()
        code = None
    for t in readers:
        t.join(2)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if too_much.is_set():
        code = None
    return code, b"".join(chunks["out"]), b"".join(chunks["err"]), too_much.is_set()


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def _last_line(err: bytes) -> str:
    """The remote side's message: its last non-empty stderr line, without
    the program's own prefix."""
    lines = [ln.strip() for ln in err.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        return "(nothing on stderr)"
    line = re.sub(r"^libvirt-arm-cpu(?:-helper)?: error: ", "", lines[-1])
    return shown(line, 200)


def fetch_ssh(dest: str, timeout: float, command: str = REMOTE_COMMAND,
              ssh_config: str | None = None, options: Sequence[str] = ()) -> bytes:
    """What *command* prints on *dest*, over SSH, in at most *timeout*
    seconds.

    :raise CollectFailed: unreachable (ssh failed: connection, key, host
        key), timeout, command-missing, not-aarch64 (the host says so) or
        remote-error (the command failed there).
    """
    argv = ssh_argv(dest, command, max(1, min(10, int(timeout))), ssh_config, options)
    code, out, err, overflow = _run_bounded(argv, timeout)
    if code is None:
        if overflow:
            raise CollectFailed(NOT_A_PROFILE, f"printed more than the {MAX_INPUT_BYTES} bytes "
                                               f"a profile may have")
        raise CollectFailed(TIMEOUT, f"no answer in {timeout:g} s (--timeout)")
    if code == 255:
        raise CollectFailed(UNREACHABLE, f"ssh failed: {_last_line(err)}")
    if code == 127:
        raise CollectFailed(COMMAND_MISSING, f"'{shown(command.split()[0])}' is not installed "
                                             f"there, or not on its PATH ({_last_line(err)}); "
                                             f"install libvirt-arm-cpu, or give --remote-command")
    if code == 3:
        raise CollectFailed(NOT_AARCH64, f"not an aarch64 host: {_last_line(err)}")
    if code != 0:
        raise CollectFailed(REMOTE_ERROR, f"'{shown(command, 60)}' failed there (exit {code}): "
                                          f"{_last_line(err)}")
    return out


def parse_collected(data: bytes, label: str, kb: KnowledgeBase) -> HostProfile:
    """*data*, what a host printed, as a host profile: the reader's and the
    schema's checks, an aarch64 machine, the knowledge base's names.

    :raise CollectFailed: not-a-profile, or not-aarch64 (a profile of
        another machine).
    """
    kind = kind_of(data)
    if kind != HOST_PROFILE:
        first = data.lstrip()[:60].decode("utf-8", errors="replace").splitlines()
        what = kind or (f"'{shown(first[0], 40)}...'" if first else "nothing")
        raise CollectFailed(NOT_A_PROFILE, f"printed {what}, not {HOST_PROFILE}")
    try:
        _, profile = load_input(data, label, label, kb, validate=True)
    except ParseError as err:
        if "not aarch64" in err.detail:
            raise CollectFailed(NOT_AARCH64, str(err)) from None
        raise CollectFailed(NOT_A_PROFILE, str(err)) from None
    except Error as err:
        raise CollectFailed(NOT_A_PROFILE, f"not a valid host profile: {err}") from None
    assert profile is not None
    return profile


def libvirt_name(uri: str) -> str | None:
    """The host a libvirt URI names (``qemu+ssh://root@kvm1/system`` ->
    ``kvm1``), None for a local one."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    return host or None


def fetch_libvirt(uri: str, timeout: float, open_connection: Callable[[str], Any] | None = None
                  ) -> tuple[str, bytes, HostCpu]:
    """The host CPU that libvirt at *uri* reports (``getCapabilities``):
    (the host's name, the capabilities document, the host CPU).  libvirt
    shows no ID registers, so this is the hwcap names of the host's CPUs.
    *open_connection* defaults to libvirt.openReadOnly.

    :raise CollectFailed: unreachable (no connection), timeout, not-aarch64.
    """
    answers: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            answers.append(_ask_libvirt(uri, open_connection))
        except BaseException as err:       # handed to the caller's thread
            errors.append(err)

    # libvirt calls cannot be interrupted: a hung one is left in its daemon
    # thread, which does not keep the process alive
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CollectFailed(TIMEOUT, f"libvirt at {uri} gave no answer in {timeout:g} s")
    if errors:
        raise errors[0]
    name, data = answers[0]
    path = f"{uri} (capabilities)"
    try:
        root = parse_untrusted(data, path)
        arch = (root.findtext("host/cpu/arch") or "").strip()
        if root.tag == "capabilities" and arch and arch != "aarch64":
            raise CollectFailed(NOT_AARCH64, f"not an aarch64 host: libvirt at {uri} reports "
                                             f"an {shown(arch, 20)} host CPU (libvirt-arm-cpu "
                                             f"describes aarch64 KVM hosts)")
        cpu = host_cpu_from_xml(data, path)
    except ParseError as err:
        raise CollectFailed(NOT_A_PROFILE, f"unusable capabilities: {err}") from None
    return name, data, cpu


def _ask_libvirt(uri: str, open_connection: Callable[[str], Any] | None) -> tuple[str, bytes]:
    try:
        import libvirt
    except ImportError:
        raise CollectFailed(UNREACHABLE, "libvirt-python is not installed (install "
                                         "libvirt-arm-cpu[libvirt])") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)   # our one line, not its own
    target = uri
    if "+ssh" in uri.split("://", 1)[0] and "no_tty=" not in uri:
        # ssh's BatchMode: never a password prompt on our terminal
        target += ("&" if "?" in uri else "?") + "no_tty=1"
    try:
        conn: Any = (open_connection or libvirt.openReadOnly)(target)
    except libvirt.libvirtError as err:
        raise CollectFailed(UNREACHABLE, f"cannot connect to libvirt at {uri}: "
                                         f"{err.get_error_message()}") from None
    try:
        caps = conn.getCapabilities()
        try:
            name = conn.getHostname()
        except libvirt.libvirtError:
            name = ""
    except libvirt.libvirtError as err:
        raise CollectFailed(REMOTE_ERROR, f"libvirt at {uri}: {err.get_error_message()}") \
            from None
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
    return libvirt_name(uri) or name, caps.encode("utf-8")
