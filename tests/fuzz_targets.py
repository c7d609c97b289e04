"""Every parser of untrusted input, as the product calls it, with a real
input to mutate: shared by the bounded fuzzing run in the suite
(tests/test_hostile_input.py) and the long run by hand (bench/fuzz.py).

A target takes bytes and either returns or raises
``libvirt_arm_cpu.errors.Error`` (whose message must be one line); any other
exception is a defect.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.formats import cpumodel, hostcpu, importer, profile
from libvirt_arm_cpu.engine import loader
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu import service
from libvirt_arm_cpu.formats.domain import Domain

HERE = Path(__file__).resolve().parent
HOST = HERE / "data" / "hosts" / "neoverse-n1-qemu7.2-linux7.3.xml"
DOMAIN = HERE / "data" / "translate" / "custom-two-kernels-loader-out.xml"
DUMP = HERE.parent / "contrib" / "examples" / "qemu-neoverse-n1.regs"


@functools.lru_cache(maxsize=None)
def _kb() -> registers.KnowledgeBase:
    return kb_load.registers()


def _profile(data: bytes) -> None:
    profile.from_xml(data, "fuzz.xml")                 # the hook's way: no schema


def _profile_checked(data: bytes) -> None:
    service.load_input(data, "fuzz.xml", "fuzz", _kb())   # cpu-baseline's way


def _model(data: bytes) -> None:
    cpumodel.from_xml(data, "fuzz.xml")


def _domain(data: bytes) -> None:
    dom = Domain.parse(data, "fuzz.xml")
    if dom.translation is not None:                    # what the hook and dumpxml read
        dom.original().tostring()
        dom.loader_env()
        dom.cpu_arguments()


def _hostcpu(data: bytes) -> None:
    hostcpu.from_xml(data, "fuzz.xml")


def _dump(data: bytes) -> None:
    importer.parse_values(data, "fuzz.regs", _kb())    # text dumps and Firecracker JSON


def _loader_env(data: bytes) -> None:
    loader.parse_entries(data.decode("utf-8", errors="replace"), _kb())


TARGETS: dict[str, Callable[[bytes], None]] = {
    "profile": _profile, "profile-checked": _profile_checked, "model": _model,
    "domain": _domain, "hostcpu": _hostcpu, "dump": _dump, "firecracker": _dump,
    "loader-env": _loader_env,
}


def _model_seed() -> bytes:
    m = cpumodel.CpuModel.from_profile(profile.read_profile(str(HOST)), _kb())
    return cpumodel.to_xml(m, service.model_features(m, all_names=False))


def _hostcpu_seed() -> bytes:
    m = cpumodel.CpuModel.from_profile(profile.read_profile(str(HOST)), _kb())
    feats = "".join(f"<feature name='{f}'/>" for f in service.model_features(m, False))
    return (f"<capabilities><host><cpu><arch>aarch64</arch><model>Neoverse-N1</model>"
            f"<vendor>ARM</vendor>{feats}</cpu></host></capabilities>").encode()


def _firecracker_seed() -> bytes:
    values = profile.read_profile(str(HOST)).values()
    kb = _kb()
    mods = [{"addr": f"{kb.register(n).kvm_id:#x}", "bitmap": f"0b{v:064b}"}
            for n, v in sorted(values.items()) if kb.register(n).kind == "feature-id"]
    return json.dumps({"reg_modifiers": mods, "kernel_version": "6.12"}).encode()


def _loader_seed() -> bytes:
    p = profile.read_profile(str(HOST))
    m = cpumodel.CpuModel.from_profile(p, _kb())
    return loader.environment(m.values, _kb(), firmware_values=m.firmware,
                              hidden={0x603000000013C103})["LIBVIRT_ARM_CPU_ID_REGS"].encode()


SEEDS: dict[str, Callable[[], bytes]] = {
    "profile": HOST.read_bytes, "profile-checked": HOST.read_bytes, "model": _model_seed,
    "domain": DOMAIN.read_bytes, "hostcpu": _hostcpu_seed, "dump": DUMP.read_bytes,
    "firecracker": _firecracker_seed, "loader-env": _loader_seed,
}
