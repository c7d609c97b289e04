"""The host profile: what one host's KVM can present to a guest.

Written by ``libvirt-arm-cpu-helper probe`` and read by everything that
decides (baseline, compare, validation).  It holds the host's identity
(kernel, QEMU and whether it takes SYSREG_* properties, whether the ID
register loader is installed), the vCPU features the probe enabled and what
the ID registers read with each of them switched off, KVM capabilities,
every CPU's MIDR, and for each register of the feature-ID space its value and
writable mask.

The XML form (``xml/schemas/profile.xsd``, namespace
``urn:x-libvirt-arm-cpu:host:1``) is handled here and only here; it is read
through the one safe reader (:mod:`libvirt_arm_cpu.xmlsafe`).
Files are validated against the schema when written and, unless the caller
is on a latency budget (the hook), when read.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET

from libvirt_arm_cpu import namespaces
from libvirt_arm_cpu.kb.firmware import BY_NAME, FIRMWARE_REGISTERS
from libvirt_arm_cpu.errors import DataError, ParseError
from libvirt_arm_cpu.formats import platform as platform_xml
from libvirt_arm_cpu.formats.kinds import (CPU_MODEL, HOST_PROFILE, REGISTER_DUMP, element_name,
                                           kind_of, plain_names, wrong_kind)
from libvirt_arm_cpu.fileio import atomic_write, read_input
from libvirt_arm_cpu.paths import schema_path
from libvirt_arm_cpu.kb.registers import U64_MAX, format_ids, parse_ids
from libvirt_arm_cpu.model import (VCPU_FEATURES, CpuIdentity, Fingerprint, HostProfile, LoaderInfo,
                                   ProfileRegister, QemuInfo, VcpuOffValues)
from libvirt_arm_cpu.xmlsafe import parse_untrusted, shown

__all__ = ["NAMESPACE", "FORMAT_VERSION", "to_xml", "from_xml", "read_profile", "write_profile",
           "validate", "to_json"]

NAMESPACE = namespaces.HOST_PROFILE
_NS = "{" + NAMESPACE + "}"
FORMAT_VERSION = "1"



# -- XML ---------------------------------------------------------------------

def _q(tag: str) -> str:
    return _NS + tag


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: object) -> ET.Element:
    elem = ET.SubElement(parent, _q(tag), {k.replace("_", "-"): _attr(v)
                                           for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = text
    return elem


def _attr(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _hex(v: int) -> str:
    return f"0x{v:016x}"


def to_xml(p: HostProfile) -> bytes:
    root = ET.Element(_q("hostprofile"), {"version": FORMAT_VERSION})
    ident = _sub(root, "identity", hostname=p.hostname, machine=p.machine,
                 probed=p.probed_at, tool_version=p.tool_version)
    _sub(ident, "kernel", release=p.kernel_release, version=p.kernel_version)
    _sub(ident, "qemu", p.qemu.detail, status=p.qemu.status, path=p.qemu.path,
         version=p.qemu.version, sysreg_properties=p.qemu.sysreg)
    _sub(ident, "loader", status=p.loader.status, path=p.loader.path)
    fp = _sub(root, "fingerprint", digest=p.fingerprint.digest)
    for name, value in sorted(p.fingerprint.components.items()):
        _sub(fp, "component", value, name=name)
    feats = _sub(root, "vcpu-features")
    for name in p.vcpu_features:
        _sub(feats, "feature", name=name)
    for o in p.vcpu_off or ():
        off = _sub(feats, "off", features=" ".join(o.features))
        for reg_name, reg_value in sorted(o.registers.items()):
            _sub(off, "register", name=reg_name, value=_hex(reg_value))
        if o.list_removed is not None and o.list_added is not None:
            _sub(off, "register-list", removed=format_ids(o.list_removed) or None,
                 added=format_ids(o.list_added) or None)
    caps = _sub(root, "capabilities")
    for cap, (number, answer) in p.capabilities.items():
        _sub(caps, "capability", name=cap, number=number, value=answer)
    cpus = _sub(root, "cpus", heterogeneous=p.heterogeneous)
    for c in p.cpus:
        _sub(cpus, "cpu", id=c.cpu, midr=None if c.midr is None else f"{c.midr:#010x}",
             revidr=None if c.revidr is None else f"{c.revidr:#x}")
    if p.firmware is not None:
        fw = _sub(root, "firmware")
        for reg in FIRMWARE_REGISTERS:
            if reg.name in p.firmware:
                fw_value = p.firmware[reg.name]
                _sub(fw, "register", name=reg.name, kvm_id=f"{reg.kvm_id:#x}",
                     value="absent" if fw_value is None else _hex(fw_value))
    if p.reg_list is not None:
        _sub(root, "register-list", format_ids(p.reg_list), count=len(p.reg_list))
    platform_xml.to_element(root, p.platform, _NS)
    regs = _sub(root, "registers", writable_masks="known" if p.masks_known else "unknown")
    for r in p.registers:
        _sub(regs, "register", name=r.name, op0=r.encoding[0], op1=r.encoding[1],
             crn=r.encoding[2], crm=r.encoding[3], op2=r.encoding[4],
             kvm_id=f"{r.kvm_id:#x}", mask_index=r.mask_index,
             value="absent" if r.value is None else _hex(r.value),
             writable="unknown" if r.writable is None else _hex(r.writable))
    ET.register_namespace("", NAMESPACE)
    ET.indent(root, space="  ")
    return (b"<?xml version='1.0' encoding='UTF-8'?>\n"
            + ET.tostring(root, encoding="unicode").encode() + b"\n")


def _parse_ids(text: str | None, what: str, path: str) -> frozenset[int]:
    try:
        return parse_ids(text)
    except ValueError:
        raise ParseError(path, None, f"{what}: expected KVM register ids in hex, separated "
                         f"by spaces") from None


def _int(elem: ET.Element, attr: str, path: str, base: int = 0, u64: bool = False) -> int:
    """*elem*'s *attr* as a number (*u64*: that fits a 64-bit register)."""
    text = elem.get(attr)
    if text is None:
        raise ParseError(path, None, f"<{elem.tag[len(_NS):]}> lacks '{attr}'")
    try:
        value = int(text, base)
    except ValueError:
        raise ParseError(path, None, f"<{elem.tag[len(_NS):]} {attr}='{shown(text)}'> is not a "
                         f"number") from None
    if u64 and not 0 <= value <= U64_MAX:
        raise ParseError(path, None, f"<{elem.tag[len(_NS):]} {attr}='{shown(text)}'> does not "
                         f"fit a 64-bit register")
    return value


