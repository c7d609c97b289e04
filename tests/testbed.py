"""Run a job in the arm64 KVM test bed (contrib/testbed) from tests.

    res = run_in_guest(kernel="6.12", qemu="7.2", cpu="neoverse-n1",
                       script="python3 -m libvirt_arm_cpu.cli decode midr 0x414fd0c1")
    res.rc, res.stdout, res.stderr, res.files["name"], res.wall_s

Each call boots a guest (3-20 s under TCG) through
contrib/testbed/run-in-guest.sh; identical calls within a test session are
answered from memory.  A boot that fails, times out or brings back no result
raises TestbedError, with the driver's reason and the end of the serial log.
The guest has this checkout's libvirt_arm_cpu, xml/ and hooks/ (at
/opt/project), xmlschema and elementpath on PYTHONPATH, a real /dev/kvm
(unless the kernel is told otherwise) and an empty /out whose files come back
in ``files``.

``image="libvirt"`` boots the libvirt guest root instead (3 GiB; about 20 s
more): trixie's libvirt 11.3 (libvirtd answering on qemu:///system before the
job starts), QEMU 10.0 and python3-libvirt, /usr/bin/python3 finding the
project without PYTHONPATH too (hook scripts), ``testbed-install-hook SRC
[NAME]`` to put a hook into /etc/libvirt/hooks/qemu.d and reload libvirtd,
and /testbed/idle-aarch64.bin as a kernel for domains (see
tests/libvirtd.py's kvm_domain_xml).  Standard library only.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GuestResult", "TestbedError", "run_in_guest", "DRIVER", "PREPARE"]

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "contrib" / "testbed" / "run-in-guest.sh"
PREPARE = "contrib/testbed/prepare.sh"

# The driver's exit codes (contrib/testbed/run_in_guest.py).
_EXIT_USAGE, _EXIT_UNPREPARED = 2, 3


class TestbedError(RuntimeError):
    """The guest could not be booted or brought back no result."""

    __test__ = False     # not a pytest test class

    def __init__(self, message: str, out_dir: Path | None = None) -> None:
        super().__init__(message)
        self.out_dir = out_dir      # the driver's --out (console.log, result.json)


@dataclass(frozen=True)
class GuestResult:
    __test__ = False

    rc: int                      # the job's exit code
    stdout: str                  # the job's output (UTF-8; undecodable bytes replaced)
    stderr: str
    files: dict[str, bytes]      # /out/<path> -> contents, byte-exact ("sub/f.txt")
    wall_s: float                # QEMU start to power-off
    out_dir: Path = field(compare=False)   # the driver's --out directory
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)
    info: dict = field(default_factory=dict, compare=False, repr=False)   # result.json

    @property
    def console(self) -> str:
        """The raw serial log (kernel messages, markers)."""
        return (self.out_dir / "console.log").read_text("utf-8", "replace")


_memo: dict[tuple, GuestResult] = {}
_session_dir: Path | None = None


def _out_dir() -> Path:
    """A fresh result directory, under one directory per session that goes
    away at exit (set LIBVIRT_ARM_CPU_TESTBED_KEEP=1 to keep it)."""
    global _session_dir
    if _session_dir is None:
        _session_dir = Path(tempfile.mkdtemp(prefix="libvirt-arm-cpu-testbed."))
        if not os.environ.get("LIBVIRT_ARM_CPU_TESTBED_KEEP"):
            atexit.register(shutil.rmtree, _session_dir, True)
    return Path(tempfile.mkdtemp(prefix="run.", dir=_session_dir))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(l.rstrip("\r") for l in text.splitlines()[-lines:])


def run_in_guest(*, kernel: str = "6.12", qemu: str = "7.2", cpu: str = "neoverse-n1",
                 script: str | bytes | None = None, append: str = "",
                 timeout: float = 120, image: str = "kvm", inner_qemu: tuple[str, ...] = (),
                 files: dict[str, bytes] | None = None) -> GuestResult:
    """Boot the test bed and run ``script`` (busybox sh) as the job.

    kernel: "6.12" (trixie), "7.3" (trixie-backports), "6.1" (bookworm);
    qemu: "7.2" (the host's) or "10.0" (bookworm-backports); cpu: any -cpu
    value; append: extra kernel arguments; timeout: seconds for the whole
    boot (give the libvirt image 300); image: "kvm" (the base guest root) or
    "libvirt" (libvirt 11.3 running in the guest).  script None runs a short
    report (kernel, /dev/kvm, CPU).  inner_qemu ("7.2",) also puts bookworm's
    QEMU 7.2 for arm64 into the guest (/opt/qemu-7.2/qemu-system-aarch64);
    files {"NAME": bytes} go into the guest as /in/NAME."""
    body = script.encode() if isinstance(script, str) else script
    files = dict(files or {})
    key = (image, kernel, qemu, cpu, body, append, float(timeout), tuple(inner_qemu),
           tuple(sorted((n, hashlib.sha256(d).hexdigest()) for n, d in files.items())))
    if key in _memo:
        return _memo[key]

    out = _out_dir()
    cmd = [str(DRIVER), "--image", image, "--kernel", kernel, "--qemu", qemu, "--cpu", cpu,
           "--append", append, "--timeout", f"{timeout:g}", "--out", str(out)]
    if body is not None:
        cmd += ["--script", "-"]
    for series in inner_qemu:
        cmd += ["--with", f"qemu-{series}"]
    if files:
        inputs = out / "inputs"
        inputs.mkdir()
        for name, data in files.items():
            (inputs / name).write_bytes(data)
            cmd += ["--in", f"{name}={inputs / name}"]
    # The driver bounds its own wait for other boots (LIBVIRT_ARM_CPU_TESTBED_LOCK_WAIT,
    # 1800 s) and the boot (timeout); this is only a backstop.
    limit = float(os.environ.get("LIBVIRT_ARM_CPU_TESTBED_LOCK_WAIT") or 1800) + timeout + 120
    try:
        proc = subprocess.run(cmd, input=body or b"", capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{DRIVER.name} did not return within {limit:g} s", out) from None
    message = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode == _EXIT_UNPREPARED:
        raise TestbedError(message if PREPARE in message else f"{message}: run {PREPARE}", out)
    if proc.returncode != 0:
        console = _tail(out / "console.log")
        raise TestbedError(f"{message or f'{DRIVER.name} exited with {proc.returncode}'}"
                           + (f"\n--- end of the serial log ---\n{console}" if console else ""), out)

    files = {}
    root = out / "files"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    stdout_b, stderr_b = (out / "stdout").read_bytes(), (out / "stderr").read_bytes()
    result = GuestResult(
        rc=int((out / "rc").read_text()),
        stdout=stdout_b.decode("utf-8", "replace"),
        stderr=stderr_b.decode("utf-8", "replace"),
        files=files,
        wall_s=float((out / "wall_s").read_text()),
        out_dir=out,
        stdout_bytes=stdout_b,
        stderr_bytes=stderr_b,
        info=json.loads((out / "result.json").read_text()),
    )
    _memo[key] = result
    return result
