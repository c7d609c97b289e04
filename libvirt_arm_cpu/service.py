"""The service layer: what the CLI, the Python API and the hook do alike.

Each edge (``cli``/``commands``, ``api``, ``hook``) parses its own input and
reports in its own way; the work between, loading and checking inputs,
finding this host's profile and saved models, translating and validating a
domain, is here once.  It sits on the pure engine (baseline, compare,
translate) and the formats (profile, cpumodel, domain) and does the I/O they
must not.
"""

from __future__ import annotations

import os
from dataclasses import replace

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu import settings as settings_mod
from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.formats.domain import LOADER_ENV, Domain
from libvirt_arm_cpu.model import Translation
from libvirt_arm_cpu.errors import STDIN, ParseError, UsageError, WrongKind, path_label
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.formats.fleet import check_identity, profile_key
from libvirt_arm_cpu.formats.profile import from_xml as profile_from_xml, read_profile
from libvirt_arm_cpu.model import HostProfile
from libvirt_arm_cpu.formats.profile import validate as validate_profile
from libvirt_arm_cpu.formats.kinds import CPU_MODEL, HOST_PROFILE, REGISTER_DUMP, kind_of, wrong_kind
from libvirt_arm_cpu.engine.translate import Resolution, resolve
from libvirt_arm_cpu.engine.validate import CpuMismatch, Validation, validate_translation
from libvirt_arm_cpu.host.hostcache import configured_profile

__all__ = ["host_profile", "find_model", "load_inputs", "load_input", "check_against_kb",
           "resolve_model", "resolve_cpu", "model_features", "parse_domain", "translate_domain",
           "validate_translated", "input_label"]


def input_label(path: str) -> str:
    """The name a host or model read from *path* goes by in messages: the
    file's name without directory and extension, ``<stdin>`` for ``-``."""
    return STDIN if path == "-" else os.path.splitext(os.path.basename(path))[0]


# -- hosts and models ----------------------------------------------------------

def host_profile(path: str | None) -> HostProfile:
    """--host PROFILE, else the settings' profile (this host's cache,
    probed again when stale, unless the settings say never)."""
    if path:
        return read_profile(path)
    return configured_profile(settings_mod.load())   # host.hostcache


def find_model(name: str) -> CpuModel:
    return modelstore.find(name)


def expand_paths(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".xml"))
            if not found:
                raise UsageError(f"{p}: no *.xml host profiles in this directory")
            out.extend(found)
        else:
            out.append(p)
    return out


def load_inputs(paths: list[str], kb: registers.KnowledgeBase, validate: bool = False
                ) -> list[tuple[str, CpuModel, HostProfile | None]]:
    """Profiles and saved models, each with a label.  Profiles with the same
    content (a fleet's many hosts of one CPU) are parsed once (see
    :mod:`libvirt_arm_cpu.formats.fleet`).  Every profile goes through the
    reader's own checks (the safe XML reader, every value and name, the
    knowledge base); *validate* adds the schema (``--validate``: 30 ms a
    distinct profile, the probe validated each when it wrote it)."""
    seen: dict[bytes, tuple[CpuModel, HostProfile]] = {}
    out = []
    for path in expand_paths(paths):
        label = input_label(path)
        out.append((label, *load_input(read_input(path), path, label, kb, seen, validate)))
    return out


def load_input(data: bytes, path: str, label: str, kb: registers.KnowledgeBase,
               seen: dict[bytes, tuple[CpuModel, HostProfile]] | None = None,
               validate: bool = True) -> tuple[CpuModel, HostProfile | None]:
    """One input already read: a host profile (validated, checked against
    the knowledge base; one already in *seen* only has its identity
    checked) or a saved model (profile None)."""
    if b"<hostprofile" not in data[:400]:
        if kind_of(data) == REGISTER_DUMP:
            raise wrong_kind(path, REGISTER_DUMP, f"{HOST_PROFILE} or {CPU_MODEL}")
        return model_from_xml(data, path, kb_load.features()), None
    key = profile_key(data)
    if seen is not None and key is not None and key in seen:
        check_identity(data, path)
        model, p = seen[key]
        # the same model under this host's name: every part shared (baseline
        # groups inputs by identity first), none dropped
        return replace(model, hosts=(label,)), p
    if validate:
        validate_profile(data, path)
    p = profile_from_xml(data, path)
    if p.machine not in ("aarch64", "arm64"):
        raise ParseError(path, None, f"profile of a {p.machine} machine, not aarch64")
    check_against_kb(p, kb, path)
    model = CpuModel.from_profile(p, kb, label)
    if seen is not None and key is not None:
        seen[key] = (model, p)
    return model, p


