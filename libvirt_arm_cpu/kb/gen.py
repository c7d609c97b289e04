"""Generate the register knowledge base in ``xml/`` from upstream facts.

Inputs (the only place they are read):

* Linux's ``arch/arm64/tools/sysreg``: registers, encodings, fields, enum
  value names, reserved bits;
* ``ftr_policies.json``: the kernel's per-field safety policy
  (``arch/arm64/kernel/cpufeature.c``);
* ``implementation_regs.json``: MIDR/MPIDR/REVIDR/AIDR layouts and the
  implementer/part tables (not in the sysreg file);
* ``hwcaps.json`` and ``feat_map.json``: feature names to field conditions;
* ``feature_dependencies.json``: rules between fields (SVE2 needs SVE, ...),
  each with its source.

Outputs, each validated against ``xml/schemas/kb.xsd`` before it replaces
the old file: ``registers.xml``, ``features.xml``, ``implementers.xml``,
``dependencies.xml``.
The output depends only on the inputs (no dates), so a test can regenerate
and compare byte for byte.

Usage::

    python -m libvirt_arm_cpu.kb.gen SYSREG [--data DIR] [--output-dir DIR] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.errors import Error, ParseError, UsageError
from libvirt_arm_cpu.fileio import atomic_write
from libvirt_arm_cpu.kb.registers import U64_MAX
from libvirt_arm_cpu.kb.registers import (ANY, EXACT, HIGHER_OR_ZERO_SAFE, HIGHER_SAFE, LOWER_SAFE, MUST_MATCH, NAMESPACE, Field, KnowledgeBase, Register, Reserved, in_feature_id_space, kvm_reg_id, writable_mask_index)
from libvirt_arm_cpu.kb.sysreg import RESERVED_KINDS, BitRange, SysregFile, parse_sysreg

__all__ = ["generate", "main"]

OUTPUTS = ("registers.xml", "features.xml", "implementers.xml", "dependencies.xml")

FTR_POLICY = {
    "FTR_LOWER_SAFE": LOWER_SAFE,
    "FTR_HIGHER_SAFE": HIGHER_SAFE,
    "FTR_HIGHER_OR_ZERO_SAFE": HIGHER_OR_ZERO_SAFE,
    "FTR_EXACT": EXACT,
}

# Where KVM's rule for a userspace write differs from cpufeature.c's policy.
# Source: Linux arch/arm64/kvm/sys_regs.c, kvm_arm64_ftr_safe_value(), which
# switches these three to FTR_LOWER_SAFE before calling arm64_ftr_safe_value();
# seen on real KVM: writing ID_AA64DFR0_EL1.DebugVer 8 -> 6 is accepted.
KVM_POLICY_OVERRIDES = {
    ("ID_AA64DFR0_EL1", "PMUVer"): LOWER_SAFE,
    ("ID_AA64DFR0_EL1", "DebugVer"): LOWER_SAFE,
    ("ID_DFR0_EL1", "PerfMon"): LOWER_SAFE,
}
# Lower bounds KVM's register-specific setters add on top of the safe-value
# rule: (minimum, whether 0 is also accepted).  Source: Linux
# arch/arm64/kvm/sys_regs.c set_id_aa64dfr0_el1() ("DebugVer is one of those
# awkward fields with a nonzero minimum safe value": < IMP is -EINVAL) and
# set_id_dfr0_el1() (CopDbg below Armv8 is -EINVAL; PerfMon must be 0 or at
# least PMUv3).  Seen on real KVM: DebugVer 6 -> 2 is refused with EINVAL.
# Also ID_AA64PFR0_EL1.EL0 and EL1 below IMP: refused (EINVAL) by Linux 7.3.4
# on the test bed, accepted by 6.12.117 (feature_dependencies.json states it
# as rule kvm.EL0-EL1-AArch64, from sys_regs.c); applied for every kernel,
# since a guest without EL0 or EL1 is no use and erring this way never
# calls a CPU runnable when a kernel would refuse it.
KVM_FIELD_LIMITS = {
    ("ID_AA64PFR0_EL1", "EL0"): (1, False),
    ("ID_AA64PFR0_EL1", "EL1"): (1, False),
    ("ID_AA64DFR0_EL1", "DebugVer"): (6, False),
    ("ID_DFR0_EL1", "CopDbg"): (6, False),
    ("ID_DFR0_EL1", "PerfMon"): (3, True),
}
# Registers KVM lets userspace set to any value its own setter accepts, not
# through the ID-register safe-value rule.  Source: Linux
# arch/arm64/kvm/sys_regs.c set_clidr(): any CLIDR_EL1 value without RES0
# bits, except one that claims no cache maintenance to the PoU (LoC == 0, or
# LoUIS == LoUU == 0) when CTR_EL0.IDC is 0 (EINVAL); that part is checked
# per register in rules.py.
KVM_ANY_REGISTERS = ("CLIDR_EL1",)
KVM_OVERRIDE_ORIGIN = ("Linux arch/arm64/kvm/sys_regs.c: kvm_arm64_ftr_safe_value() makes "
                       "ID_AA64DFR0_EL1.PMUVer, ID_AA64DFR0_EL1.DebugVer and "
                       "ID_DFR0_EL1.PerfMon FTR_LOWER_SAFE for userspace writes; "
                       "set_id_aa64dfr0_el1() and set_id_dfr0_el1() refuse DebugVer and "
                       "CopDbg below 6 and a PerfMon between 1 and 2; Linux 7.3 refuses "
                       "ID_AA64PFR0_EL1.EL0 and EL1 below 1 (seen on the test bed); set_clidr() "
                       "takes any CLIDR_EL1 value without RES0 bits that keeps the "
                       "cache-maintenance levels CTR_EL0.IDC needs")

# Registers the sysreg file lacks, from implementation_regs.json, and what
# kind of register each is for KVM (MIDR/REVIDR/AIDR become writable with
# KVM_CAP_ARM_WRITABLE_IMP_ID_REGS; MPIDR is per-vCPU topology).
IMPLEMENTATION_REGISTERS = {
    "MIDR_EL1": "implementation-id",
    "MPIDR_EL1": "affinity",
    "REVIDR_EL1": "implementation-id",
    "AIDR_EL1": "implementation-id",
}

SYSREG_KIND = {"Field": "field", "Enum": "enum", "UnsignedEnum": "unsigned-enum",
               "SignedEnum": "signed-enum"}


class GenError(Error):
    """The inputs disagree or lack something the knowledge base needs."""


@dataclass
class Inputs:
    """The files the knowledge base is generated from, read, with their digests."""

    sysreg_path: Path
    data_dir: Path
    sysreg: SysregFile
    json: dict[str, dict]
    sha256: dict[str, str]
    sysreg_origin: str


def _q(tag: str) -> str:
    return "{" + NAMESPACE + "}" + tag


def _sub(parent: ET.Element, tag: str, **attrs: object) -> ET.Element:
    return ET.SubElement(parent, _q(tag), {k.replace("_", "-"): _attr(v)
                                           for k, v in attrs.items() if v is not None})


def _attr(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read_json(data_dir: Path, name: str) -> tuple[dict, str]:
    path = data_dir / name
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror} (pass --data DIR holding "
                         f"{name})") from err
    try:
        return json.loads(raw), hashlib.sha256(raw).hexdigest()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        line = getattr(err, "lineno", None)
        raise ParseError(str(path), line, f"not valid JSON: {getattr(err, 'msg', err)}") from err


def read_inputs(sysreg_path: Path, data_dir: Path) -> Inputs:
    sysreg = parse_sysreg(str(sysreg_path))
    digests = {"sysreg": hashlib.sha256(sysreg_path.read_bytes()).hexdigest()}
    data = {}
    for key, name in (("ftr", "ftr_policies.json"), ("hwcaps", "hwcaps.json"),
                      ("feat", "feat_map.json"), ("impl", "implementation_regs.json"),
                      ("deps", "feature_dependencies.json")):
        data[key], digests[key] = _read_json(data_dir, name)
    origin = "Linux arch/arm64/tools/sysreg"
    source_note = sysreg_path.with_name(sysreg_path.name + ".SOURCE")
    if source_note.exists():
        text = source_note.read_text(encoding="utf-8", errors="replace")
        repo = re.search(r"^repository:\s*(\S+)", text, re.M)
        commit = re.search(r"^commit:\s*([0-9a-f]{7,40})", text, re.M)
        if repo and commit:
            origin += f" ({repo.group(1)}@{commit.group(1)})"
    return Inputs(sysreg_path, data_dir, sysreg, data, digests, origin)


# -- registers ---------------------------------------------------------------

@dataclass
class _Policy:
    """A field's cpufeature.c policy and safe value."""

    policy: str
    safe: int | None
    signed: bool


