"""Reading the knowledge base: ``xml/registers.xml``, ``features.xml``,
``dependencies.xml`` and ``implementers.xml`` into the values of
:mod:`.registers`, :mod:`.features`, :mod:`.dependencies` and
:mod:`.implementers`.

The only module of the knowledge base that touches files or XML: the
algorithms take what these return as arguments, so a caller decides when
(and whether) the knowledge base is read.  Each file is read once per
process and directory.  The files are the project's own generated data:
their schema is checked where they are written (kb.gen) and in the tests,
not here, which is on the libvirt hook's path.
"""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ET

from libvirt_arm_cpu.errors import ParseError, UnknownName
from libvirt_arm_cpu.kb.registers import (MUST_MATCH, NAMESPACE, Field, KnowledgeBase, Register,
                                          Reserved, Source)
from libvirt_arm_cpu.paths import kb_dir
from libvirt_arm_cpu.xmlsafe import MAX_BYTES, parse_untrusted

# The catalogs' types are imported where they are read: the libvirt hook
# reads registers.xml only, and importing the rest costs it milliseconds.
TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (3 ms a hook run)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from libvirt_arm_cpu.kb.compiled import Compiled
    from libvirt_arm_cpu.kb.dependencies import Condition, RuleBook
    from libvirt_arm_cpu.kb.features import Condition as FeatureCondition
    from libvirt_arm_cpu.kb.features import FeatureCatalog
    from libvirt_arm_cpu.kb.implementers import Tables
    from libvirt_arm_cpu.kb.named import NamedModels

    F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["registers", "features", "dependencies", "implementers", "named_models",
           "read_kb_file", "load_registers", "load_features", "load_rules", "load_tables",
           "load_named"]

_NS = "{" + NAMESPACE + "}"


def _per_directory(load: F) -> F:
    """*load* once per directory: ``f()`` and ``f(None)`` are one call
    (functools.lru_cache keys them apart, and each catalog asks for the
    registers as ``registers(directory)``: a command read every file
    twice)."""
    done: dict[str | None, Any] = {}

    @functools.wraps(load)
    def once(directory: str | None = None) -> Any:
        got = done.get(directory)
        if got is None:
            got = done[directory] = load(directory)
        return got

    once.cache_clear = done.clear       # type: ignore[attr-defined]
    return once     # type: ignore[return-value]


@_per_directory
def _copy(directory: str | None) -> tuple[str, Compiled | None]:
    """The cache directory, and the compiled copy of the knowledge base in
    *directory* there when it is one of exactly these files
    (:mod:`.compiled`; None: read the XML)."""
    from libvirt_arm_cpu import settings
    from libvirt_arm_cpu.errors import Error
    try:
        cache = settings.cache_dir()
    except Error:           # settings that do not read: no cache (the command says why)
        return "", None
    if not cache:
        return "", None
    from libvirt_arm_cpu.kb import compiled
    return cache, compiled.read(directory or kb_dir(), cache)


@_per_directory
def registers(directory: str | None = None) -> KnowledgeBase:
    """The register knowledge base (installed, or in *directory*)."""
    _, copy = _copy(directory)
    if copy is not None:
        return copy.registers()
    return load_registers(os.path.join(directory or kb_dir(), "registers.xml"))


@_per_directory
def features(directory: str | None = None) -> FeatureCatalog:
    """The feature catalog (installed, or in *directory*)."""
    kb = registers(directory)
    _, copy = _copy(directory)
    got = None if copy is None else copy.features(kb)
    if got is not None:
        return got
    return load_features(os.path.join(directory or kb_dir(), "features.xml"), kb)


@_per_directory
def dependencies(directory: str | None = None) -> RuleBook:
    """The feature-dependency rules (installed, or in *directory*).  Read
    from the XML, the three files' values are kept compiled for the next
    process (:mod:`.compiled`)."""
    catalog = features(directory)
    cache, copy = _copy(directory)
    got = None if copy is None else copy.rules(catalog)
    if got is not None:
        return got
    rules = load_rules(os.path.join(directory or kb_dir(), "dependencies.xml"),
                       catalog.kb, catalog)
    if cache:
        from libvirt_arm_cpu.kb import compiled
        compiled.write(directory or kb_dir(), cache, catalog.kb, catalog, rules)
    return rules


@_per_directory
def implementers(directory: str | None = None) -> Tables:
    """The MIDR implementer and part tables (installed, or in *directory*)."""
    return load_tables(os.path.join(directory or kb_dir(), "implementers.xml"))


@_per_directory
def named_models(directory: str | None = None) -> NamedModels:
    """The named, versioned CPU models (installed, or in *directory*)."""
    return load_named(os.path.join(directory or kb_dir(), "models.xml"))