def _opt_int(elem: ET.Element, attr: str, path: str, none: str, u64: bool = False) -> int | None:
    text = elem.get(attr)
    if text is None or text == none:
        return None
    return _int(elem, attr, path, u64=u64)


def from_xml(data: bytes, path: str = "<profile>") -> HostProfile:
    """Parse a profile (no schema check: see :func:`read_profile`).

    :raise ParseError: naming *path* when it is not a host profile (or not
        XML the safe reader takes: no DOCTYPE, no entities).
    """
    root = _root(data, path)
    _check_version(root, path)
    ident = root.find(_q("identity"))
    kernel = root.find(f"{_q('identity')}/{_q('kernel')}")
    qemu = root.find(f"{_q('identity')}/{_q('qemu')}")
    regs = root.find(_q("registers"))
    if ident is None or kernel is None or qemu is None or regs is None:
        raise ParseError(path, None, "host profile lacks identity, kernel, qemu or registers")
    fp = root.find(_q("fingerprint"))
    components = {c.get("name", ""): c.text or "" for c in fp} if fp is not None else {}
    loader = root.find(f"{_q('identity')}/{_q('loader')}")
    feats = root.find(_q("vcpu-features"))
    offered = [f.get("name", "") for f in feats.findall(_q("feature"))] if feats is not None \
        else []
    return HostProfile(
        hostname=_printable(ident, "hostname", path),
        machine=_printable(ident, "machine", path),
        kernel_release=kernel.get("release", ""),
        kernel_version=kernel.get("version", ""),
        probed_at=ident.get("probed", ""),
        tool_version=ident.get("tool-version", ""),
        qemu=QemuInfo(status=_choice(qemu, "status", ("found", "missing", "error"), path),
                      path=qemu.get("path"), version=qemu.get("version"),
                      sysreg=_choice(qemu, "sysreg-properties", ("yes", "no", "unknown"), path,
                                     "unknown"),
                      detail=qemu.text),
        vcpu_features=offered,
        capabilities={c.get("name", ""): (_int(c, "number", path), _int(c, "value", path))
                      for c in root.iter(_q("capability"))},
        cpus=[CpuIdentity(_int(c, "id", path), _opt_int(c, "midr", path, ""),
                          _opt_int(c, "revidr", path, "")) for c in root.iter(_q("cpu"))],
        registers=[_register(r, path) for r in regs.iter(_q("register"))],
        masks_known=_choice(regs, "writable-masks", ("known", "unknown"), path) == "known",
        fingerprint=Fingerprint(components),
        vcpu_off=_vcpu_off(feats, offered, path),
        firmware=_firmware(root.find(_q("firmware")), path),
        reg_list=_reg_list(root.find(_q("register-list")), path),
        platform=platform_xml.from_element(root.find(_q("platform")), path, _NS),
        loader=LoaderInfo("missing") if loader is None else LoaderInfo(
            _choice(loader, "status", ("found", "missing"), path), loader.get("path")),
    )