def _ftr_table(inputs: Inputs, reg: str) -> dict[str, dict] | None:
    entry = inputs.json["ftr"]["registers"].get(reg)
    if entry is None:
        return None
    return {f["field"].upper(): f for f in entry["fields"] if f.get("field")}


def _build_sysreg_register(inputs: Inputs, name: str, warn: Callable[[str], None]) -> Register:
    block = inputs.sysreg.registers[name]
    assert block.encoding is not None
    layout = inputs.sysreg.layout_of(block)
    ftr = _ftr_table(inputs, name)
    fields: list[Field] = []
    reserved: list[Reserved] = []
    used_ftr: set[str] = set()
    for rng in layout:
        if rng.kind in RESERVED_KINDS:
            reserved.append(Reserved(rng.kind.lower(), rng.msb, rng.lsb))
            continue
        assert rng.name is not None
        policy = _field_policy(inputs, name, rng, ftr, used_ftr, warn)
        fields.append(Field(
            register=name, name=rng.name, msb=rng.msb, lsb=rng.lsb,
            kind=SYSREG_KIND[rng.kind], signed=policy.signed, policy=policy.policy,
            safe=policy.safe,
            kvm_policy=ANY if name in KVM_ANY_REGISTERS else
            KVM_POLICY_OVERRIDES.get((name, rng.name)),
            values=tuple(sorted(rng.values)),
            kvm_min=KVM_FIELD_LIMITS.get((name, rng.name), (None, False))[0],
            kvm_zero_ok=KVM_FIELD_LIMITS.get((name, rng.name), (None, False))[1]))
    for key, entry in sorted((ftr or {}).items()):
        # cpufeature.c lists some RES1 bits (CTR_EL0[31]) as "fields"; the
        # sysreg file has them as Res1 already.
        if key not in used_ftr and not key.startswith("RES"):
            warn(f"ftr_policies.json: {name}.{entry['field']} has a policy but "
                 f"{inputs.sysreg_path} has no such field; policy left out")
    return Register(name, *block.encoding, kind="feature-id", fields=tuple(fields),
                    reserved=tuple(reserved))


