"""The arm64 KVM test bed itself (contrib/testbed): real boots under QEMU.

Needs contrib/testbed/prepare.sh to have run (the test command does); a
missing cache fails with that hint rather than skipping.  Boots are few and
shared: the tests on the default guest read one memoized boot.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from .testbed import ROOT, TestbedError, run_in_guest

# Deterministic test data, made by the same code in the guest and here: every
# byte value, NULs, CR/LF, lines of 1 to 40000 characters, a fake marker line
# and UTF-8 XML, about 100 kB.
BLOB_PY = r'''
import hashlib

def blob():
    parts = [bytes(range(256)) * 40]
    for i in range(120):
        parts.append(hashlib.sha512(str(i).encode()).digest() * (i % 9 + 1))
    for n in (1, 77, 1000, 4096, 40000):
        parts.append(b"x" * n + b"\n")
    parts.append(b"\r\n\r\0\0TESTBED 0000000000000000 end stdout\n")
    parts.append("<cpu><model>Neoverse-N1 \u00e9\u00df\u2603</model></cpu>\n".encode() * 200)
    return b"".join(parts)
'''

MAIN_JOB = f"""
set -e
echo "kernel: $(uname -r)"
if [ -c /dev/kvm ]; then echo "kvm: character device"; fi
python3 -c "import libvirt_arm_cpu, xmlschema, xml.etree.ElementTree; print('imports: ok')"
python3 -m libvirt_arm_cpu.cli decode midr 0x414fd0c1
python3 - <<'EOF'
{BLOB_PY}
import os
open("/out/blob.bin", "wb").write(blob())
os.makedirs("/out/sub/dir")
open("/out/sub/dir/empty", "wb").close()
EOF
printf 'to stderr: \\303\\251\\n' >&2
exit 3
"""

REPORT_JOB = """
echo "kernel: $(uname -r)"
if [ -c /dev/kvm ]; then echo "kvm: character device"; else echo "kvm: absent"; fi
grep -m1 '^CPU part' /proc/cpuinfo
echo "cmdline: $(cat /proc/cmdline)"
"""


def blob() -> bytes:
    scope: dict = {}
    exec(BLOB_PY, scope)
    return scope["blob"]()


def lines(text: str) -> dict[str, str]:
    return dict(l.split(": ", 1) for l in text.splitlines() if ": " in l)


def main_boot():
    return run_in_guest(kernel="6.12", qemu="7.2", cpu="neoverse-n1", script=MAIN_JOB)


# --------------------------------------------------------------- real boots

@pytest.mark.kvm
def test_default_guest_has_kvm_and_kernel_6_12():
    res = main_boot()
    out = lines(res.stdout)
    assert out["kernel"].startswith("6.12."), res.stdout
    assert out["kvm"] == "character device", res.stdout
    assert res.info["kernel_release"] == out["kernel"]
    assert res.info["qemu_version"].startswith("7.2.")


@pytest.mark.kvm
def test_project_runs_in_the_guest():
    res = main_boot()
    assert "imports: ok" in res.stdout, res.stderr
    assert "Arm Neoverse-N1 r4p1" in res.stdout, res.stdout + res.stderr


@pytest.mark.kvm
def test_job_output_and_files_come_back_exact():
    res = main_boot()
    assert res.rc == 3                      # the job's own exit code, not a failure
    assert res.stderr_bytes == "to stderr: \u00e9\n".encode()
    data = blob()
    assert len(data) > 100_000
    got = res.files["blob.bin"]
    assert (len(got), hashlib.sha256(got).hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    assert res.files["sub/dir/empty"] == b""
    assert set(res.files) == {"blob.bin", "sub/dir/empty"}
    assert res.wall_s > 0


@pytest.mark.kvm
def test_kernel_7_3_boots():
    res = run_in_guest(kernel="7.3", qemu="7.2", cpu="neoverse-n1", script=REPORT_JOB)
    out = lines(res.stdout)
    assert out["kernel"].startswith("7.3."), res.stdout
    assert out["kvm"] == "character device"


@pytest.mark.kvm
def test_kernel_6_1_boots():
    res = run_in_guest(kernel="6.1", qemu="7.2", cpu="neoverse-n1", script=REPORT_JOB)
    out = lines(res.stdout)
    assert out["kernel"].startswith("6.1."), res.stdout
    assert out["kvm"] == "character device"


@pytest.mark.kvm
def test_qemu_10_with_neoverse_v1():
    res = run_in_guest(kernel="6.12", qemu="10.0", cpu="neoverse-v1", script=REPORT_JOB)
    assert res.info["qemu_version"].startswith("10.0.")
    out = lines(res.stdout)
    assert out["kernel"].startswith("6.12.")
    assert out["CPU part\t"] == "0xd40", res.stdout      # Neoverse-V1
    assert out["kvm"] == "character device"


@pytest.mark.kvm
def test_kvm_disabled_on_the_kernel_command_line():
    res = run_in_guest(kernel="6.12", qemu="7.2", cpu="neoverse-n1", script=REPORT_JOB,
                       append="kvm-arm.mode=none")
    out = lines(res.stdout)
    assert out["kernel"].startswith("6.12.")
    assert "kvm-arm.mode=none" in out["cmdline"].split()
    assert out["kvm"] == "absent"


@pytest.mark.kvm
def test_timeout_fails_and_stops_qemu():
    with pytest.raises(TestbedError, match=r"timed out after 4 s") as info:
        run_in_guest(script="sleep 600\n", timeout=4)
    initrd = next(a for a in _result(info.value.out_dir)["command"] if a.endswith("/initrd"))
    assert not [pid for pid in _qemu_pids() if initrd in _cmdline(pid)]


@pytest.mark.kvm
def test_missing_cache_says_run_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_TESTBED_CACHE", str(tmp_path / "empty"))
    with pytest.raises(TestbedError, match=r"run contrib/testbed/prepare\.sh"):
        run_in_guest(script="# never runs\n")


def _result(out_dir: Path) -> dict:
    import json
    return json.loads((out_dir / "result.json").read_text())


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _qemu_pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and "qemu-system-aarch64" in _cmdline(p)]


# --------------------------------------------------------------- the console decoder (no boot)

@functools.lru_cache(maxsize=None)
def _driver():
    spec = importlib.util.spec_from_file_location(
        "run_in_guest", ROOT / "contrib" / "testbed" / "run_in_guest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod        # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _console(token: str, payload: bytes) -> bytes:
    import base64
    import hashlib
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    m = f"TESTBED {token} ".encode()
    return (b"[    1.0] boot noise\r\n" + m + b"start 1.5 6.12.0\r\n"
            + m + b"begin stdout %d %s\r\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
            + b64 + m + b"end stdout\r\n" + m + b"rc 0\r\n" + m + b"done 2.0\r\n")


def test_decoder_takes_an_intact_stream():
    d = _driver().decode_console(_console("abc", b"\0\xff" * 5000 + b"\n"), "abc")
    assert d.done and d.rc == 0 and not d.errors
    assert d.streams["stdout"] == b"\0\xff" * 5000 + b"\n"


def test_decoder_rejects_a_mangled_stream():
    console = _console("abc", bytes(range(256)) * 10)
    i = console.index(b"\r\n", console.index(b"begin stdout")) + 10
    mangled = console[:i] + console[i + 1:]           # one character lost on the line
    d = _driver().decode_console(mangled, "abc")
    assert "stdout" not in d.streams
    assert re.search(r"stdout: .*mangled", d.errors[0])


def test_decoder_ignores_other_tokens():
    d = _driver().decode_console(_console("abc", b"x"), "other")
    assert not d.started and not d.streams and d.rc is None


# --------------------------------------------------------------- the pieces of the guest-visible proof

# A stand-in for LD_PRELOAD through the QEMU 7.2 wrapper: a constructor that
# says it was loaded (the loader itself is tested in tests/test_loader.py).
PRELOAD_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void hello(void) { fprintf(stderr, "preload: loaded\n"); }
"""

