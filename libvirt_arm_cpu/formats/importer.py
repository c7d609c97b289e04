"""Host profiles for hosts without the helper: from register dumps.

Two formats are read:

* text dumps, one register a line (``NAME=VALUE``, ``NAME VALUE``, ``#``
  comments; see :mod:`libvirt_arm_cpu.formats.dump`);
* Firecracker's ``cpu-template-helper`` output: ``template dump`` JSON
  (``reg_modifiers``: KVM register ids with ``0b`` bitmaps) and
  ``fingerprint dump`` JSON (the same under ``guest_cpu_config``, plus
  ``kernel_version``).  Every bit must be given: a template with ``x`` bits
  is not a dump.

A dump has values but no writable masks; the caller chooses: none (nothing
may change), another profile's (a probed host with the same kernel), or
every field the knowledge base has a kernel policy for (an assumption).
"""

from __future__ import annotations

import datetime
import hashlib
import json

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.formats.dump import parse_dump
from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.model import Fingerprint, HostProfile, ProfileRegister, QemuInfo, CpuIdentity
from libvirt_arm_cpu.kb.registers import (MUST_MATCH, KnowledgeBase, encoding_of_kvm_id, generic_name, in_feature_id_space, kvm_reg_id, writable_mask_index)

__all__ = ["parse_values", "import_profile", "all_known_masks"]


def _firecracker(doc: dict, path: str, kb: KnowledgeBase) -> tuple[dict[str, int], str]:
    config = doc.get("guest_cpu_config", doc)
    mods = config.get("reg_modifiers") if isinstance(config, dict) else None
    if not isinstance(mods, list):
        raise ParseError(path, None, "JSON without reg_modifiers: not a Firecracker "
                         "cpu-template-helper dump or fingerprint")
    values = {}
    for i, mod in enumerate(mods):
        try:
            reg_id = int(str(mod["addr"]), 0)
            bitmap = str(mod["bitmap"])
        except (KeyError, TypeError, ValueError):
            raise ParseError(path, None, f"reg_modifiers[{i}]: needs 'addr' and 'bitmap'") \
                from None
        enc = encoding_of_kvm_id(reg_id)
        if enc is None or not in_feature_id_space(*enc):
            continue        # not an ID register of the feature-ID space (core regs, timers)
        reg = kb.register(generic_name(*enc))
        bits = bitmap[2:].replace("_", "") if bitmap.startswith("0b") else None
        if bits is None or not set(bits) <= {"0", "1", "x"} or len(bits) > 64:
            raise ParseError(path, None, f"reg_modifiers[{i}] ({reg.name}): bitmap "
                             f"'{bitmap[:20]}' is not a 0b... bit string")
        bits = bits.rjust(64, "x")
        if "x" in bits:
            raise ParseError(path, None, f"{reg.name}: bit {63 - bits.index('x')} is 'x' "
                             f"(keep host value): a template, not a dump of values")
        if reg.name in values:
            raise ParseError(path, None, f"reg_modifiers[{i}]: {reg.name} ({reg_id:#x}) "
                             f"appears twice")
        values[reg.name] = int(bits, 2)
    kernel = doc.get("kernel_version", "") if isinstance(doc.get("kernel_version"), str) else ""
    return values, kernel


def parse_values(data: bytes, path: str, kb: KnowledgeBase) -> tuple[dict[str, int], str]:
    """Register values from a dump, and the kernel version when it says.

    :raise ParseError: naming the file (and line, for text dumps).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(path, None, "not a text file (invalid UTF-8)") from None
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ParseError(path, err.lineno, f"not valid JSON: {err.msg}") from None
        except RecursionError:
            raise ParseError(path, None, "JSON nested too deep: not a Firecracker dump") \
                from None
        if not isinstance(doc, dict):
            raise ParseError(path, None, "JSON is not an object")
        return _firecracker(doc, path, kb)
    return {e.register.name: e.value.raw for e in parse_dump(text, kb, path)}, ""


def all_known_masks(kb: KnowledgeBase) -> dict[str, int]:
    """Every field the kernel has a policy for, as if writable (an assumption)."""
    out = {}
    for reg in kb:
        if reg.kind == "feature-id":
            mask = 0
            for f in reg.fields:
                if f.effective_policy != MUST_MATCH:
                    mask |= f.mask
            out[reg.name] = mask
    return out


def import_profile(values: dict[str, int], kb: KnowledgeBase, source: str, data: bytes,
                   masks: dict[str, int | None], hostname: str, kernel: str = "") -> HostProfile:
    """A host profile from imported values (registers the dump lacks are
    recorded absent) and the chosen masks."""
    registers = []
    for op1 in (0, 1, 3):
        for crm in range(8):
            for op2 in range(8):
                enc = (3, op1, 0, crm, op2)
                reg = kb.by_encoding(*enc)
                name = reg.name if reg else generic_name(*enc)
                registers.append(ProfileRegister(name, enc, kvm_reg_id(*enc),
                                                 writable_mask_index(*enc), values.get(name),
                                                 masks.get(name, 0)))
    midr = values.get("MIDR_EL1")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    known = all(m is not None for m in masks.values())
    return HostProfile(
        hostname=hostname, machine="aarch64", kernel_release=kernel or "unknown",
        kernel_version="", probed_at=now.isoformat().replace("+00:00", "Z"),
        tool_version=__version__,
        qemu=QemuInfo("missing", detail=f"imported from {source}: QEMU unknown"),
        vcpu_features=[], capabilities={},
        cpus=[CpuIdentity(0, midr, values.get("REVIDR_EL1"))] if midr is not None else [],
        registers=registers, masks_known=known,
        fingerprint=Fingerprint({"imported-from": source,
                                 "sha256": hashlib.sha256(data).hexdigest()}))