def _register(r: ET.Element, path: str) -> ProfileRegister:
    """One ``<register>``: the common case read directly (cpu-baseline reads
    thousands of profiles of 200 registers), anything unusual -- a missing
    or malformed attribute, a value out of range -- by the checking readers,
    which give the message."""
    g = r.get
    try:
        enc = (int(g("op0"), 0), int(g("op1"), 0), int(g("crn"), 0),    # type: ignore[arg-type]
               int(g("crm"), 0), int(g("op2"), 0))                        # type: ignore[arg-type]
        kvm_id = int(g("kvm-id"), 0)                                        # type: ignore[arg-type]
        index_text, value_text, mask_text = g("mask-index"), g("value"), g("writable")
        index = None if index_text in (None, "") else int(index_text, 0)
        value = None if value_text in (None, "absent") else int(value_text, 0)
        mask = None if mask_text in (None, "unknown") else int(mask_text, 0)
        if (value is not None and not 0 <= value <= U64_MAX) or \
                (mask is not None and not 0 <= mask <= U64_MAX):
            raise ValueError
    except (TypeError, ValueError):
        enc = tuple(_int(r, a, path) for a in ("op0", "op1", "crn", "crm", "op2"))  # type: ignore[assignment]
        kvm_id = _int(r, "kvm-id", path)
        index = _opt_int(r, "mask-index", path, "")
        value = _opt_int(r, "value", path, "absent", u64=True)
        mask = _opt_int(r, "writable", path, "unknown", u64=True)
    return ProfileRegister(g("name", ""), enc, kvm_id, index, value, mask)


def _printable(elem: ET.Element, attr: str, path: str) -> str:
    """A name that messages quote (host name, machine): one line, so no
    control characters (a character reference such as &#10; could put one)."""
    text = elem.get(attr, "")
    if not text.isprintable():
        raise ParseError(path, None, f"<{elem.tag[len(_NS):]} {attr}='{shown(text)}'>: "
                         f"control characters are not allowed")
    return text


def _choice(elem: ET.Element, attr: str, allowed: tuple[str, ...], path: str,
            default: str = "") -> str:
    """An attribute the schema enumerates: one of *allowed* (*default* when absent)."""
    text = elem.get(attr, default)
    if text not in allowed:
        raise ParseError(path, None, f"<{elem.tag[len(_NS):]} {attr}='{shown(text)}'>: "
                         f"expected {' or '.join(allowed)}")
    return text


