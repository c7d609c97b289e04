"""The machine's real libvirtd, for tests (contrib/libvirt/start-libvirtd.sh).

    from .libvirtd import libvirt_conn_fixture, domain, tcg_domain_xml, domain_name

    def test_x(libvirt_conn):
        with domain(libvirt_conn, tcg_domain_xml(domain_name("x"))) as dom:
            assert dom.isActive()

libvirtd runs on this x86_64 machine with Debian 12's libvirt and QEMU;
aarch64 domains run under TCG (``type='qemu'``).  QEMU runs as root.  Test
domains are named ``lac-test-...`` and test hooks should have ``lac-test`` in
their file name: the session fixture ``libvirt_conn`` removes leftovers of
both (from a run that was killed) before and after the session.  Every call
that can block has a timeout.  Standard library and libvirt-python only.

For libvirt inside the arm64 KVM test bed (real KVM, libvirt 11.3), see
``run_in_guest(image="libvirt")`` in tests/testbed.py.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from xml.sax.saxutils import escape

import libvirt
import pytest

__all__ = ["GUEST_IDLE_KERNEL", "HOOKS_DIR", "PREFIX", "START_SCRIPT", "URI", "LibvirtdError",
           "call", "cleanup_leftovers", "connect", "domain", "domain_name", "install_hook",
           "kvm_domain_xml", "libvirt_conn_fixture", "libvirtd_pid", "reload_libvirtd",
           "remove_hook", "tcg_domain_xml", "virsh", "wait_answering", "wait_state"]

URI = "qemu:///system"
PREFIX = "lac-test-"
HOOKS_DIR = Path("/etc/libvirt/hooks/qemu.d")
PID_FILE = Path("/run/libvirtd.pid")
ROOT = Path(__file__).resolve().parent.parent
START_SCRIPT = ROOT / "contrib" / "libvirt" / "start-libvirtd.sh"
_HINT = f"run sh {START_SCRIPT.relative_to(ROOT)} (contrib/test.sh does)"

DEFAULT_CPU = "<cpu mode='custom' match='exact'><model fallback='forbid'>cortex-a57</model></cpu>"
# The guest "kernel" of tcg_domain_xml: `1: wfi; b 1b` (AArch64).  QEMU loads a
# file without a Linux header raw at RAM + 0x80000 and jumps there, so the
# vCPU sleeps instead of spinning through exceptions on an empty flash.
_IDLE_CODE = bytes.fromhex("7f2003d5ffffff17")

T = TypeVar("T")


class LibvirtdError(RuntimeError):
    """libvirtd is not there, does not answer, or a call took too long."""


# ----------------------------------------------------------------- scratch files

_scratch: Path | None = None


def scratch_dir() -> Path:
    """A directory for this session's serial logs and the idle kernel,
    removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="lac-test-libvirt."))
        atexit.register(shutil.rmtree, _scratch, True)
        (_scratch / "idle.bin").write_bytes(_IDLE_CODE)
    return _scratch


# ----------------------------------------------------------------- calls with timeouts

def call(fn: Callable[..., T], *args, timeout: float = 60, what: str | None = None) -> T:
    """fn(*args) in a helper thread (libvirt-python releases the GIL), raising
    LibvirtdError when it has not returned within ``timeout`` seconds; its
    exceptions (libvirt.libvirtError) propagate."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:       # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True, name=f"libvirt-call-{getattr(fn, '__name__', fn)}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise LibvirtdError(f"{what or getattr(fn, '__name__', 'libvirt call')} did not return "
                            f"within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def connect(uri: str = URI, timeout: float = 30) -> libvirt.virConnect:
    """A read-write connection to libvirtd.  libvirt's own printing of errors
    to stderr is switched off (they arrive as libvirtError)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return call(libvirt.open, uri, timeout=timeout, what=f"connecting to {uri}")
    except libvirt.libvirtError as exc:
        raise LibvirtdError(f"cannot connect to {uri} ({exc.get_error_message()}): {_HINT}") from None
    except LibvirtdError as exc:
        raise LibvirtdError(f"{exc}: {_HINT}") from None