def _field_policy(inputs: Inputs, reg: str, rng: BitRange, ftr: dict[str, dict] | None,
                  used: set[str], warn: Callable[[str], None]) -> _Policy:
    sysreg_signed = rng.kind == "SignedEnum"
    entry = (ftr or {}).get((rng.name or "").upper())
    if entry is None:
        # cpufeature.c treats a field missing from its table as strict RES0:
        # the host must present it unchanged.
        return _Policy(MUST_MATCH, None, sysreg_signed)
    used.add((rng.name or "").upper())
    if entry["shift"] != rng.lsb or entry["width"] != rng.width:
        raise GenError(f"{reg}.{rng.name}: sysreg says bits {rng.msb}:{rng.lsb} (line "
                       f"{rng.line}) but ftr_policies.json says shift {entry['shift']} "
                       f"width {entry['width']}")
    policy = FTR_POLICY.get(entry["type"])
    if policy is None:
        raise GenError(f"ftr_policies.json: {reg}.{rng.name} has unknown type {entry['type']}")
    ftr_signed = entry["sign"] == "FTR_SIGNED"
    if ftr_signed != sysreg_signed and rng.kind != "Field":
        warn(f"{reg}.{rng.name}: sysreg says {rng.kind} but cpufeature.c compares it as "
             f"{'signed' if ftr_signed else 'unsigned'}; using the kernel's rule")
    return _Policy(policy, int(entry["safe_val"]), ftr_signed)


def _build_implementation_register(inputs: Inputs, name: str) -> Register:
    spec = inputs.json["impl"]["registers"][name]
    enc = spec["encoding"]
    fields: list[Field] = []
    reserved: list[Reserved] = []
    for f in spec["fields"]:
        if f["name"] in ("RES0", "RES1"):
            reserved.append(Reserved(f["name"].lower(), f["msb"], f["lsb"]))
            continue
        fname = "IMPDEF" if f["name"] == "IMPLEMENTATION DEFINED" else f["name"]
        fields.append(Field(register=name, name=fname, msb=f["msb"], lsb=f["lsb"],
                            kind="field", signed=False, policy=MUST_MATCH, safe=None,
                            kvm_policy=None))
    return Register(name, enc["op0"], enc["op1"], enc["CRn"], enc["CRm"], enc["op2"],
                    kind=IMPLEMENTATION_REGISTERS[name], fields=tuple(fields),
                    reserved=tuple(reserved))


