"""What a second-level guest reads, with the CPU model given to stock QEMU
through the loader: the ID-register payload (/testbed/idregs-aarch64.bin)
runs as a KVM guest of an emulated Neoverse-N1 host, under QEMU 7.2
(bookworm's, /opt/qemu-7.2) and QEMU 10.0 (the libvirt image's), on
kernels 6.12 and 7.3.  Every register the payload reads must equal the
model's value; with the model equal to the host, the host's; a value KVM
refuses must stop QEMU with the loader's one line, before the guest runs."""

from __future__ import annotations

import functools

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, compare
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.engine.validate import loader_environment

from .domains import FIXTURES
from .idregs import parse_idregs
from .testbed import run_in_guest

KB = kb_load.registers()
KERNELS = ("6.12", "7.3")
QEMUS = {"7.2": "/opt/qemu-7.2/qemu-system-aarch64", "10.0": "/usr/bin/qemu-system-aarch64"}
LOADER = "/usr/lib/aarch64-linux-gnu/qemu/libvirt-arm-cpu-loader.so"

JOB = r"""
set -u
for q in 7.2:/opt/qemu-7.2/qemu-system-aarch64 10.0:/usr/bin/qemu-system-aarch64; do
    v=${q%%:*} bin=${q#*:}
    for case in host lowered refused; do
        LD_PRELOAD=%(loader)s LIBVIRT_ARM_CPU_LOADER_DEBUG=1 \
        LIBVIRT_ARM_CPU_ID_REGS="$(cat /in/$case.env)" \
            testbed-run-idregs "$bin" /out/$case-$v.txt
        echo "$case-$v: $?"
    done
done
""" % {"loader": LOADER}


def models(kernel: str) -> dict[str, dict[str, int]]:
    """host: the host's own values; lowered: two writable lower-safe fields
    lowered (compare: superset); refused: one field raised above the host's."""
    profile = read_profile(str(FIXTURES / f"neoverse-n1-qemu7.2-linux{kernel}.xml"))
    host = CpuModel.from_profile(profile, KB)
    low = dict(host.values)
    for reg, name in (("ID_AA64ISAR0_EL1", "DP"), ("ID_AA64ISAR0_EL1", "RDM")):
        f = KB.field(reg, name)
        assert f.get(low[reg]) > 0
        low[reg] = f.put(low[reg], 0)
    lowered = CpuModel(low, host.writable)
    assert compare(lowered, profile, KB, check_qemu=False).result == "superset"
    high = dict(host.values)
    sha3 = KB.field("ID_AA64ISAR0_EL1", "SHA3")
    assert sha3.get(high["ID_AA64ISAR0_EL1"]) == 0          # Neoverse-N1 has no SHA3
    high["ID_AA64ISAR0_EL1"] = sha3.put(high["ID_AA64ISAR0_EL1"], 1)
    assert compare(CpuModel(high, host.writable), profile, KB,
                   check_qemu=False).result == INCOMPATIBLE
    return {"host": host.values, "lowered": low, "refused": high}, profile


@functools.lru_cache(maxsize=None)
def boot(kernel: str):
    cases, profile = models(kernel)
    files = {f"{name}.env": loader_environment(values, profile, KB)[
        "LIBVIRT_ARM_CPU_ID_REGS"].encode() for name, values in cases.items()}
    res = run_in_guest(kernel=kernel, qemu="7.2", cpu="neoverse-n1", image="libvirt",
                       inner_qemu=("7.2",), script=JOB, files=files, timeout=300)
    status = dict(line.split(": ") for line in res.stdout.splitlines() if ": " in line
                  and line.split(": ")[0].count("-") == 1)
    return res, status, cases, set(profile.values())


def _seen(res, name: str) -> dict[str, int]:
    return parse_idregs(res.files[f"{name}.txt"].decode())


