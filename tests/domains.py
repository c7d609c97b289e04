"""Domain XMLs, saved CPU models and host profiles for the translate, hook
and libvirt tests.

Host profiles are the test bed's captured fixtures (tests/data/hosts).  No
released QEMU takes SYSREG_* properties yet, so the fixtures all say "no";
``with_sysreg`` makes the copy a host with the QEMU series would have, the
same profile otherwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.formats import profile as profile_mod
from libvirt_arm_cpu.engine.baseline import baseline
from libvirt_arm_cpu.formats.cpumodel import to_xml
from libvirt_arm_cpu.model import CpuModel

from .kvm_hosts import FIXTURES

MAX73 = FIXTURES / "max-qemu10.0-linux7.3.xml"
N1_612 = FIXTURES / "neoverse-n1-qemu7.2-linux6.12.xml"
N1_73 = FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml"
V1_73 = FIXTURES / "neoverse-v1-qemu10.0-linux7.3.xml"


def with_sysreg(src: Path, dest: Path, hostname: str | None = None) -> Path:
    """A copy of the profile whose QEMU takes SYSREG_* properties."""
    p = profile_mod.read_profile(str(src))
    q = dataclasses.replace(p.qemu, status="found", sysreg="yes",
                            version=p.qemu.version or "10.2.50 (SYSREG series)",
                            path=p.qemu.path or "/usr/bin/qemu-system-aarch64")
    p = dataclasses.replace(p, qemu=q, hostname=hostname or p.hostname)
    profile_mod.write_profile(p, str(dest))
    return dest


def without_loader(src: Path, dest: Path, hostname: str | None = None) -> Path:
    """A copy of the profile of a host without the ID register loader (and
    whose QEMU lacks SYSREG_*, as every captured one): only its own CPU runs."""
    p = profile_mod.read_profile(str(src))
    p = dataclasses.replace(p, loader=profile_mod.LoaderInfo("missing", p.loader.path),
                            hostname=hostname or p.hostname)
    profile_mod.write_profile(p, str(dest))
    return dest


def with_loader(src: Path, dest: Path, hostname: str, path: Path) -> Path:
    """A copy of the profile of a host with the loader installed at *path*
    (QEMU without SYSREG_*, as every captured one)."""
    p = profile_mod.read_profile(str(src))
    p = dataclasses.replace(p, loader=profile_mod.LoaderInfo("found", str(path)),
                            hostname=hostname)
    profile_mod.write_profile(p, str(dest))
    return dest


def save_model(models_dir: Path, *profiles: Path) -> str:
    """cpu-baseline --save of the given hosts; returns the model's name."""
    kb = kb_load.registers()
    models = [CpuModel.from_profile(profile_mod.read_profile(str(p)), kb, p.stem)
              for p in profiles]
    result = baseline(models, kb, kb_load.dependencies())
    assert result.ok, result.conflicts
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{result.model.name}.xml").write_bytes(to_xml(result.model, []))
    return result.model.name


def domain_xml(name: str = "lac-test-g1", cpu: str = "", virt: str = "kvm",
               devices: str = "", extra: str = "") -> str:
    return f"""<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='aarch64' machine='virt'>hvm</type>
  </os>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>{devices}
  </devices>{extra}
</domain>
"""


def custom_cpu(model: str, *features: tuple[str, str] | tuple[str, str, str],
               topology: bool = True) -> str:
    feats = "".join(f"\n    <feature policy='{f[0]}' name='{f[1]}'"
                    + (f" value='{f[2]}'" if len(f) > 2 else "") + "/>" for f in features)
    topo = "\n    <topology sockets='1' dies='1' cores='1' threads='1'/>" if topology else ""
    return (f"<cpu mode='custom' match='exact' check='partial'>\n"
            f"    <model fallback='forbid'>{model}</model>{feats}{topo}\n  </cpu>")


def parity_lab(tmp: Path):
    """A saved model of the max CPU and three hosts whose QEMU takes
    SYSREG_* (the libvirt-parity tests of the API and the commands)."""
    models = tmp / "models"
    model = save_model(models, MAX73)
    hosts = {"max": with_sysreg(MAX73, tmp / "host-max.xml", "host-max"),
             "n1": with_sysreg(N1_73, tmp / "host-n1.xml", "host-n1"),
             "v1": with_sysreg(V1_73, tmp / "host-v1.xml", "host-v1")}
    return type("Lab", (), {"tmp": tmp, "models": models, "model": model, "hosts": hosts})