def build_registers(inputs: Inputs, warn: Callable[[str], None]) -> list[Register]:
    regs: list[Register] = []
    for name, block in inputs.sysreg.registers.items():
        if block.encoding is not None and in_feature_id_space(*block.encoding):
            regs.append(_build_sysreg_register(inputs, name, warn))
    present = {r.name for r in regs}
    for name in IMPLEMENTATION_REGISTERS:
        if name in present:
            continue  # a newer sysreg file may describe it itself; that wins
        regs.append(_build_implementation_register(inputs, name))
    for reg in regs:
        _check_coverage(reg)
    regs.sort(key=lambda r: (writable_mask_index(*r.encoding), r.name))
    return regs


def _check_coverage(reg: Register) -> None:
    seen = 0
    for mask in [f.mask for f in reg.fields] + [r.mask for r in reg.reserved]:
        if seen & mask:
            raise GenError(f"{reg.name}: overlapping bit ranges")
        seen |= mask
    if seen != U64_MAX:
        raise GenError(f"{reg.name}: bits {~seen & U64_MAX:#x} are not described")


def registers_element(inputs: Inputs, regs: list[Register]) -> ET.Element:
    root = ET.Element(_q("registers"))
    _header(root, inputs, "registers.xml")
    _source(root, "sysreg", inputs.sysreg_origin, inputs.sysreg_path.name, inputs.sha256["sysreg"])
    _source(root, "ftr", inputs.json["ftr"]["source"], "ftr_policies.json", inputs.sha256["ftr"])
    _source(root, "kvm", KVM_OVERRIDE_ORIGIN)
    _source(root, "impl", _impl_origin(inputs), "implementation_regs.json", inputs.sha256["impl"])
    for reg in regs:
        elem = _sub(root, "register", name=reg.name, op0=reg.op0, op1=reg.op1, crn=reg.crn,
                    crm=reg.crm, op2=reg.op2, kvm_id=f"{kvm_reg_id(*reg.encoding):#x}",
                    mask_index=reg.mask_index, kind=reg.kind,
                    source="impl" if reg.name in IMPLEMENTATION_REGISTERS
                    and reg.name not in inputs.sysreg.registers else "sysreg")
        items: list[Field | Reserved] = [*reg.fields, *reg.reserved]
        for item in sorted(items, key=lambda i: -i.msb):
            if isinstance(item, Reserved):
                _sub(elem, "reserved", kind=item.kind, msb=item.msb, lsb=item.lsb)
                continue
            f = _sub(elem, "field", name=item.name, msb=item.msb, lsb=item.lsb, kind=item.kind,
                     signed=item.signed, policy=item.policy,
                     safe=None if item.safe is None else item.safe,
                     kvm_policy=item.kvm_policy, kvm_min=item.kvm_min,
                     kvm_zero_ok=True if item.kvm_min is not None and item.kvm_zero_ok else None)
            for value, vname in item.values:
                _sub(f, "value", value=f"{value:#x}", name=vname)
    return root


def _impl_origin(inputs: Inputs) -> str:
    srcs = inputs.json["impl"].get("sources", {})
    picked = [srcs[k] for k in ("arm_arm_midr", "linux_cputype") if k in srcs]
    return "; ".join(picked) or "implementation_regs.json"


def _header(root: ET.Element, inputs: Inputs, name: str) -> None:
    root.set("generator", f"libvirt_arm_cpu.kb.gen {__version__}")
    root.append(ET.Comment(
        f" {name}: GENERATED FILE, DO NOT EDIT.\n"
        f"     Regenerate with: python -m libvirt_arm_cpu.kb.gen SYSREG\n"
        f"     (SYSREG: a Linux arch/arm64/tools/sysreg next to the JSON facts named in\n"
        f"     the source elements; see its help).  The facts are upstream's, each from\n"
        f"     the source it names; the format is libvirt-arm-cpu's (schemas/kb.xsd). "))


def _source(root: ET.Element, sid: str, origin: str, file: str | None = None,
            sha256: str | None = None) -> None:
    _sub(root, "source", id=sid, origin=origin, file=file, sha256=sha256)


# -- features ----------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """A field condition: lo <= order(value) <= hi (order: signed-aware)."""

    field: Field
    lo: int
    hi: int

    def element(self, parent: ET.Element) -> None:
        f = self.field
        full_hi = max(f.order(v) for v in range(f.max_value + 1))
        _sub(parent, "field", register=f.register, name=f.name, signed=f.signed,
             min=f.from_order(self.lo),
             max=None if self.hi == full_hi else f.from_order(self.hi))