PIECES_JOB = r"""
set -u
echo "input: $(sha256sum /in/stream.bin | cut -d' ' -f1) $(wc -c </in/stream.bin)"
echo "midr: $(cat /sys/devices/system/cpu/cpu0/regs/identification/midr_el1)"
if [ -f /usr/lib/aarch64-linux-gnu/qemu/libvirt-arm-cpu-loader.so ]; then
    echo "loader: $(head -c 20 /usr/lib/aarch64-linux-gnu/qemu/libvirt-arm-cpu-loader.so | od -An -tx1 | tr -d ' \n')"
else
    echo "loader: absent"
fi
echo "qemu72: $(/opt/qemu-7.2/qemu-system-aarch64 --version | head -n 1)"
LD_PRELOAD=/in/preload.so /opt/qemu-7.2/qemu-system-aarch64 --version >/dev/null 2>/out/preload.stderr
testbed-run-idregs /opt/qemu-7.2/qemu-system-aarch64 /out/idregs.txt && echo "idregs: ok"
"""


def _cross_preload(tmp: Path) -> bytes:
    import subprocess
    (tmp / "p.c").write_text(PRELOAD_C)
    subprocess.run(["aarch64-linux-gnu-gcc", "-shared", "-fPIC", "-O2", "-o", str(tmp / "p.so"),
                    str(tmp / "p.c")], check=True)
    return (tmp / "p.so").read_bytes()