def _int(elem: ET.Element, attr: str, path: str) -> int:
    text = elem.get(attr)
    if text is None:
        raise ParseError(path, None, f"<{_local(elem.tag)}> lacks attribute '{attr}'")
    try:
        return int(text, 0)
    except ValueError:
        raise ParseError(path, None, f"<{_local(elem.tag)} {attr}='{text}'> is not a number") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_kb_file(path: str, root_tag: str) -> ET.Element:
    """Parse one knowledge-base file (with the one safe XML reader) and
    check its root element.

    :raise ParseError: when the file is missing, malformed or of another kind.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise ParseError(path, None, f"cannot read the knowledge base: {err.strerror}. "
                         f"Reinstall libvirt-arm-cpu or set LIBVIRT_ARM_CPU_XML_DIR") from err
    root = parse_untrusted(data, path)
    if root.tag != _NS + root_tag:
        raise ParseError(path, None, f"root element is <{_local(root.tag)}>, "
                         f"expected <{root_tag} xmlns='{NAMESPACE}'>")
    return root


def load_registers(path: str) -> KnowledgeBase:
    """Read a registers.xml knowledge base.

    The file is the project's own generated data; schema validation happens
    where it is written (kbgen) and in the tests, not here, to keep this fast.

    :raise ParseError: when the file is missing or not a knowledge base.
    """
    root = read_kb_file(path, "registers")
    sources = [Source(s.get("id", ""), s.get("origin", ""), s.get("file"), s.get("sha256"))
               for s in root.iter(_NS + "source")]
    registers = []
    for reg in root.iter(_NS + "register"):
        name = reg.get("name", "")
        fields = []
        reserved = []
        for child in reg:
            tag = _local(child.tag)
            if tag == "field":
                safe = child.get("safe")
                fields.append(Field(
                    register=name,
                    name=child.get("name", ""),
                    msb=_int(child, "msb", path),
                    lsb=_int(child, "lsb", path),
                    kind=child.get("kind", "field"),
                    signed=child.get("signed") == "true",
                    policy=child.get("policy", MUST_MATCH),
                    safe=int(safe, 0) if safe is not None else None,
                    kvm_policy=child.get("kvm-policy"),
                    values=tuple((int(v.get("value", "0"), 0), v.get("name", ""))
                                 for v in child.iter(_NS + "value")),
                    kvm_min=int(child.get("kvm-min", "0"), 0) if child.get("kvm-min") else None,
                    kvm_zero_ok=child.get("kvm-zero-ok") == "true",
                ))
            elif tag == "reserved":
                reserved.append(Reserved(child.get("kind", "res0"),
                                         _int(child, "msb", path), _int(child, "lsb", path)))
        registers.append(Register(
            name, _int(reg, "op0", path), _int(reg, "op1", path), _int(reg, "crn", path),
            _int(reg, "crm", path), _int(reg, "op2", path),
            kind=reg.get("kind", "feature-id"), fields=tuple(fields), reserved=tuple(reserved)))
    return KnowledgeBase(registers, sources, path)


def _feature_condition(elem: ET.Element, kb: KnowledgeBase, path: str) -> FeatureCondition:
    from libvirt_arm_cpu.kb.features import FeatureRef, FieldCondition, Group as FeatureGroup
    tag = elem.tag[len(_NS):]
    if tag == "field":
        fld = kb.field(elem.get("register", ""), elem.get("name", ""))
        hi = elem.get("max")
        return FieldCondition(fld, fld.order(int(elem.get("min", "0"))),
                              None if hi is None else fld.order(int(hi)))
    if tag == "feature":
        return FeatureRef(elem.get("ref", ""))
    if tag in ("all", "any"):
        return FeatureGroup(tag, tuple(_feature_condition(c, kb, path) for c in elem))
    raise ParseError(path, None, f"unexpected <{tag}> in a feature condition")


def load_features(path: str, kb: KnowledgeBase) -> FeatureCatalog:
    """Read features.xml.

    :raise ParseError: when the file is missing, malformed, or names a field
        the register knowledge base lacks.
    """
    from libvirt_arm_cpu.kb.features import Feature, FeatureCatalog
    root = read_kb_file(path, "features")
    features = []
    for elem in root.findall(_NS + "feature"):
        children = list(elem)
        unavailable = elem.find(_NS + "unavailable")
        try:
            cond = None if unavailable is not None else _feature_condition(children[0], kb, path)
        except UnknownName as err:
            raise ParseError(path, None, f"feature {elem.get('name')}: {err}") from err
        features.append(Feature(
            name=elem.get("name", ""), kind=elem.get("kind", "feat"), condition=cond,
            unavailable=None if unavailable is None else unavailable.get("reason"),
            llvm=elem.get("llvm")))
    return FeatureCatalog(features, kb)


def _rule_condition(elem, kb: KnowledgeBase, path: str) -> Condition:
    from libvirt_arm_cpu.kb.dependencies import Always, Group, Not, Test
    tag = elem.tag[len(_NS):] if elem.tag.startswith(_NS) else elem.tag
    if tag == "always":
        return Always()
    if tag in ("all", "any"):
        return Group(tag, tuple(_rule_condition(c, kb, path) for c in elem))
    if tag == "not":
        return Not(_rule_condition(elem[0], kb, path))
    if tag != "test":
        raise ParseError(path, None, f"unexpected <{tag}> in a dependency rule")
    reg = kb.register(elem.get("register", ""))
    name = elem.get("field", "")
    ref = None
    if elem.get("ref-register"):
        ref = kb.register(elem.get("ref-register", "")).field(elem.get("ref-field", ""))
    value = elem.get("value")
    return Test(reg.name, None if name == "*" else reg.field(name), elem.get("op", ""),
                int(value) if value is not None else None, ref, elem.get("signed") == "true")


def load_rules(path: str, kb: KnowledgeBase, catalog: FeatureCatalog) -> RuleBook:
    """Read dependencies.xml.

    :raise ParseError: when the file is missing, malformed, or names a
        register or field the knowledge base lacks.
    """
    from libvirt_arm_cpu.kb.dependencies import Rule, RuleBook
    root = read_kb_file(path, "dependencies")
    rules = []
    for elem in root.findall(_NS + "rule"):
        rid = elem.get("id", "")
        try:
            when = _rule_condition(elem.find(_NS + "if")[0], kb, path)   # type: ignore[index]
            then = tuple(_rule_condition(c, kb, path) for c in elem.find(_NS + "then"))  # type: ignore[union-attr]
        except (UnknownName, TypeError, IndexError) as err:
            raise ParseError(path, None, f"rule {rid}: {err}") from err
        rules.append(Rule(
            id=rid, kind=elem.get("kind", ""), subkind=elem.get("subkind", ""),
            confidence=elem.get("confidence", ""), enforced=elem.get("enforced") == "true",
            feat=elem.get("feat", ""), requires=elem.get("requires", ""), when=when, then=then,
            origin=(elem.findtext(_NS + "origin") or "").strip(),
            also=tuple((a.text or "").strip() for a in elem.findall(_NS + "also")),
            note=(elem.findtext(_NS + "note") or "").strip()))
    return RuleBook(rules, catalog, path)


def load_tables(path: str) -> Tables:
    from libvirt_arm_cpu.kb.implementers import Tables
    root = read_kb_file(path, "implementers")
    implementers = {}
    parts = {}
    for imp in root.iter(_NS + "implementer"):
        code = int(imp.get("code", "0"), 16)
        implementers[code] = imp.get("name", "")
        for part in imp.iter(_NS + "part"):
            parts[(code, int(part.get("number", "0"), 16))] = part.get("name", "")
    return Tables(implementers, parts)


def load_named(path: str) -> NamedModels:
    """Read models.xml (every released version of every named model).

    :raise ParseError: when the file is missing, not a models file, or of a
        newer format than this version reads.
    """
    from libvirt_arm_cpu.kb.named import (FORMAT, NamedModel, NamedModels, RegisterOrigin,
                                          Source as ModelSource)
    root = read_kb_file(path, "models")
    fmt = _int(root, "format", path)
    if fmt > FORMAT:
        raise ParseError(path, None, f"named CPU models of format {fmt}, newer than the "
                         f"{FORMAT} this libvirt-arm-cpu reads: upgrade libvirt-arm-cpu")
    sources = [ModelSource(s.get("id", ""), s.get("origin", ""), s.get("file"), s.get("sha256"))
               for s in root.findall(_NS + "source")]
    models = []
    for m in root.findall(_NS + "model"):
        for v in m.findall(_NS + "version"):
            regs = tuple(RegisterOrigin(r.get("name", ""), _int(r, "value", path),
                                        r.get("origin", ""), r.get("fields", ""),
                                        r.get("host", ""))
                         for r in v.findall(_NS + "register"))
            models.append(NamedModel(
                m.get("name", ""), _int(v, "number", path), m.get("kind", ""),
                v.get("title", ""), v.get("source", ""), regs, v.get("digest", ""),
                tuple((n.text or "").strip() for n in v.findall(_NS + "note")),
                tuple((v.get("vcpu-off") or "").split())))
    return NamedModels(models, sources, path)