@dataclass(frozen=True)
class Combine:
    """All or any of several conditions, as the feature data writes them."""

    op: str             # "all" or "any"
    terms: tuple[object, ...]


@dataclass(frozen=True)
class Ref:
    """A reference to another feature, as the feature data writes it."""

    name: str


class Unavailable(Exception):
    """A condition that ID registers cannot decide; the reason says why."""


def _range_for(field: Field, op: str, value: int) -> Range:
    """The Arm spec compares raw field values; turn ``raw OP value`` into one
    signed-aware interval.  Where the raw set wraps around (a signed field,
    e.g. ``FP < 15``), keep the run holding the highest values: the others are
    reserved encodings below "not implemented"."""
    tests = {">=": value.__le__, ">": value.__lt__, "==": value.__eq__,
             "!=": value.__ne__, "<": value.__gt__, "<=": value.__ge__}
    if op not in tests:
        raise GenError(f"unknown operator '{op}'")
    orders = sorted(field.order(v) for v in range(field.max_value + 1) if tests[op](v))
    if not orders:
        raise Unavailable(f"{field} {op} {value} can never hold")
    hi = orders[-1]
    lo = hi
    while lo - 1 in orders:
        lo -= 1
    return Range(field, lo, hi)


def _intersect(ranges: list[Range]) -> list[object]:
    """Merge ranges on the same field (FP >= 1 && FP < 15 -> one range)."""
    out: list[object] = []
    by_field: dict[str, Range] = {}
    for r in ranges:
        key = str(r.field)
        if key in by_field:
            prev = by_field[key]
            merged = Range(r.field, max(prev.lo, r.lo), min(prev.hi, r.hi))
            if merged.lo > merged.hi:
                raise Unavailable(f"{r.field}: conditions exclude each other")
            out[out.index(prev)] = merged
            by_field[key] = merged
        else:
            by_field[key] = r
            out.append(r)
    return out


class _ArmExpr:
    """Recursive-descent reader of the Arm spec's feature expressions:
    ``FEAT_X() && (REG_FIELD() >= 1 || REG_FIELD() == 0b10)``."""

    TOKEN = re.compile(r"\s*(?:(\|\||&&|[()]|>=|<=|==|!=|>|<)|([A-Za-z_][A-Za-z0-9_]*)\(\)"
                       r"|(0b[01]+|0x[0-9a-fA-F]+|\d+))")

    def __init__(self, name: str, text: str, resolve: Callable[[str], Field]) -> None:
        self.name = name
        self.text = text
        self.resolve = resolve
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = self.TOKEN.match(text, pos)
            if not m:
                if text[pos:].strip() == "":
                    break
                raise GenError(f"feat_map.json: {name}: cannot read '{text[pos:]}'")
            kind = "op" if m.group(1) else "call" if m.group(2) else "num"
            self.tokens.append((kind, m.group(m.lastindex or 0)))
            pos = m.end()
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise GenError(f"feat_map.json: {self.name}: expression ends early: {self.text}")
        self.pos += 1
        return tok

    def parse(self) -> object:
        tree = self.disjunction()
        extra = self.peek()
        if extra is not None:
            raise GenError(f"feat_map.json: {self.name}: unexpected '{extra[1]}'")
        return tree

    def disjunction(self) -> object:
        terms = [self.conjunction()]
        while self.peek() == ("op", "||"):
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else Combine("any", tuple(terms))

    def conjunction(self) -> object:
        terms = [self.atom()]
        while self.peek() == ("op", "&&"):
            self.take()
            terms.append(self.atom())
        return terms[0] if len(terms) == 1 else Combine("all", tuple(terms))

    def atom(self) -> object:
        kind, text = self.take()
        if (kind, text) == ("op", "("):
            inner = self.disjunction()
            if self.take() != ("op", ")"):
                raise GenError(f"feat_map.json: {self.name}: missing ')'")
            return inner
        if kind != "call":
            raise GenError(f"feat_map.json: {self.name}: unexpected '{text}'")
        nxt = self.peek()
        if nxt is None or nxt[0] != "op" or nxt[1] in ("&&", "||", "(", ")"):
            if not text.startswith("FEAT_"):
                raise GenError(f"feat_map.json: {self.name}: {text}() without a comparison")
            return Ref(text)
        op = self.take()[1]
        kind, num = self.take()
        if kind != "num":
            raise GenError(f"feat_map.json: {self.name}: {text}() {op} needs a number")
        return ("cmp", text, op, int(num, 0))