def virsh(*args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    """``virsh -c URI ARGS...`` (text output captured, never raises on a
    non-zero exit; subprocess.TimeoutExpired after ``timeout`` seconds)."""
    return subprocess.run(["virsh", "-c", URI, *args], input=input, capture_output=True,
                          text=True, timeout=timeout)


def _answers(timeout: float = 10) -> bool:
    try:
        return virsh("list", timeout=timeout).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def wait_answering(timeout: float = 30) -> None:
    """Wait until ``virsh list`` gets an answer from libvirtd."""
    deadline = time.monotonic() + timeout
    while not _answers(min(10, max(1, deadline - time.monotonic()))):
        if time.monotonic() > deadline:
            raise LibvirtdError(f"libvirtd does not answer on {URI} after {timeout:g} s: {_HINT}")
        time.sleep(0.1)


# ----------------------------------------------------------------- hooks

def libvirtd_pid() -> int:
    try:
        pid = int(PID_FILE.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() == "libvirtd":
            return pid
    except (OSError, ValueError):
        pass
    raise LibvirtdError(f"libvirtd is not running ({PID_FILE}): {_HINT}")


def reload_libvirtd(timeout: float = 30) -> None:
    """SIGHUP to libvirtd, then wait until it answers again.

    On SIGHUP libvirtd re-reads which hook scripts exist (an executable
    hooks/qemu or any executable file in hooks/qemu.d) before it reloads its
    drivers: without a SIGHUP a qemu.d script added to a daemon that had
    no qemu hook at all is never run.  The re-scan happens at once in the
    daemon's reload thread; the short pause leaves it time to happen before
    the next client call."""
    os.kill(libvirtd_pid(), signal.SIGHUP)
    time.sleep(0.2)
    wait_answering(timeout)


def install_hook(src_path: str | os.PathLike, name: str, timeout: float = 30) -> Path:
    """Install a QEMU hook script as /etc/libvirt/hooks/qemu.d/NAME (mode
    0755, replaced atomically), then reload libvirtd so that it runs.  Name
    test hooks with ``lac-test`` in them (the session cleanup removes those).
    libvirtd runs a hook with only LC_ALL, PATH (/usr/sbin:/usr/bin:/sbin:/bin
    here) and HOME in its environment, stdin the domain XML, and arguments
    DOMAIN OPERATION SUB-OPERATION EXTRA; a non-zero exit of ``prepare`` makes
    the start fail with VIR_ERR_HOOK_SCRIPT_FAILED and the hook's stderr."""
    if "/" in name or name.startswith("."):
        raise ValueError(f"bad hook name {name!r}")
    HOOKS_DIR.mkdir(parents=True, exist_ok=True)
    dest = HOOKS_DIR / name
    tmp = HOOKS_DIR.parent / f".{name}.tmp"     # outside qemu.d: never run half-written
    shutil.copyfile(src_path, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    reload_libvirtd(timeout)
    return dest


def remove_hook(name: str, timeout: float = 30) -> None:
    """Remove /etc/libvirt/hooks/qemu.d/NAME (if there) and reload libvirtd."""
    (HOOKS_DIR / name).unlink(missing_ok=True)
    reload_libvirtd(timeout)


# ----------------------------------------------------------------- domains

def domain_name(label: str = "dom") -> str:
    """A fresh test domain name: lac-test-LABEL-<8 hex digits>."""
    return f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}"


def _domain_xml(virt_type: str, name: str, *, cpu: str, kernel: str | None, serial: str,
                extra_devices: str, metadata: str, qemu_commandline: str, memory_mib: int,
                features: str = "") -> str:
    meta = f"\n  <metadata>\n    {metadata}\n  </metadata>" if metadata else ""
    kern = f"\n    <kernel>{escape(kernel)}</kernel>" if kernel else ""
    feat = f"\n  <features>{features}</features>" if features else ""
    extra = f"\n    {extra_devices}" if extra_devices else ""
    qemu = (f"\n  <qemu:commandline>\n    {qemu_commandline}\n  </qemu:commandline>"
            if qemu_commandline else "")
    return f"""<domain type='{virt_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(name)}</name>{meta}
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='aarch64' machine='virt'>hvm</type>{kern}
  </os>{feat}
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'>
      <source path='{escape(serial)}'/>
    </serial>{extra}
  </devices>{qemu}
</domain>
"""


def tcg_domain_xml(name: str, extra_devices: str = "", metadata: str = "",
                   cpu: str = DEFAULT_CPU, qemu_commandline: str = "", *,
                   memory_mib: int = 128, idle_kernel: bool = True) -> str:
    """A minimal aarch64 domain for TCG on this machine (``type='qemu'``,
    machine virt, one vCPU, no disks, no network, no USB, no balloon;
    on_poweroff/reboot/crash destroy), its serial port written to
    SCRATCH/NAME.serial.

    name gets the lac-test- prefix if it lacks it.  extra_devices goes into
    <devices>, metadata into <metadata> (give the element with its
    namespace), cpu replaces the <cpu> element, qemu_commandline is the
    content of <qemu:commandline> (``<qemu:arg value='...'/>`` elements; the
    qemu namespace is declared).  With idle_kernel the guest runs a two
    instruction loop around WFI, so a running test domain costs no CPU;
    without it the vCPU spins on an empty flash.  The GIC is version 3, as on
    the arm64 hosts whose profiles stand for this machine (libvirt's own
    default here would be 2, which the hook refuses on such a host)."""
    if not name.startswith(PREFIX):
        name = PREFIX + name
    scratch = scratch_dir()
    return _domain_xml("qemu", name, cpu=cpu, kernel=str(scratch / "idle.bin") if idle_kernel else None,
                       serial=str(scratch / f"{name}.serial"), extra_devices=extra_devices,
                       metadata=metadata, qemu_commandline=qemu_commandline, memory_mib=memory_mib,
                       features="<gic version='3'/>")


# In the test bed's libvirt image (run_in_guest(image="libvirt")): the per-run
# layer's idle kernel.
GUEST_IDLE_KERNEL = "/testbed/idle-aarch64.bin"


def kvm_domain_xml(name: str, extra_devices: str = "", metadata: str = "",
                   cpu: str = "<cpu mode='host-passthrough'/>", qemu_commandline: str = "", *,
                   memory_mib: int = 64, kernel: str | None = GUEST_IDLE_KERNEL,
                   gic_version: str | None = "3") -> str:
    """The same minimal domain for real KVM (``type='kvm'``), meant for the
    libvirt image of the arm64 test bed: host-passthrough, GIC version 3 (the
    test bed's emulated host has a GICv3 and no GICv2 compatibility), the
    guest's idle kernel, the serial port to /tmp/NAME.serial.  Pure text:
    build it on the host and put it into the job."""
    if not name.startswith(PREFIX):
        name = PREFIX + name
    return _domain_xml("kvm", name, cpu=cpu, kernel=kernel, serial=f"/tmp/{name}.serial",
                       extra_devices=extra_devices, metadata=metadata,
                       qemu_commandline=qemu_commandline, memory_mib=memory_mib,
                       features=f"<gic version='{gic_version}'/>" if gic_version else "")


def operator_job(templates: dict[str, str], guest_py: str, between: str = "",
                 after: str = "") -> str:
    """The job for the test bed's libvirt image that sets a host up as an
    operator would -- `libvirt-arm-cpu host` probes it into the cache (copied
    to /out/host.xml; whether the hook's compact copy of it was left beside
    it: /out/compact.txt), `hook install` -- waits for libvirtd, runs *between*
    (shell), then *guest_py* (Python, with the domain *templates* in
    /tmp/templates.json), then *after*.  /out/job.rc is its exit code."""
    cli = "python3 -m libvirt_arm_cpu.cli"
    return f"""set -u
{cli} host > /out/host.txt 2> /out/host.err; echo $? > /out/host.rc
cp /var/cache/libvirt-arm-cpu/host.xml /out/host.xml
python3 -c "from libvirt_arm_cpu.host import hostcache
copy = hostcache._read_compact(hostcache.DEFAULT_CACHE)
print('compact copy:', 'none' if copy is None else copy[0].hostname)" > /out/compact.txt 2>&1
{cli} hook install > /out/install.txt 2>&1; echo $? > /out/install.rc
i=0; until virsh -c qemu:///system list >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.2; i=$((i+1)); done
{between}
cat > /tmp/templates.json <<'TEMPLATES_EOF'
{json.dumps(templates)}
TEMPLATES_EOF
cat > /tmp/job.py <<'JOB_EOF'
{guest_py}
JOB_EOF
python3 /tmp/job.py > /out/job.out 2> /out/job.err; echo $? > /out/job.rc
{after}
"""


_UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


def _remove(dom: libvirt.virDomain, timeout: float = 60) -> None:
    """Destroy (if running) and undefine (with managed-save image, snapshot
    and checkpoint metadata, NVRAM), ignoring what is already gone."""
    try:
        if call(dom.isActive, timeout=timeout):
            call(dom.destroy, timeout=timeout)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise
    try:
        if call(dom.isPersistent, timeout=timeout):
            try:
                call(dom.undefineFlags, _UNDEFINE_FLAGS, timeout=timeout)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                call(dom.undefine, timeout=timeout)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


@contextmanager
def domain(conn: libvirt.virConnect, xml: str, start: bool = True,
           timeout: float = 60) -> Iterator[libvirt.virDomain]:
    """Define the domain (and start it); on exit, always destroy and undefine
    it, whatever happened, including when the start fails (the start's
    libvirtError then propagates).  The name must start with lac-test-."""
    m = re.search(r"<name>\s*([^<]*?)\s*</name>", xml)
    if not m or not m.group(1).startswith(PREFIX):
        raise ValueError(f"test domains are named {PREFIX}...; got {m.group(1) if m else None!r}")
    dom = call(conn.defineXML, xml, timeout=timeout, what=f"defining {m.group(1)}")
    try:
        if start:
            call(dom.create, timeout=timeout, what=f"starting {m.group(1)}")
        yield dom
    finally:
        _remove(dom, timeout)


_STATES = {getattr(libvirt, n): n[len("VIR_DOMAIN_"):].lower()
           for n in ("VIR_DOMAIN_NOSTATE", "VIR_DOMAIN_RUNNING", "VIR_DOMAIN_BLOCKED",
                     "VIR_DOMAIN_PAUSED", "VIR_DOMAIN_SHUTDOWN", "VIR_DOMAIN_SHUTOFF",
                     "VIR_DOMAIN_CRASHED", "VIR_DOMAIN_PMSUSPENDED")}


def wait_state(dom: libvirt.virDomain, state: int, timeout: float = 30) -> int:
    """Wait until dom.state()[0] == state (libvirt.VIR_DOMAIN_RUNNING, ...);
    returns its reason.  LibvirtdError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        current, reason = call(dom.state, timeout=max(1.0, deadline - time.monotonic()))
        if current == state:
            return reason
        if time.monotonic() > deadline:
            raise LibvirtdError(f"domain {dom.name()} is {_STATES.get(current, current)}, "
                                f"not {_STATES.get(state, state)}, after {timeout:g} s")
        time.sleep(0.05)


def cleanup_leftovers(conn: libvirt.virConnect | None = None, timeout: float = 60) -> list[str]:
    """Remove every lac-test-* domain and every qemu.d hook with lac-test in
    its name (reloading libvirtd if one was there).  Returns what it removed."""
    own = conn is None
    conn = conn or connect()
    removed = []
    try:
        for dom in call(conn.listAllDomains, 0, timeout=timeout):
            if dom.name().startswith(PREFIX):
                _remove(dom, timeout)
                removed.append(dom.name())
    finally:
        if own:
            conn.close()
    hooks = sorted(HOOKS_DIR.glob("*lac-test*"))
    for path in hooks + sorted(HOOKS_DIR.parent.glob(".*lac-test*.tmp")):
        path.unlink(missing_ok=True)
        removed.append(str(path))
    if hooks:
        reload_libvirtd()
    return removed


@pytest.fixture(scope="session", name="libvirt_conn")
def libvirt_conn_fixture() -> Iterator[libvirt.virConnect]:
    """The fixture ``libvirt_conn``: a connection to the machine's libvirtd,
    for the whole session; test domains and hooks left over by an earlier,
    killed run go first, and this session's go at the end.  Fails (never
    skips) when libvirtd is not there.  Import ``libvirt_conn_fixture`` into
    the test module and ask for ``libvirt_conn``."""
    conn = connect()
    cleanup_leftovers(conn)
    try:
        yield conn
    finally:
        cleanup_leftovers(conn)
        conn.close()