@functools.lru_cache(maxsize=None)
def _pieces_boot():
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        preload = _cross_preload(Path(tmp))
    files = {"stream.bin": blob() * 20, "preload.so": preload}     # about 2 MB in
    return run_in_guest(kernel="6.12", qemu="7.2", cpu="neoverse-n1", script=PIECES_JOB,
                        inner_qemu=("7.2",), files=files, timeout=180), files


@pytest.mark.kvm
def test_input_files_arrive_byte_exact():
    res, files = _pieces_boot()
    data = files["stream.bin"]
    assert lines(res.stdout)["input"] == f"{hashlib.sha256(data).hexdigest()} {len(data)}", res.stderr
    assert res.info["inputs"] == {"preload.so": len(files["preload.so"]), "stream.bin": len(data)}


@pytest.mark.kvm
def test_qemu_7_2_runs_in_the_guest_with_ld_preload():
    res, _files = _pieces_boot()
    assert lines(res.stdout)["qemu72"].startswith("QEMU emulator version 7.2."), res.stdout + res.stderr
    assert res.files["preload.stderr"] == b"preload: loaded\n"
    assert res.info["inner_qemu"] == ["7.2"]


@pytest.mark.kvm
def test_idregs_payload_in_a_nested_kvm_guest_reads_the_host():
    from .idregs import parse_idregs, undefined
    res, _files = _pieces_boot()
    assert "idregs: ok" in res.stdout, res.stderr
    text = res.files["idregs.txt"].decode()
    values = parse_idregs(text)
    # -cpu host under KVM: the nested guest sees the emulated host's MIDR.
    assert values["MIDR_EL1"] == int(lines(res.stdout)["midr"], 16)
    kb_names = [r.name for r in _kb()]
    assert sorted(set(values) | undefined(text)) == sorted(kb_names)
    assert "SMIDR_EL1" in undefined(text)        # no SME on Neoverse-N1: the MRS is UNDEFINED


@pytest.mark.kvm
def test_the_loader_is_in_the_guest_when_the_checkout_has_it():
    res, _files = _pieces_boot()
    got = lines(res.stdout)["loader"]
    if (ROOT / "loader" / "libvirt-arm-cpu-loader.c").exists():
        # ELF, 64-bit, little-endian, ET_DYN, EM_AARCH64 (0xb7)
        assert got.startswith("7f454c46020101") and got[32:40] == "0300b700", got
        assert res.info["loader"]
    else:
        assert got == "absent" and res.info["loader"] is None


# --------------------------------------------------------------- payload and builds (no test bed boot)

@functools.lru_cache(maxsize=None)
def _kb():
    from libvirt_arm_cpu.kb import load as kb_load
    return kb_load.registers()