def _lower(tree: object, resolve: Callable[[str], Field]) -> object:
    """Resolve comparisons to Ranges and merge same-field conjunctions."""
    if isinstance(tree, tuple):
        _, name, op, value = tree
        return _range_for(resolve(name), op, value)
    if isinstance(tree, Combine):
        terms = [_lower(t, resolve) for t in tree.terms]
        if tree.op == "all":
            ranges = [t for t in terms if isinstance(t, Range)]
            others = [t for t in terms if not isinstance(t, Range)]
            terms = _intersect(ranges) + others
        return Combine(tree.op, tuple(terms))
    return tree


def _condition_element(parent: ET.Element, cond: object) -> None:
    if isinstance(cond, Range):
        cond.element(parent)
    elif isinstance(cond, Ref):
        _sub(parent, "feature", ref=cond.name)
    elif isinstance(cond, Combine):
        if len(cond.terms) == 1:
            _condition_element(parent, cond.terms[0])
            return
        group = _sub(parent, cond.op)
        for t in cond.terms:
            _condition_element(group, t)
    else:
        raise TypeError(cond)


def build_features(inputs: Inputs, kb: KnowledgeBase,
                   warn: Callable[[str], None]) -> ET.Element:
    root = ET.Element(_q("features"))
    _header(root, inputs, "features.xml")
    hw = inputs.json["hwcaps"]
    feat = inputs.json["feat"]
    _source(root, "hwcaps", hw["source"], "hwcaps.json", inputs.sha256["hwcaps"])
    _source(root, "feat", feat["sources"]["arm_spec_via_lelegard"], "feat_map.json",
            inputs.sha256["feat"])
    _source(root, "llvm", feat["sources"]["llvm_march_names"], "feat_map.json",
            inputs.sha256["feat"])

    def field_of(register: str, name: str) -> Field:
        try:
            reg = kb.register(register)
        except Error:
            raise Unavailable(f"needs {register}.{name}, and {register} is not a feature ID "
                              f"register (a KVM guest's ID registers cannot tell)") from None
        try:
            return reg.field(name)
        except Error:
            raise Unavailable(f"needs {register}.{name}, which {inputs.sysreg_path.name} "
                              f"does not describe") from None

    for entry in hw["hwcaps"]:
        kind = "hwcap" if entry["hwcap_type"] == "CAP_HWCAP" else "aarch32-hwcap"
        elem = _sub(root, "feature", name=entry["hwcap"], kind=kind, source="hwcaps")
        try:
            cond = _hwcap_condition(entry, field_of)
        except Unavailable as why:
            _sub(elem, "unavailable", reason=str(why))
            warn(f"hwcap {entry['hwcap']}: {why}")
            continue
        _condition_element(elem, cond)

    llvm: dict[str, str] = {}
    for feats, ext in feat["llvm_march_extension_names"].items():
        for f in feats.split(","):
            llvm.setdefault(f.strip(), ext.split(" ")[0])
    for name, spec in sorted(feat["arm_spec_via_lelegard"].items(), key=lambda kv: kv[0].upper()):
        elem = _sub(root, "feature", name=name, kind="feat", source="feat", llvm=llvm.get(name))
        terms = {f"{t['register']}_{t['field']}": t for t in spec.get("terms", [])}

        def resolve(call: str) -> Field:
            t = terms.get(call)
            if t is None:
                raise GenError(f"feat_map.json: {name}: {call}() has no term")
            return field_of(t["register"], t.get("linux_field") or t["field"])

        try:
            cond = _lower(_ArmExpr(name, spec["expression"], resolve).parse(), resolve)
        except Unavailable as why:
            _sub(elem, "unavailable", reason=str(why))
            continue
        _condition_element(elem, cond)
    _check_refs(root)
    return root


def _hwcap_condition(entry: dict, field_of: Callable[[str, str], Field]) -> object:
    if "condition_any_of" in entry:
        return Combine("any", tuple(_min_range(field_of(c["register"], c["field"]),
                                               c["min_value"])
                                    for c in entry["condition_any_of"]))
    if "condition" in entry:
        # e.g. "MVFR1_EL1.SIMDSP!=0 AND MVFR1_EL1.SIMDInt!=0"
        terms = []
        for part in entry["condition"].split(" AND "):
            m = re.fullmatch(r"\s*(\w+)\.(\w+)\s*(>=|==|!=)\s*(\w+)\s*", part)
            if not m:
                raise GenError(f"hwcaps.json: {entry['hwcap']}: cannot read '{part}'")
            terms.append(_range_for(field_of(m[1], m[2]), m[3], int(m[4], 0)))
        return Combine("all", tuple(terms))
    if "register" not in entry:
        raise Unavailable("not derived from an ID register")
    return _min_range(field_of(entry["register"], entry["field"]), entry["min_value"])


