"""The test bed's emulated hosts (contrib/testbed/hosts.txt) and the guest job
every boot runs: probe this host, then try-apply scenarios built from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTS_FILE = ROOT / "contrib" / "testbed" / "hosts.txt"
FIXTURES = ROOT / "tests" / "data" / "hosts"


@dataclass(frozen=True)
class Host:
    name: str
    kernel: str
    qemu: str
    cpu: str

    @property
    def fixture(self) -> Path:
        return FIXTURES / f"{self.name}-qemu{self.qemu}-linux{self.kernel}.xml"

    @property
    def id(self) -> str:
        return f"{self.name}-qemu{self.qemu}-linux{self.kernel}"


def hosts() -> list[Host]:
    out = []
    for line in HOSTS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, kernel, qemu, cpu = line.split()
            out.append(Host(name, kernel, qemu, cpu))
    return out


def guest_job(scenarios: bool = True, extra: str = "") -> str:
    """The busybox-sh job: probe into /out/host.xml (exit code in
    /out/probe.rc, seconds in /out/probe.seconds), then the scenarios."""
    job = """\
set -u
up() { cut -d' ' -f1 /proc/uptime; }
t0=$(up)
python3 -m libvirt_arm_cpu.helper probe --output /out/host.xml --quiet 2>/out/probe.stderr
echo $? > /out/probe.rc
t1=$(up)
echo "$t0 $t1" > /out/probe.seconds
"""
    if scenarios:
        script = (ROOT / "tests" / "kvm_guest_scenarios.py").read_text()
        job += ("cat > /tmp/scenarios.py <<'SCENARIOS_EOF'\n" + script + "SCENARIOS_EOF\n"
                "[ -f /out/host.xml ] && python3 /tmp/scenarios.py 2>/out/scenarios.stderr\n"
                "echo $? > /out/scenarios.rc\n")
    return job + extra