def check_against_kb(p: HostProfile, kb: registers.KnowledgeBase, path: str) -> None:
    """A profile must agree with the knowledge base: known names at their
    encodings, and no RES1 bit clear (a garbled or foreign file otherwise).

    :raise ParseError: naming the file and register.
    """
    for r in p.registers:
        reg = kb.by_encoding(*r.encoding)
        expected = reg.name if reg else registers.generic_name(*r.encoding)
        if r.name != expected:
            raise ParseError(path, None, f"register {r.name} at encoding "
                             f"{registers.generic_name(*r.encoding)} is {expected} in the "
                             f"knowledge base")
        if reg is not None and r.value is not None:
            clear = reg.res1_mask & ~r.value
            if clear:
                raise ParseError(path, None, f"{r.name} = {r.value:#x} has RES1 bits {clear:#x} "
                                 f"clear: not a value a CPU reports")


def resolve_model(spec: str) -> tuple[str, CpuModel]:
    """A model file, or the name of a saved model (libvirt_arm_cpu.modelstore)."""
    if os.path.exists(spec) or spec == "-":
        return spec, model_from_xml(read_input(spec), spec, kb_load.features())
    if os.sep in spec or spec.endswith(".xml"):
        raise UsageError(f"{spec}: no such file (and a saved CPU model is named without a "
                         f"path)")
    return spec, modelstore.find(spec)


def resolve_cpu(spec: str, kb: registers.KnowledgeBase
                ) -> tuple[str, CpuModel, HostProfile | None]:
    """A model file, a saved model's name, or a host profile (which stands
    for a host-passthrough guest of that host): (label, model, profile)."""
    if os.path.exists(spec) or spec == "-":
        data = read_input(spec)
        if b"<hostprofile" in data[:400]:
            model, profile = load_input(data, spec, input_label(spec), kb)
            return spec, model, profile
        if kind_of(data) == REGISTER_DUMP:
            raise wrong_kind(spec, REGISTER_DUMP, f"{CPU_MODEL} or {HOST_PROFILE}")
        return spec, model_from_xml(data, spec, kb_load.features()), None
    source, model = resolve_model(spec)
    return source, model, None


def model_features(model: CpuModel, all_names: bool) -> list[str]:
    present = kb_load.features().present(model.values)
    return [f.key for f in present if all_names or f.kind == "hwcap"]


# -- domains -------------------------------------------------------------------

def parse_domain(data: bytes, source: str) -> Domain:
    """A domain XML; a host profile, CPU model or register dump given
    instead is named as what it is.

    :raise WrongKind: for those; :raise ParseError: when it is not a domain.
    """
    try:
        return Domain.parse(data, source)
    except ParseError:
        found = kind_of(data)
        if found is None:
            raise
        raise WrongKind(source, found, "a domain XML",
                        "give a libvirt domain's XML ('virsh dumpxml NAME' prints one)") from None


def translate_domain(data: bytes, source: str, host: HostProfile,
                     method: str = "auto") -> tuple[Domain, Resolution]:
    dom = parse_domain(data, source)
    where = path_label(source)
    base = dom.original()
    cpu = base.cpu
    if cpu is None:
        raise UsageError(f"{where}: the domain has no <cpu>: nothing to translate")
    if dom.arch and dom.arch != "aarch64":
        raise UsageError(f"{where}: the domain is for {dom.arch}, not aarch64")
    taken = sorted(set(base.qemu_env()) & set(LOADER_ENV))
    if taken:
        raise UsageError(f"{where}: the domain already sets {taken[0]} in <qemu:commandline>: "
                         f"the loader method needs it (remove it, or keep the domain "
                         f"untranslated)")
    r = resolve(cpu, host, kb_load.registers(), kb_load.features(), kb_load.dependencies(), find_model,
                method)
    if base.pmu_off and "pmu" not in r.vcpu_off:
        raise CpuMismatch(f"{where}: the domain switches the PMU off (<features><pmu "
                          f"state='off'/>), but CPU model '{r.model}' has it: use a model "
                          f"with the PMU off, or remove <pmu state='off'/>")
    t = Translation("", r.values, r.properties, host.hostname, host.fingerprint.digest, r.model,
                    method=r.method, vcpu_off=r.vcpu_off,
                    firmware=r.firmware, reg_list=r.reg_list, platform=r.platform)
    return base.translated(t, r.env), r


def validate_translated(dom: Domain, host: HostProfile) -> Validation:
    """The hook's check of a translated domain against *host*."""
    t = dom.translation
    assert t is not None
    return validate_translation(t, dom.cpu_arguments(), dom.loader_env(), host,
                                kb_load.registers(), dom.gic_version, dom.sve_lengths)