def _reg_list(elem: ET.Element | None, path: str) -> frozenset[int] | None:
    if elem is None:
        return None
    ids = _parse_ids(elem.text, "<register-list>", path)
    if elem.get("count") is not None and _int(elem, "count", path) != len(ids):
        raise ParseError(path, None, f"<register-list count='{shown(elem.get('count', ''))}'> "
                         f"holds {len(ids)} distinct ids: truncated or edited")
    return ids


def _firmware(elem: ET.Element | None, path: str) -> dict[str, int | None] | None:
    """The <firmware> record, checked: known names, each once, at their ids."""
    if elem is None:
        return None
    out: dict[str, int | None] = {}
    for r in elem.findall(_q("register")):
        name = r.get("name", "")
        reg = BY_NAME.get(name)
        if reg is None or name in out or _int(r, "kvm-id", path) != reg.kvm_id:
            raise ParseError(path, None, f"<firmware><register name='{shown(name)}'>: expected "
                             f"one of {', '.join(BY_NAME)}, each once, at its KVM id")
        out[name] = _opt_int(r, "value", path, "absent", u64=True)
    return out


def _vcpu_off(feats: ET.Element | None, offered: list[str],
              path: str) -> list[VcpuOffValues] | None:
    """The <off> records, checked (the hook reads profiles without the
    schema): known features the host offers, each set once, hex values."""
    elems = feats.findall(_q("off")) if feats is not None else []
    if not elems:
        return None
    out: list[VcpuOffValues] = []
    for e in elems:
        names = tuple((e.get("features") or "").split())
        where = f"<vcpu-features><off features='{shown(e.get('features', ''))}'>"
        bad = [n for n in names if n not in VCPU_FEATURES or n not in offered]
        if not names or bad or list(names) != sorted(set(names)):
            raise ParseError(path, None, f"{where}: expected vCPU features this host offers ("
                             f"{' '.join(offered) or 'none'}), sorted, each once")
        if any(o.features == names for o in out):
            raise ParseError(path, None, f"{where} appears twice")
        regs: dict[str, int] = {}
        for r in e.findall(_q("register")):
            name = r.get("name", "")
            text = r.get("value", "")
            if not name or name in regs or not text.startswith("0x"):
                raise ParseError(path, None, f"<vcpu-features><off features='{' '.join(names)}'>"
                                 f": register '{shown(name)}' value '{shown(text)}': expected "
                                 f"each register once, with a 0x hex value")
            regs[name] = _int(r, "value", path, 16, u64=True)
        lst = e.find(_q("register-list"))
        removed = added = None
        if lst is not None:
            what = f"<vcpu-features><off features='{' '.join(names)}'><register-list>"
            removed = _parse_ids(lst.get("removed"), what, path)
            added = _parse_ids(lst.get("added"), what, path)
        out.append(VcpuOffValues(names, regs, removed, added))
    return out


@functools.lru_cache(maxsize=4)
def _schema(path: str):
    import xmlschema

    return xmlschema.XMLSchema(path)


def _root(data: bytes, path: str, strict: bool = True) -> ET.Element:
    """The root of a profile's XML (not *strict*: any root but a CPU
    model's, for the schema to judge).

    :raise WrongKind: for a register dump or a CPU model;
    :raise ParseError: when it is not XML the safe reader takes, or not a
        host profile.
    """
    try:
        root = parse_untrusted(data, path)
    except ParseError:
        if kind_of(data) == REGISTER_DUMP:
            raise wrong_kind(path, REGISTER_DUMP, HOST_PROFILE) from None
        raise
    if root.tag != _q("hostprofile"):
        if kind_of(data, root) == CPU_MODEL:
            raise wrong_kind(path, CPU_MODEL, HOST_PROFILE)
        if not strict:
            return root
        raise ParseError(path, None, f"not a host profile: root element is "
                         f"<{element_name(root.tag)}>, expected <hostprofile "
                         f"xmlns='{NAMESPACE}'>")
    return root