def _min_range(field: Field, minimum: int) -> Range:
    """Linux's has_user_cpuid_feature(): field >= min, signed-aware."""
    top = max(field.order(v) for v in range(field.max_value + 1))
    return Range(field, field.order(minimum), top)


def _check_refs(root: ET.Element) -> None:
    names = {f.get("name") for f in root.iter(_q("feature")) if f.get("name")}
    for ref in root.iter(_q("feature")):
        target = ref.get("ref")
        if target is not None and target not in names:
            raise GenError(f"feat_map.json: a feature refers to unknown {target}")


# -- implementers ------------------------------------------------------------

def build_implementers(inputs: Inputs) -> ET.Element:
    impl = inputs.json["impl"]
    root = ET.Element(_q("implementers"))
    _header(root, inputs, "implementers.xml")
    _source(root, "impl", _impl_origin(inputs), "implementation_regs.json",
            inputs.sha256["impl"])
    parts = impl.get("parts", {})
    for code, info in sorted(impl["implementers"].items(), key=lambda kv: int(kv[0], 16)):
        elem = _sub(root, "implementer", code=f"{int(code, 16):#04x}", name=info["name"])
        for num, part in sorted(parts.get(code, {}).items(), key=lambda kv: int(kv[0], 16)):
            _sub(elem, "part", number=f"{int(num, 16):#05x}", name=part["name"])
    return root


# -- dependencies ------------------------------------------------------------

# The JSON's comparison operators, spelled as XML attribute values.
DEPENDENCY_OPS = {"==": "eq", "!=": "ne", ">=": "ge", ">": "gt", "<=": "le", "<": "lt"}

# Kinds whose rules the consistency repair enforces.  llvm-implies rules are
# toolchain conventions Arm does not state (the JSON calls them advisory).
ENFORCED_KINDS = ("architecture", "kvm-behaviour", "qemu-check")


def _dependency_condition(parent: ET.Element, cond: dict, kb: KnowledgeBase, rule: str) -> None:
    for combinator in ("all", "any"):
        if combinator in cond:
            group = _sub(parent, combinator)
            for term in cond[combinator]:
                _dependency_condition(group, term, kb, rule)
            return
    if "not" in cond:
        _dependency_condition(_sub(parent, "not"), cond["not"], kb, rule)
        return
    if cond.get("true") is True:
        _sub(parent, "always")
        return
    try:
        op = DEPENDENCY_OPS[cond["op"]]
        targets = [(cond["reg"], cond["field"])]
        if "ref" in cond:
            targets.append((cond["ref"]["reg"], cond["ref"]["field"]))
        for reg, name in targets:
            register = kb.register(reg)
            if name != "*":
                register.field(name)
    except KeyError as err:
        raise GenError(f"feature_dependencies.json: rule {rule}: condition lacks {err}") from None
    except Error as err:
        raise GenError(f"feature_dependencies.json: rule {rule}: {err}") from None
    if "ref" in cond:
        _sub(parent, "test", register=cond["reg"], field=cond["field"], op=op,
             ref_register=cond["ref"]["reg"], ref_field=cond["ref"]["field"],
             signed=True if cond.get("signed") else None)
    else:
        _sub(parent, "test", register=cond["reg"], field=cond["field"], op=op,
             value=int(cond["value"]), signed=True if cond.get("signed") else None)


def build_dependencies(inputs: Inputs, kb: KnowledgeBase) -> ET.Element:
    deps = inputs.json["deps"]
    root = ET.Element(_q("dependencies"))
    _header(root, inputs, "dependencies.xml")
    _source(root, "deps", f"{len(deps['rules'])} rules between ID register fields, each "
            f"naming its upstream origin (the ids below)", "feature_dependencies.json",
            inputs.sha256["deps"])
    for sid, info in sorted(deps.get("sources", {}).items()):
        if isinstance(info, dict):
            where = info.get("where", "")
            origin = "; ".join(filter(None, [info.get("what", ""),
                                             where if isinstance(where, str) else "; ".join(where)]))
        else:
            origin = "; ".join(info) if isinstance(info, list) else str(info)
        _source(root, re.sub(r"[^A-Za-z0-9_.-]", "_", sid), origin or sid)
    seen = set()
    for rule in deps["rules"]:
        rid = rule["id"]
        if rid in seen:
            raise GenError(f"feature_dependencies.json: rule {rid} appears twice")
        seen.add(rid)
        feat = rule.get("feat")
        elem = _sub(root, "rule", id=rid, kind=rule["kind"], subkind=rule.get("subkind"),
                    confidence=rule["confidence"], enforced=rule["kind"] in ENFORCED_KINDS,
                    feat=" ".join(feat) if isinstance(feat, list) else feat,
                    requires=rule.get("requires"))
        _dependency_condition(_sub(elem, "if"), rule["if"], kb, rid)
        then = _sub(elem, "then")
        for term in rule["then"]:
            _dependency_condition(then, term, kb, rid)
        _sub(elem, "origin").text = rule["source"]
        for also in rule.get("also_sources", []):
            _sub(elem, "also").text = also
        if rule.get("note"):
            _sub(elem, "note").text = rule["note"]
    return root