def _payload_module():
    spec = importlib.util.spec_from_file_location(
        "idregs_payload", ROOT / "contrib" / "testbed" / "idregs_payload.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_payload_reads_every_register_of_the_knowledge_base():
    mod = _payload_module()
    asm = mod.assembly(mod.registers())
    for r in _kb():
        op0, op1, crn, crm, op2 = r.encoding
        assert f"mrs\tx0, s{op0}_{op1}_c{crn}_c{crm}_{op2}" in asm, r.name
        assert f'"{r.name}="' in asm


def test_payload_under_tcg_prints_qemus_neoverse_n1(tmp_path):
    """The payload itself, on the host's QEMU (TCG, EL1): QEMU's Neoverse-N1
    MIDR (target/arm/cpu64.c: 0x414fd0c1), undef for the absent SME/MTE
    registers, and a second block after a system reset."""
    import socket
    import subprocess
    import time
    from .idregs import blocks, parse_idregs, undefined
    payload, _key = _driver().build_idregs_payload(_driver().cache_dir())
    (tmp_path / "p.bin").write_bytes(payload)
    serial, qmp = tmp_path / "serial", tmp_path / "qmp"
    proc = subprocess.Popen(["qemu-system-aarch64", "-M", "virt,gic-version=3", "-cpu", "neoverse-n1",
                             "-nodefaults", "-display", "none", "-m", "64", "-serial", f"file:{serial}",
                             "-qmp", f"unix:{qmp},server=on,wait=off", "-kernel", str(tmp_path / "p.bin")])
    try:
        def wait_blocks(n):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if serial.exists() and len(blocks(serial.read_text())) >= n:
                    return
                time.sleep(0.05)
            raise AssertionError(serial.read_text() if serial.exists() else "no serial output")
        wait_blocks(1)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(qmp))
        f = s.makefile("rw")
        f.readline()
        for cmd in ('{"execute":"qmp_capabilities"}', '{"execute":"system_reset"}'):
            f.write(cmd + "\n")
            f.flush()
            f.readline()
        wait_blocks(2)
        s.close()
    finally:
        proc.kill()
        proc.wait()
    text = serial.read_text()
    assert parse_idregs(text, 0) == parse_idregs(text, 1)
    values = parse_idregs(text)
    assert values["MIDR_EL1"] == 0x414FD0C1
    assert {"SMIDR_EL1", "GMID_EL1"} <= undefined(text)
    assert values["ID_AA64PFR0_EL1"] & 0xF == 2     # EL0 AArch64 and AArch32: a value, not a default


def test_loader_build_is_cached_and_a_compile_error_is_one_line(tmp_path, monkeypatch):
    drv = _driver()
    src = tmp_path / "loader" / "libvirt-arm-cpu-loader.c"
    src.parent.mkdir()
    src.write_text("#include <dlfcn.h>\nint f(void) { return dlsym(RTLD_NEXT, \"ioctl\") != 0; }\n")
    monkeypatch.setattr(drv, "LOADER_SOURCE", src)
    monkeypatch.setattr(drv, "CHECKOUT", tmp_path)
    so, key = drv.build_loader(tmp_path / "cache")
    assert so[:4] == b"\x7fELF" and so[18] == 0xB7          # EM_AARCH64
    assert drv.build_loader(tmp_path / "cache") == (so, key)
    assert len(list((tmp_path / "cache" / "build").glob("*.so"))) == 1
    src.write_text("int f(void) { return undeclared; }\n")
    with pytest.raises(drv.Failure, match=r"loader/libvirt-arm-cpu-loader\.c does not build with "
                                          r"aarch64-linux-gnu-gcc: .*undeclared"):
        drv.build_loader(tmp_path / "cache")
    src.unlink()
    assert drv.build_loader(tmp_path / "cache") is None


def test_bad_input_file_names_are_refused():
    import subprocess
    proc = subprocess.run([str(ROOT / "contrib" / "testbed" / "run-in-guest.sh"), "--in", "a/b=/etc/hostname"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--in a/b=/etc/hostname: expected NAME=PATH" in proc.stderr
    proc = subprocess.run([str(ROOT / "contrib" / "testbed" / "run-in-guest.sh"), "--in", "x=/nonexistent"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "No such file or directory: /nonexistent" in proc.stderr
