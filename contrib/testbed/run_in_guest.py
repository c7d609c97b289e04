#!/usr/bin/env python3
"""Boot an arm64 Linux guest with a real /dev/kvm under QEMU (TCG, EL2) and
run a job in it, with this checkout's libvirt_arm_cpu package inside.

Usage (see README.md next to this file; run prepare.sh first):

    run-in-guest.sh [--image kvm|libvirt] [--kernel 6.12|7.3|6.1] [--qemu 7.2|10.0]
                    [--cpu CPU] [--append ARGS] [--timeout SECONDS]
                    [--script FILE|-] [--out DIR] [--with qemu-7.2] [--in NAME=PATH]...

The job is a busybox-sh script, run in /root with PYTHONPATH set so that
``python3 -m libvirt_arm_cpu.cli`` works.  With --image libvirt the guest
root is trixie's libvirt 11.3, QEMU 10.0 and python3-libvirt, and libvirtd
answers on qemu:///system before the job starts.  Its stdout, stderr and exit
code, and every file it leaves in /out, come back byte-exact (and --in files
go in, at /in/NAME):

    OUT/stdout  OUT/stderr  OUT/rc  OUT/files/...  OUT/console.log (raw
    serial log)  OUT/wall_s  OUT/qemu.stderr  OUT/result.json

Exit status: 0 when the job ran (whatever its own exit code), 1 when the boot
failed, timed out or brought back no (intact) result, 2 for a bad command
line, 3 when the test bed is not prepared.  Errors are one line on stderr.

Standard library only; runs on the host's Python 3.11.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
DEFAULT_CACHE = "/var/cache/libvirt-arm-cpu/testbed"
KERNELS = ("6.12", "7.3", "6.1")
QEMUS = ("7.2", "10.0")
# Guest images: the base root (busybox, Python) or the libvirt root; memory.
IMAGES = {"kvm": 1024, "libvirt": 3072}
BASE_CMDLINE = "console=ttyAMA0 rdinit=/init panic=-1"
PREPARE_HINT = "run contrib/testbed/prepare.sh"
# What the guest needs of the checkout: (source, path in the guest).
SITE_PACKAGES = ("xmlschema", "elementpath")
# The ID-register loader (loader/, the contract in libvirt_arm_cpu/engine/loader.py),
# cross-compiled with Debian's aarch64-linux-gnu-gcc and put where libvirt's
# AppArmor profile lets QEMU map libraries, in both images.
LOADER_SOURCE = CHECKOUT / "loader" / "libvirt-arm-cpu-loader.c"
LOADER_GUEST_PATH = "usr/lib/aarch64-linux-gnu/qemu/libvirt-arm-cpu-loader.so"
LOADER_CC = "aarch64-linux-gnu-gcc"
LOADER_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror")
LOADER_LIBS = ("-ldl",)
# The EL1 payload that prints the ID registers (idregs_payload.py).
IDREGS_GUEST_PATH = "testbed/idregs-aarch64.bin"
# QEMU builds that can run inside the guest (--with qemu-X): the archive
# prepare.sh makes, appended only to the runs that ask for it.
INNER_QEMUS = {"7.2": ("qemu-7.2-arm64", "QEMU72_FORMAT", "qemu-7.2-arm64-debs")}
# Names of input files (/in/NAME): one path component.
_INPUT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNPREPARED = 0, 1, 2, 3


class Failure(Exception):
    """The boot or the transfer failed: one line for the user."""

    exit_code = EXIT_FAILED


class Unprepared(Failure):
    exit_code = EXIT_UNPREPARED


# --------------------------------------------------------------------- cache

def cache_dir() -> Path:
    return Path(os.environ.get("LIBVIRT_ARM_CPU_TESTBED_CACHE") or DEFAULT_CACHE)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise Unprepared(f"the test bed is not prepared ({what} {path} is missing): {PREPARE_HINT}")
    return path


def _stamp(variable: str, inputs: tuple[Path, ...]) -> str:
    m = re.search(rf"^{variable}=(\S+)$", (HERE / "prepare.sh").read_text(), re.M)
    h = hashlib.sha256(f"{variable}={m.group(1) if m else ''}\n".encode())
    for p in inputs:
        h.update(p.read_bytes())
    return h.hexdigest()


def base_stamp(cache: Path) -> str:
    """The SHA-256 prepare.sh writes to base-initrd.stamp (same inputs)."""
    return _stamp("BASE_FORMAT", (HERE / "guest" / "base-init", cache / "guest-debs" / "pin"))


def libvirt_stamp(cache: Path) -> str:
    """The SHA-256 prepare.sh writes to libvirt-initrd.stamp (same inputs)."""
    return _stamp("LIBVIRT_FORMAT", (HERE / "guest" / "base-init", cache / "libvirt-debs" / "pin"))


def kernel_image(cache: Path, kernel: str) -> tuple[Path, str]:
    """(Image, release) of a kernel generation."""
    image = _need(cache / "kernels" / kernel / "Image", f"kernel {kernel}")
    pin = _need(cache / "kernels" / kernel / "pin", f"kernel {kernel}'s pin file").read_text().split()
    return image, pin[3] if len(pin) > 3 else ""


def qemu_binary(cache: Path, qemu: str) -> Path:
    if qemu == "10.0":
        return _need(cache / "qemu-10.0" / "usr" / "bin" / "qemu-system-aarch64", "QEMU 10.0")
    found = shutil.which("qemu-system-aarch64", path="/usr/bin:/usr/local/bin:" + os.environ.get("PATH", ""))
    if not found:
        raise Unprepared(f"qemu-system-aarch64 (Debian's qemu-system-arm) is not installed: {PREPARE_HINT}")
    return Path(found)


def base_initrd(cache: Path, image: str = "kvm") -> Path:
    """The guest root of an image, checked against its stamp."""
    if image == "libvirt":
        name, what, stamp_of, inputs = ("libvirt-initrd", "the libvirt guest root", libvirt_stamp,
                                        "the libvirt image's packages")
    else:
        name, what, stamp_of, inputs = "base-initrd", "the base guest root", base_stamp, "the guest packages"
    base = _need(cache / f"{name}.cpio.gz", what)
    stamp = cache / f"{name}.stamp"
    try:
        current = stamp.read_text().strip() == stamp_of(cache)
    except OSError:
        current = False
    if not current:
        raise Unprepared(f"{what} {base} is out of date "
                         f"(prepare.sh, guest/base-init or {inputs} changed): {PREPARE_HINT}")
    return base


def inner_qemu_archive(cache: Path, series: str) -> Path:
    """The extra archive with QEMU SERIES for arm64 (/opt/qemu-SERIES), checked."""
    name, variable, debs = INNER_QEMUS[series]
    archive = _need(cache / f"{name}.cpio.gz", f"QEMU {series} for the guest")
    try:
        current = (Path(f"{archive}.stamp").read_text().strip()
                   == _stamp(variable, (HERE / "guest" / f"qemu-{series}", cache / debs / "pin")))
    except OSError:
        current = False
    if not current:
        raise Unprepared(f"QEMU {series} for the guest ({archive}) is out of date: {PREPARE_HINT}")
    return archive


def venv_dir() -> Path:
    return Path(os.environ.get("LIBVIRT_ARM_CPU_VENV") or CHECKOUT / ".venv")


def site_package(name: str) -> Path:
    for sp in sorted(venv_dir().glob("lib/python3*/site-packages")):
        if (sp / name / "__init__.py").exists():
            return sp / name
    raise Unprepared(f"{name} is not in the virtualenv {venv_dir()}: run sh contrib/setup.sh")


# --------------------------------------------------------------------- the per-run layer

class Cpio:
    """A tiny writer of 'newc' cpio archives (what the kernel's initramfs reads)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1000
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(header + encoded)
        self.buf.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        name = name.strip("/")
        if not name or name in self.dirs:
            return
        self.dir(os.path.dirname(name))
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | mode, data)

    def tree(self, src: Path, dest: str) -> list[tuple[str, str]]:
        """Copy a source tree, leaving out byte-code caches; returns its
        Python modules as (host path, guest path)."""
        modules = []
        for top, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel = os.path.relpath(top, src)
            target = dest if rel == "." else f"{dest}/{rel}"
            self.dir(target)
            for f in sorted(filenames):
                if f.endswith((".pyc", ".pyo")):
                    continue
                p = Path(top, f)
                if p.is_file():
                    self.file(f"{target}/{f}", p.read_bytes(), 0o755 if os.access(p, os.X_OK) else 0o644)
                    if f.endswith(".py"):
                        modules.append((str(p), f"/{target}/{f}"))
        return modules

    def close(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


_COMPILE = r"""
import importlib.util, json, os, py_compile, sys
dest = sys.argv[1]
for src, guest in json.load(sys.stdin):
    cfile = dest + importlib.util.cache_from_source(guest)
    try:
        py_compile.compile(src, cfile=cfile, dfile=guest, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError as exc:
        print(exc.msg, file=sys.stderr)
"""


def byte_compile(modules: list[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """Byte-code of the guest's modules, made by the host-side copy of the
    guest's Python (prepare.sh): importing from source under TCG takes
    seconds.  Returns (guest path, .pyc bytes)."""
    run = _need(cache_dir() / "hostpython" / "run", "the host-side Python")
    with tempfile.TemporaryDirectory(prefix="testbed-pyc.") as tmp:
        proc = subprocess.run([str(run), "-I", "-c", _COMPILE, tmp], input=json.dumps(modules),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise Unprepared(f"{run} failed ({proc.stderr.strip().splitlines()[-1:]}): {PREPARE_HINT}")
        out = []
        for top, _dirs, files in os.walk(tmp):
            for f in files:
                p = os.path.join(top, f)
                out.append((os.path.relpath(p, tmp), Path(p).read_bytes()))
        return sorted(out)


# --------------------------------------------------------------------- cross-built pieces

def _build_dir(cache: Path) -> Path:
    d = cache / "build"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tool_version(tool: str) -> str:
    try:
        proc = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        raise Unprepared(f"{tool} is not installed: {PREPARE_HINT}") from None
    return (proc.stdout.splitlines() or [""])[0]


def _first_error(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l.lower()]
    return (errors or lines or ["(no message)"])[0]


def build_loader(cache: Path) -> tuple[bytes, str] | None:
    """The loader for the guest, as (shared object, source hash), built once
    per source hash into <cache>/build; None when the checkout has no
    loader source yet."""
    if not LOADER_SOURCE.exists():
        return None
    src_dir = LOADER_SOURCE.parent
    h = hashlib.sha256()
    for p in sorted(src_dir.glob("*.[ch]")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join(LOADER_FLAGS + LOADER_LIBS).encode())
    h.update(_tool_version(LOADER_CC).encode())
    key = h.hexdigest()[:16]
    out = _build_dir(cache) / f"libvirt-arm-cpu-loader-{key}.so"
    if not out.exists():
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        cmd = [LOADER_CC, *LOADER_FLAGS, "-o", str(tmp), str(LOADER_SOURCE), *LOADER_LIBS]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise Failure(f"{LOADER_SOURCE.relative_to(CHECKOUT)} does not build with {LOADER_CC}: "
                          f"{_first_error(proc.stderr)}")
        tmp.replace(out)
    return out.read_bytes(), key


def _idregs_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("testbed_idregs_payload", HERE / "idregs_payload.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_idregs_payload(cache: Path) -> tuple[bytes, str]:
    """The EL1 ID-register payload, generated from the checkout's knowledge
    base and assembled once per source hash into <cache>/build."""
    mod = _idregs_module()
    asm = mod.assembly(mod.registers())
    key = hashlib.sha256((asm + _tool_version(mod.CROSS + "as")).encode()).hexdigest()[:16]
    out = _build_dir(cache) / f"idregs-aarch64-{key}.bin"
    if not out.exists():
        try:
            mod.build(asm, out)
        except RuntimeError as exc:
            raise Failure(str(exc)) from None
    return out.read_bytes(), key


# AArch64 `1: wfi; b 1b`: a "kernel" for test domains that idles (QEMU loads a
# file without a Linux header raw at RAM + 0x80000 and jumps to it).
IDLE_KERNEL = bytes.fromhex("7f2003d5ffffff17")


def project_layer(env: dict[str, str], script: bytes | None, files: dict[str, bytes] | None = None,
                  built: dict[str, bytes] | None = None) -> bytes:
    """The per-run archive: /testbed (runner, env, job, tools), /opt/project
    (the package, xml/ and hooks/), /opt/site-packages, /in (input files) and
    the cross-built pieces (``built``: guest path -> contents)."""
    c = Cpio()
    c.file("testbed/init.sh", (HERE / "guest" / "init.sh").read_bytes(), 0o755)
    c.file("testbed/idle-aarch64.bin", IDLE_KERNEL)
    for path, data in sorted((built or {}).items()):
        c.file(path, data, 0o755 if path.endswith(".so") else 0o644)
    c.dir("in")
    for name, data in sorted((files or {}).items()):
        c.file(f"in/{name}", data)
    c.file("usr/local/bin/testbed-install-hook", (HERE / "guest" / "install-hook").read_bytes(), 0o755)
    c.file("usr/local/bin/testbed-run-idregs", (HERE / "guest" / "run-idregs").read_bytes(), 0o755)
    c.file("testbed/env", "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()).encode())
    if script is not None:
        c.file("testbed/job.sh", script, 0o755)
    package = CHECKOUT / "libvirt_arm_cpu"
    if not (package / "__init__.py").exists():
        raise Unprepared(f"no libvirt_arm_cpu package in {CHECKOUT}")
    modules = c.tree(package, "opt/project/libvirt_arm_cpu")
    for extra in ("xml", "hooks"):      # hooks/: scripts, run as such (no byte-code)
        if (CHECKOUT / extra).is_dir():
            c.tree(CHECKOUT / extra, f"opt/project/{extra}")
    for name in SITE_PACKAGES:
        modules += c.tree(site_package(name), f"opt/site-packages/{name}")
    for path, data in byte_compile(modules):
        c.file(path, data)
    c.dir("out")
    return c.close()


# --------------------------------------------------------------------- result decoding

@dataclass
class Decoded:
    started: bool = False
    start_uptime: float | None = None
    libvirtd_started: bool = False
    libvirtd_ready_uptime: float | None = None
    libvirtd_failed: str | None = None
    job_end_uptime: float | None = None
    done_uptime: float | None = None
    rc: int | None = None
    done: bool = False
    streams: dict[str, bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


_B64_LINE = re.compile(rb"^[A-Za-z0-9+/=]*$")


def decode_console(console: bytes, token: str) -> Decoded:
    """Pick the guest's result out of the raw serial log.

    Lines are the guest's ``TESTBED <token> ...`` markers; between ``begin
    NAME SIZE SHA256`` and ``end NAME`` is base64.  Carriage returns the tty
    adds are dropped, stray lines that are not base64 are skipped, and each
    stream must match its size and SHA-256."""
    out = Decoded()
    marker = b"TESTBED " + token.encode() + b" "
    current: tuple[str, int, str] | None = None
    chunks: list[bytes] = []
    for raw in console.split(b"\n"):
        line = raw.replace(b"\r", b"")
        pos = line.find(marker)
        if pos < 0:
            if current is not None and _B64_LINE.match(line.strip()):
                chunks.append(line.strip())
            continue
        words = line[pos + len(marker):].decode("ascii", "replace").split()
        if not words:
            continue
        verb, args = words[0], words[1:]
        try:
            if verb == "start":
                out.started, out.start_uptime = True, float(args[0])
            elif verb == "job-end":
                out.job_end_uptime = float(args[0])
            elif verb == "libvirtd-start":
                out.libvirtd_started = True
            elif verb == "libvirtd-ready":
                out.libvirtd_ready_uptime = float(args[0])
            elif verb == "libvirtd-failed":
                out.libvirtd_failed = " ".join(args[1:]) or "libvirtd did not start"
            elif verb == "begin":
                current, chunks = (args[0], int(args[1]), args[2]), []
            elif verb == "end" and current is not None:
                name, size, digest = current
                current = None
                try:
                    data = base64.b64decode(b"".join(chunks), validate=True)
                except ValueError:
                    out.errors.append(f"{name}: not valid base64: the serial console mangled it")
                    continue
                if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                    out.errors.append(f"{name}: {len(data)} bytes arrived, the guest sent {size} "
                                      "(or their SHA-256 differs): the serial console mangled it")
                    continue
                out.streams[name] = data
            elif verb == "files-error":
                out.errors.append("the guest could not tar /out")
            elif verb == "rc":
                out.rc = int(args[0])
            elif verb == "done":
                out.done = True
                out.done_uptime = float(args[0]) if args else None
        except (IndexError, ValueError):
            out.errors.append(f"malformed marker line: {line[pos:pos + 120]!r}")
    return out


def extract_files(tar_bytes: bytes, dest: Path) -> list[str]:
    """Unpack the guest's /out (regular files and directories only)."""
    names = []
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            name = os.path.normpath(member.name)
            if name in (".", "") or name.startswith(("/", "..")):
                continue
            target = dest / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                target.write_bytes(src.read() if src else b"")
                names.append(name)
    return sorted(names)


# --------------------------------------------------------------------- the boot

def qemu_version(binary: Path) -> str:
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unprepared(f"{binary} does not run ({exc}): {PREPARE_HINT}") from None
    m = re.search(r"version (\S+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise Unprepared(f"{binary} --version failed: {PREPARE_HINT}")
    return m.group(1)


def wait_for_lock(lock, path: Path) -> None:
    """Take the boot lock, waiting at most LIBVIRT_ARM_CPU_TESTBED_LOCK_WAIT
    seconds (default 1800) for the runs ahead (each bounded by its timeout)."""
    limit = float(os.environ.get("LIBVIRT_ARM_CPU_TESTBED_LOCK_WAIT") or 1800)
    deadline = time.monotonic() + limit
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise Failure(f"other boots held {path} for more than {limit:g} s") from None
            time.sleep(0.2)


class _Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise _Interrupted(signal.Signals(signum).name)


def boot(cmd: list[str], console_path: Path, stderr_path: Path, timeout: float) -> tuple[int, float, bool]:
    """Run QEMU (under timeout(1)) in its own process group; always reap it.

    Returns (exit status, wall seconds, timed out)."""
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    proc = None
    try:
        with open(console_path, "wb") as console, open(stderr_path, "wb") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(["timeout", "--kill-after=5", f"{timeout:g}", *cmd],
                                    stdin=subprocess.DEVNULL, stdout=console, stderr=err,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout + 15)
            except subprocess.TimeoutExpired:
                rc = 124
            wall = time.monotonic() - t0
        return rc, wall, rc in (124, 137)
    except _Interrupted as exc:
        raise Failure(f"interrupted by {exc}; QEMU stopped") from None
    finally:
        if proc is not None:
            # timeout(1) and QEMU share this process group: nothing outlives the run.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for s, h in old.items():
            signal.signal(s, h)


def diagnose(console: bytes, qemu_stderr: bytes, decoded: Decoded, rc: int, timed_out: bool,
             timeout: float) -> str:
    text = console.decode("utf-8", "replace")
    err_lines = [l for l in qemu_stderr.decode("utf-8", "replace").splitlines() if l.strip()]
    panic = re.search(r"Kernel panic - not syncing:[^\r\n]*", text)
    if timed_out:
        if decoded.job_end_uptime is not None:
            where = "while sending the result"
        elif decoded.libvirtd_started and decoded.libvirtd_ready_uptime is None:
            where = "libvirtd in the guest was still starting"
        elif decoded.started:
            where = "the job was still running"
        elif "Run /init as init process" in text:
            where = "the guest's /init never reached the runner"
        elif text.strip():
            where = "the kernel did not reach /init"
        else:
            where = "no output at all on the serial console"
        return f"timed out after {timeout:g} s ({where})"
    if decoded.libvirtd_failed:
        return (f"libvirtd in the guest: {decoded.libvirtd_failed} "
                "(its messages are at the end of console.log)")
    if panic:
        return panic.group(0).strip()
    if rc != 0 and err_lines:
        return f"QEMU exited with {rc}: {err_lines[-1]}"
    if decoded.errors:
        return "; ".join(decoded.errors)
    if not decoded.started:
        return f"the guest produced no result markers (QEMU exited with {rc})"
    return f"the guest's result is incomplete (QEMU exited with {rc})"


@dataclass
class Options:
    image: str
    kernel: str
    qemu: str
    cpu: str
    append: str
    timeout: float
    script: bytes | None
    out: Path | None
    inner_qemu: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)


def run(opts: Options) -> int:
    cache = cache_dir()
    image, release = kernel_image(cache, opts.kernel)
    binary = qemu_binary(cache, opts.qemu)
    base = base_initrd(cache, opts.image)
    version = qemu_version(binary)
    if not version.startswith(opts.qemu + "."):
        raise Unprepared(f"{binary} is QEMU {version}, not {opts.qemu}: {PREPARE_HINT}")

    extras = [inner_qemu_archive(cache, s) for s in opts.inner_qemu]
    for name in opts.files:
        if not _INPUT_NAME.match(name):
            raise Failure(f"input file name {name!r}: use letters, digits, '.', '_' and '-' only")

    token = secrets.token_hex(8)
    env = {"TESTBED_TOKEN": token, "TESTBED_IMAGE": opts.image, "TESTBED_KERNEL": opts.kernel,
           "TESTBED_QEMU": opts.qemu, "TESTBED_CPU": opts.cpu, "TESTBED_APPEND": opts.append}
    built: dict[str, bytes] = {}
    payload, payload_key = build_idregs_payload(cache)
    built[IDREGS_GUEST_PATH] = payload
    loader = build_loader(cache)
    if loader is not None:
        built[LOADER_GUEST_PATH] = loader[0]
    else:
        print(f"run-in-guest: note: {LOADER_SOURCE.relative_to(CHECKOUT)} is missing: "
              f"the guest has no /{LOADER_GUEST_PATH}", file=sys.stderr)
    layer = project_layer(env, opts.script, opts.files, built)

    out = opts.out or Path(tempfile.mkdtemp(prefix="testbed-run."))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("stdout", "stderr", "rc", "wall_s", "console.log", "qemu.stderr", "result.json"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "files", ignore_errors=True)

    cmdline = f"{BASE_CMDLINE} {opts.append}".strip()
    with tempfile.TemporaryDirectory(prefix="testbed-initrd.") as tmp:
        initrd = Path(tmp) / "initrd"
        with open(initrd, "wb") as f:
            for part in (base, *extras):
                with open(part, "rb") as b:
                    shutil.copyfileobj(b, f)
                f.write(b"\0" * (-f.tell() % 4))   # each archive starts 4-byte aligned
            f.write(layer)
            initrd_size = f.tell()
        cmd = [str(binary), "-M", "virt,virtualization=on,gic-version=3", "-cpu", opts.cpu,
               "-smp", "2", "-m", str(IMAGES[opts.image]), "-nographic", "-nic", "none", "-no-reboot",
               "-kernel", str(image), "-initrd", str(initrd), "-append", cmdline]
        # One boot at a time (2 cores, -smp 2 each): wait for any other run.
        with open(cache / "boot.lock", "a") as lock:
            wait_for_lock(lock, cache / "boot.lock")
            rc, wall, timed_out = boot(cmd, out / "console.log", out / "qemu.stderr", opts.timeout)

    console = (out / "console.log").read_bytes()
    qemu_stderr = (out / "qemu.stderr").read_bytes()
    decoded = decode_console(console, token)
    (out / "wall_s").write_text(f"{wall:.2f}\n")
    ok = (not timed_out and decoded.done and decoded.rc is not None and not decoded.errors
          and "stdout" in decoded.streams and "stderr" in decoded.streams)
    files: list[str] = []
    if ok:
        (out / "stdout").write_bytes(decoded.streams["stdout"])
        (out / "stderr").write_bytes(decoded.streams["stderr"])
        (out / "rc").write_text(f"{decoded.rc}\n")
        (out / "files").mkdir()
        if "files" in decoded.streams:
            files = extract_files(decoded.streams["files"], out / "files")
    result = {
        "ok": ok, "image": opts.image, "kernel": opts.kernel, "kernel_release": release, "qemu": opts.qemu,
        "qemu_version": version, "cpu": opts.cpu, "append": opts.append, "timeout": opts.timeout,
        "rc": decoded.rc if ok else None, "files": files, "wall_s": round(wall, 2),
        "guest_uptime": {"start": decoded.start_uptime, "libvirtd_ready": decoded.libvirtd_ready_uptime,
                         "job_end": decoded.job_end_uptime, "done": decoded.done_uptime},
        "qemu_exit": rc, "command": cmd,
        "inner_qemu": list(opts.inner_qemu), "inputs": {n: len(d) for n, d in sorted(opts.files.items())},
        "loader": loader[1] if loader else None, "idregs_payload": payload_key,
        "initrd_bytes": initrd_size,
    }
    if not ok:
        result["error"] = diagnose(console, qemu_stderr, decoded, rc, timed_out, opts.timeout)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    what = ((f"image {opts.image}, " if opts.image != "kvm" else "")
            + f"kernel {opts.kernel}, QEMU {opts.qemu}, -cpu {opts.cpu}"
            + (f", {opts.append}" if opts.append else ""))
    if not ok:
        print(f"testbed: {what}: FAILED after {wall:.1f} s -> {out}", flush=True)
        raise Failure(f"{what}: {result['error']} (see {out}/console.log)")
    print(f"testbed: {what}: job rc={decoded.rc}, wall {wall:.1f} s -> {out}", flush=True)
    return EXIT_OK


def parse_args(argv: list[str] | None) -> Options:
    ap = argparse.ArgumentParser(
        prog="run-in-guest.sh",
        description="Boot an arm64 KVM-capable guest under QEMU and run a job in it "
                    "(run contrib/testbed/prepare.sh first).")
    ap.add_argument("--image", choices=tuple(IMAGES), default="kvm",
                    help="guest root: kvm (busybox, Python; 1 GiB) or libvirt (trixie's libvirt 11.3, "
                         "QEMU 10.0, python3-libvirt; libvirtd started before the job; 3 GiB) "
                         "(default kvm)")
    ap.add_argument("--kernel", choices=KERNELS, default="6.12", help="guest kernel (default 6.12)")
    ap.add_argument("--qemu", choices=QEMUS, default="7.2",
                    help="7.2: the host's Debian 12 QEMU; 10.0: bookworm-backports' (default 7.2)")
    ap.add_argument("--cpu", default="neoverse-n1", help="any -cpu value (default neoverse-n1)")
    ap.add_argument("--append", default="", help="extra kernel command line, e.g. kvm-arm.mode=none")
    ap.add_argument("--timeout", type=float, default=120, help="seconds for the whole boot (default 120)")
    ap.add_argument("--script", help="busybox-sh script run as the job ('-': stdin; default: a short report)")
    ap.add_argument("--out", help="result directory (default: a new directory under $TMPDIR)")
    ap.add_argument("--with", dest="inner", action="append", default=[],
                    choices=[f"qemu-{s}" for s in INNER_QEMUS],
                    help="also put this into the guest: qemu-7.2 is bookworm's QEMU 7.2 for arm64 at "
                         "/opt/qemu-7.2/qemu-system-aarch64 (about 18 MB more to boot)")
    ap.add_argument("--in", dest="inputs", action="append", default=[], metavar="NAME=PATH",
                    help="copy the file PATH into the guest as /in/NAME (repeatable)")
    a = ap.parse_args(argv)
    if a.timeout <= 0:
        ap.error("--timeout must be positive")
    script = None
    if a.script == "-":
        script = sys.stdin.buffer.read()
    elif a.script is not None:
        try:
            script = Path(a.script).read_bytes()
        except OSError as exc:
            ap.error(f"--script: {exc.strerror}: {a.script}")
    files: dict[str, bytes] = {}
    for item in a.inputs:
        name, sep, path = item.partition("=")
        if not sep or not _INPUT_NAME.match(name) or not path:
            ap.error(f"--in {item}: expected NAME=PATH, NAME of letters, digits, '.', '_', '-'")
        try:
            files[name] = Path(path).read_bytes()
        except OSError as exc:
            ap.error(f"--in {item}: {exc.strerror}: {path}")
    inner = tuple(dict.fromkeys(w.removeprefix("qemu-") for w in a.inner))
    return Options(a.image, a.kernel, a.qemu, a.cpu, a.append, a.timeout, script,
                   Path(a.out) if a.out else None, inner, files)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        return run(opts)
    except Failure as exc:
        print(f"run-in-guest: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"run-in-guest: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