# -- driver ------------------------------------------------------------------

def serialize(root: ET.Element) -> bytes:
    ET.register_namespace("", NAMESPACE)
    ET.indent(root, space="  ")
    return (b"<?xml version='1.0' encoding='UTF-8'?>\n"
            + ET.tostring(root, encoding="unicode").encode("utf-8") + b"\n")


def generate(sysreg_path: Path, data_dir: Path,
             warn: Callable[[str], None] = lambda _msg: None) -> dict[str, bytes]:
    """Build the three knowledge-base files; returns file name -> content.

    :raise ParseError: when the sysreg or a JSON file does not parse.
    :raise GenError: when the inputs contradict each other.
    """
    inputs = read_inputs(sysreg_path, data_dir)
    regs = build_registers(inputs, warn)
    kb = KnowledgeBase(regs)
    return {
        "registers.xml": serialize(registers_element(inputs, regs)),
        "features.xml": serialize(build_features(inputs, kb, warn)),
        "implementers.xml": serialize(build_implementers(inputs)),
        "dependencies.xml": serialize(build_dependencies(inputs, kb)),
    }


def validate(files: dict[str, bytes], schema: Path) -> None:
    """Check each generated file against kb.xsd (xmlschema: off the hook path)."""
    import xmlschema  # slow import; only the generator and tests need it

    xsd = xmlschema.XMLSchema(str(schema))
    for name, data in files.items():
        errors = list(xsd.iter_errors(data.decode("utf-8")))
        if errors:
            raise GenError(f"{name}: generated file does not match {schema.name}: "
                           f"{errors[0].reason} at {errors[0].path}")


def main(argv: Iterable[str] | None = None) -> int:
    default_out = Path(__file__).resolve().parent.parent / "xml"
    parser = argparse.ArgumentParser(
        prog="python -m libvirt_arm_cpu.kb.gen",
        description="Regenerate the register knowledge base (registers.xml, features.xml, "
                    "implementers.xml, dependencies.xml) from Linux's arch/arm64/tools/sysreg "
                    "and the JSON facts (ftr_policies.json, hwcaps.json, feat_map.json, "
                    "implementation_regs.json, feature_dependencies.json).")
    parser.add_argument("sysreg", type=Path, help="path to a Linux arch/arm64/tools/sysreg")
    parser.add_argument("--data", type=Path, default=None,
                        help="directory holding the JSON facts (default: the sysreg file's)")
    parser.add_argument("--output-dir", "-o", type=Path, default=default_out,
                        help=f"where to write (default: {default_out})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files in --output-dir are stale")
    parser.add_argument("--quiet", "-q", action="store_true", help="no warnings")
    args = parser.parse_args(list(argv) if argv is not None else None)

    def warn(msg: str) -> None:
        if not args.quiet:
            print(f"kbgen: warning: {msg}", file=sys.stderr)

    try:
        files = generate(args.sysreg, args.data or args.sysreg.parent, warn)
        validate(files, args.output_dir / "schemas" / "kb.xsd")
        if args.check:
            stale = [n for n, d in files.items()
                     if not (args.output_dir / n).exists() or (args.output_dir / n).read_bytes() != d]
            if stale:
                print(f"kbgen: stale: {', '.join(stale)} (regenerate with the same command "
                      f"without --check)", file=sys.stderr)
                return 1
            print(f"kbgen: {args.output_dir} is up to date")
            return 0
        for name, data in files.items():
            atomic_write(args.output_dir / name, data)
        print(f"kbgen: wrote {', '.join(files)} to {args.output_dir}")
        return 0
    except Error as err:
        print(f"kbgen: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
