"""Decoded register values as data, for both the text and the JSON output.

:func:`decode_registers` is pure: it takes register values and the feature
catalog and returns plain dicts and lists (the ``--json`` shape, documented
in README.md), which :func:`render_text` turns into the human table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb.features import FeatureCatalog
from libvirt_arm_cpu.kb.implementers import decode_midr
from libvirt_arm_cpu.kb.registers import RegisterValue

__all__ = ["decode_registers", "render_text"]


def _field_value_text(width: int, value: int) -> str:
    return str(value) if width <= 4 else f"{value:#x}"


def decode_registers(values: Sequence[RegisterValue], catalog: FeatureCatalog,
                     masks: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """The report for *values*; with *masks* (register -> writable mask, None
    when unknown) each field also says whether KVM lets userspace change it."""
    known = {v.register.name: v.raw for v in values}
    present = catalog.present(known)
    # field (REG.FIELD) -> the present features that field helps give
    giving: dict[str, list[str]] = {}
    for feat in present:
        for fld in feat.satisfied_by(known, catalog):
            giving.setdefault(str(fld), []).append(feat.key)
    registers = []
    for v in values:
        reg = v.register
        fields = []
        for fv in v.fields():
            f = fv.field
            fields.append({
                "name": f.name, "msb": f.msb, "lsb": f.lsb, "value": fv.value,
                "meaning": fv.meaning, "kind": f.kind, "signed": f.signed,
                "policy": f.effective_policy, "qemu_property": f.qemu_property,
                "features": giving.get(str(f), []),
            })
            if masks is not None:
                mask = masks.get(reg.name)
                fields[-1]["writable"] = None if mask is None else (mask & f.mask) == f.mask
        reserved = [{"kind": r.kind, "msb": r.msb, "lsb": r.lsb,
                     "value": (v.raw & r.mask) >> r.lsb} for r in reg.reserved]
        entry: dict[str, Any] = {
            "name": reg.name,
            "value": f"{v.raw:#018x}",
            "encoding": dict(zip(("op0", "op1", "crn", "crm", "op2"), reg.encoding)),
            "generic_name": reg.generic_name,
            "kvm_id": f"{reg.kvm_id:#x}",
            "mask_index": reg.mask_index,
            "kind": reg.kind,
            "fields": fields,
            "reserved": reserved,
            "warnings": _warnings(v),
        }
        if reg.name == "MIDR_EL1":
            entry["implementation"] = str(decode_midr(v.raw, kb_load.implementers(), kb_load.registers()))
        registers.append(entry)
    return {"registers": registers, "features": [f.key for f in present]}


def _warnings(v: RegisterValue) -> list[str]:
    out = []
    for r, bits in v.reserved_violations():
        want = "all ones" if r.kind == "res1" else "zero"
        out.append(f"{v.register.name}[{r.bits}] is {r.kind.upper()} but reads {bits:#x} "
                   f"(expected {want}): a newer architecture field this knowledge base "
                   f"does not know?")
    if v.unknown_bits:
        out.append(f"{v.register.name}: bits {v.unknown_bits:#x} are set outside any known "
                   f"field")
    if v.register.kind == "unallocated" and v.raw:
        out.append(f"{v.register.name} is an unallocated ID register slot (RAZ) but is "
                   f"not zero")
    return out


def render_text(report: dict[str, Any], show_features: bool = True) -> str:
    lines: list[str] = []
    for reg in report["registers"]:
        enc = reg["encoding"]
        lines.append(f"{reg['name']} = {reg['value']}")
        where = (f"  op0={enc['op0']} op1={enc['op1']} CRn={enc['crn']} CRm={enc['crm']} "
                 f"op2={enc['op2']} ({reg['generic_name']}), KVM id {reg['kvm_id']}")
        if reg["mask_index"] is not None:
            where += f", writable-mask index {reg['mask_index']}"
        lines.append(where)
        if "implementation" in reg:
            lines.append(f"  {reg['implementation']}")
        rows = []
        for f in reg["fields"]:
            bits = f"{f['msb']}:{f['lsb']}" if f["msb"] != f["lsb"] else str(f["msb"])
            value = _field_value_text(f["msb"] - f["lsb"] + 1, f["value"])
            meaning = f"({f['meaning']})" if f["meaning"] else ""
            if "writable" in f:     # host profiles: mark what KVM lets userspace change
                meaning = ("w " if f["writable"] else "  ") + meaning
            rows.append((f["msb"], f["name"], bits, value, meaning, " ".join(f["features"])))
        for r in reg["reserved"]:
            if r["kind"] in ("res0", "raz") and r["value"] == 0:
                continue
            if r["kind"] == "res1" and r["value"] == (1 << (r["msb"] - r["lsb"] + 1)) - 1:
                continue
            bits = f"{r['msb']}:{r['lsb']}" if r["msb"] != r["lsb"] else str(r["msb"])
            rows.append((r["msb"], r["kind"].upper(), bits, f"{r['value']:#x}", "", ""))
        rows.sort(key=lambda row: -row[0])
        if rows:
            w_name = max(len(r[1]) for r in rows)
            w_bits = max(len(r[2]) for r in rows) + 2
            w_val = max(len(r[3]) for r in rows)
            w_mean = max(len(r[4]) for r in rows)
            for _, name, bits, value, meaning, feats in rows:
                line = (f"  {name:<{w_name}}  {'[' + bits + ']':<{w_bits}} = {value:<{w_val}}  "
                        f"{meaning:<{w_mean}}  {feats}")
                lines.append(line.rstrip())
        for w in reg["warnings"]:
            lines.append(f"  warning: {w}")
        lines.append("")
    if show_features:
        feats = report["features"]
        lines.append(f"Features ({len(feats)}): " + (" ".join(feats) if feats else "none"))
    return "\n".join(lines).rstrip() + "\n"
