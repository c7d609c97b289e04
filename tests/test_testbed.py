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