@pytest.mark.kvm
@pytest.mark.parametrize("qemu", QEMUS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_the_guest_reads_the_lowered_model(kernel, qemu):
    res, status, cases, known = boot(kernel)
    assert status.get(f"lowered-{qemu}") == "0", res.stdout + res.stderr
    seen = _seen(res, f"lowered-{qemu}")
    model = cases["lowered"]
    # the registers KVM has for this host (the loader writes those), as read by MRS
    compared = [n for n in model if n in known and seen.get(n) is not None]
    assert "ID_AA64ISAR0_EL1" in compared and len(compared) >= 40
    wrong = {n: (f"{seen[n]:#x}", f"{model[n]:#x}") for n in compared if seen[n] != model[n]}
    assert not wrong, wrong
    assert KB.field("ID_AA64ISAR0_EL1", "DP").get(seen["ID_AA64ISAR0_EL1"]) == 0
    stderr = res.files[f"lowered-{qemu}.txt.stderr"].decode()
    # the guest's VM is the first; the registers go in after the vCPU's INIT
    assert "the guest's VM (the process's first)" in stderr, stderr
    assert "registers checked, " in stderr and "written" in stderr


@pytest.mark.kvm
@pytest.mark.parametrize("qemu", QEMUS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_a_model_equal_to_the_host_reads_as_the_host(kernel, qemu):
    res, status, cases, known = boot(kernel)
    assert status.get(f"host-{qemu}") == "0", res.stdout + res.stderr
    seen = _seen(res, f"host-{qemu}")
    host = cases["host"]
    wrong = {n: (f"{seen[n]:#x}", f"{host[n]:#x}") for n in host
             if n in known and seen.get(n) is not None and seen[n] != host[n]}
    assert not wrong, wrong
    assert "0 written" in res.files[f"host-{qemu}.txt.stderr"].decode()


@pytest.mark.kvm
@pytest.mark.parametrize("qemu", QEMUS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_a_value_kvm_refuses_stops_qemu_before_the_guest_runs(kernel, qemu):
    res, status, _cases, _known = boot(kernel)
    assert status.get(f"refused-{qemu}") == "1", res.stdout + res.stderr
    assert b"IDREGS" not in res.files[f"refused-{qemu}.txt"]
    lines = [x for x in res.files[f"refused-{qemu}.txt.stderr"].decode().splitlines()
             if x.startswith("libvirt-arm-cpu-loader: KVM refused")]
    assert len(lines) == 1, res.files[f"refused-{qemu}.txt.stderr"].decode()
    assert "ID_AA64ISAR0_EL1 (S3_0_C0_C6_0) = 0x" in lines[0] and "EINVAL" in lines[0]


OLD_KERNEL_JOB = r"""
set -u
python3 -m libvirt_arm_cpu.helper probe --output /tmp/host.xml >/out/probe.log 2>&1
python3 - <<'PY'
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.engine.validate import loader_environment
kb = kb_load.registers()
p = read_profile("/tmp/host.xml")
host = CpuModel.from_profile(p, kb).values
low = dict(host)
dp = kb.field("ID_AA64ISAR0_EL1", "DP")
low["ID_AA64ISAR0_EL1"] = dp.put(low["ID_AA64ISAR0_EL1"], 0)
for name, values in (("host", host), ("lowered", low)):
    open(f"/tmp/{name}.env", "w").write(loader_environment(values, p, kb)["LIBVIRT_ARM_CPU_ID_REGS"])
print("masks", "known" if p.masks_known else "unknown")
PY
for case in host lowered; do
    LD_PRELOAD=%(loader)s LIBVIRT_ARM_CPU_LOADER_DEBUG=1 \
    LIBVIRT_ARM_CPU_ID_REGS="$(cat /tmp/$case.env)" \
        testbed-run-idregs /usr/bin/qemu-system-aarch64 /out/$case-6.1.txt
    echo "$case-6.1: $?"
done
""" % {"loader": LOADER}


@pytest.mark.kvm
def test_before_linux_6_7_the_loader_gives_only_the_hosts_values():
    """Linux 6.1 has no capability 230: which fields userspace may change
    is unknown, so the loader lets the host's own values through (writing
    nothing) and refuses any other with one line, before the guest runs."""
    res = run_in_guest(kernel="6.1", qemu="7.2", cpu="neoverse-n1", image="libvirt",
                       script=OLD_KERNEL_JOB, timeout=300)
    assert "masks unknown" in res.stdout, res.stdout + res.stderr
    status = dict(line.split(": ") for line in res.stdout.splitlines() if "-6.1: " in line)
    assert status.get("host-6.1") == "0", res.stdout + res.stderr
    assert "0 written" in res.files["host-6.1.txt.stderr"].decode()
    assert status.get("lowered-6.1") == "1", res.stdout
    lines = [x for x in res.files["lowered-6.1.txt.stderr"].decode().splitlines()
             if x.startswith("libvirt-arm-cpu-loader: KVM refused")]
    assert len(lines) == 1 and "ID_AA64ISAR0_EL1" in lines[0], lines
    assert "no capability 230" in lines[0]
    assert b"IDREGS" not in res.files["lowered-6.1.txt"]