def _check_version(root: ET.Element, path: str) -> None:
    if root.tag != _q("hostprofile"):
        return
    version = root.get("version", FORMAT_VERSION)
    if version.isdigit() and int(version) > int(FORMAT_VERSION):
        raise ParseError(path, None, f"host profile format {version}, written by a newer "
                         f"libvirt-arm-cpu (this one reads format {FORMAT_VERSION}): upgrade, "
                         f"or probe again with this version (libvirt-arm-cpu host --refresh)")


def validate(data: bytes, path: str) -> None:
    """Check *data* against profile.xsd.

    :raise ParseError: with the first schema violation.
    """
    import xmlschema  # ~190 ms to import: only where files are written, and on explicit reads

    root = _root(data, path, strict=False)  # well-formed, no DOCTYPE: first, for the line number
    _check_version(root, path)
    schema = _schema(schema_path("profile.xsd"))
    try:
        errors = schema.iter_errors(data.decode("utf-8", errors="replace"))
        for problem in errors:
            line = getattr(problem, "sourceline", None)
            raise ParseError(path, line, f"not a valid host profile: "
                             f"{plain_names(str(problem.reason))} "
                             f"(at {plain_names(str(problem.path))})")
    except xmlschema.XMLSchemaException as err:
        raise ParseError(path, None, f"not a valid host profile: {plain_names(str(err))}") \
            from err


def write_profile(p: HostProfile, path: str) -> bytes:
    """Validate and write atomically; returns the bytes written.

    :raise DataError: when the profile does not validate (a bug) or the file
        cannot be written.
    """
    data = to_xml(p)
    try:
        validate(data, path)
    except ParseError as err:
        raise DataError(f"refusing to write an invalid profile: {err}") from err
    if path != "-":
        atomic_write(path, data)
    return data


def read_profile(path: str, validate_schema: bool = True) -> HostProfile:
    """Read a profile file (``-`` for stdin).

    :raise ParseError: when it cannot be read, does not validate or parse.
    """
    data = read_input(path)
    if validate_schema:
        validate(data, path)
    return from_xml(data, path)


def to_json(p: HostProfile) -> dict:
    """The profile as plain data (``--json``)."""
    return {
        "hostname": p.hostname, "machine": p.machine,
        "kernel": {"release": p.kernel_release, "version": p.kernel_version},
        "probed": p.probed_at, "tool_version": p.tool_version,
        "qemu": {"status": p.qemu.status, "path": p.qemu.path, "version": p.qemu.version,
                 "sysreg_properties": p.qemu.sysreg, "detail": p.qemu.detail},
        "fingerprint": {"digest": p.fingerprint.digest, **p.fingerprint.components},
        "vcpu_features": p.vcpu_features,
        "vcpu_off": None if p.vcpu_off is None else [
            {"features": list(o.features),
             "registers": {k: _hex(v) for k, v in sorted(o.registers.items())}}
            for o in p.vcpu_off],
        "loader": {"status": p.loader.status, "path": p.loader.path},
        "register_list": None if p.reg_list is None else format_ids(p.reg_list).split(),
        "firmware": None if p.firmware is None else {
            k: None if v is None else _hex(v) for k, v in p.firmware.items()},
        "platform": platform_xml.to_json(p.platform),
        "capabilities": {k: v for k, (_, v) in p.capabilities.items()},
        "cpus": [{"cpu": c.cpu, "midr": None if c.midr is None else f"{c.midr:#010x}",
                  "revidr": None if c.revidr is None else f"{c.revidr:#x}"} for c in p.cpus],
        "heterogeneous": p.heterogeneous,
        "writable_masks": "known" if p.masks_known else "unknown",
        "registers": [{"name": r.name, "kvm_id": f"{r.kvm_id:#x}", "mask_index": r.mask_index,
                       "value": None if r.value is None else _hex(r.value),
                       "writable": None if r.writable is None else _hex(r.writable)}
                      for r in p.registers],
    }
