"""A compiled copy of the knowledge base: what ``registers.xml``,
``features.xml`` and ``dependencies.xml`` give, kept so that a command does
not parse 520 kB of XML each run.

Every command reads the knowledge base: parsing the three files and
building their values takes ~15 ms, a sixth of a ``cpu-baseline`` over a
thousand hosts.  Read back from this copy the same values take ~6 ms.

**Form.**  One file a knowledge-base directory, ``kb-<digest of the
directory>.compiled`` in the profile cache's directory
(:func:`libvirt_arm_cpu.settings.cache_dir`): a header, a CRC-32 of the body
and the body, Python's ``marshal`` of plain values only (tuples, strings,
numbers, None, bools: marshal builds no objects of its own and runs no
code).  Each value is rebuilt through its constructor; a field a condition
names is looked up in the rebuilt registers, as the XML reader does.

**Only ever a copy.**  The header names this format, the package version,
each XML file (path, size, modification time) and the modules whose code
decides what the files give; any other header, a file that does not read
back, or one another user could have written, and the XML is read instead
(and the copy written again).  Writes are atomic and never fail the caller.
"""

from __future__ import annotations

import marshal
import os

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.deferred import sha256
from libvirt_arm_cpu.errors import Error
from libvirt_arm_cpu.fileio import code_stamp, file_stamp, read_cache, write_cache
from libvirt_arm_cpu.kb.registers import Field, KnowledgeBase, Register, Reserved, Source

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from libvirt_arm_cpu.kb.dependencies import Condition, RuleBook
    from libvirt_arm_cpu.kb.features import Condition as FeatureCondition
    from libvirt_arm_cpu.kb.features import FeatureCatalog

__all__ = ["FORMAT", "FILES", "Compiled", "path_for", "read", "write", "encode_registers",
           "decode_registers"]

FORMAT = 1
_MAGIC = b"LACKB\n"
FILES = ("registers.xml", "features.xml", "dependencies.xml")
SUFFIX = ".compiled"
# the modules whose code decides what the files give (an edited checkout
# never answers from a copy its old code wrote)
_CODE = ("kb/load.py", "kb/registers.py", "kb/features.py", "kb/dependencies.py",
         "kb/compiled.py")


def _header(kb_dir: str) -> tuple:
    return (FORMAT, __version__, tuple(file_stamp(os.path.join(kb_dir, name)) for name in FILES),
            code_stamp(_CODE))


def path_for(kb_dir: str, cache_dir: str) -> str:
    """Where the copy of the knowledge base in *kb_dir* lives."""
    digest = sha256(os.fsencode(os.path.abspath(kb_dir))).hexdigest()[:24]
    return os.path.join(cache_dir, f"kb-{digest}{SUFFIX}")


# -- registers ---------------------------------------------------------------

def encode_registers(kb: KnowledgeBase) -> tuple:
    """The register knowledge base as plain values (the hook's compact
    copy keeps it so too: formats.compact)."""
    return (tuple((r.name, r.op0, r.op1, r.crn, r.crm, r.op2, r.kind,
                   tuple((f.name, f.msb, f.lsb, f.kind, f.signed, f.policy, f.safe,
                          f.kvm_policy, f.values, f.kvm_min, f.kvm_zero_ok) for f in r.fields),
                   tuple((x.kind, x.msb, x.lsb) for x in r.reserved))
                  for r in kb.registers),
            tuple((s.id, s.origin, s.file, s.sha256) for s in kb.sources), kb.path)


def decode_registers(t: tuple) -> KnowledgeBase:
    regs, sources, path = t
    return KnowledgeBase(
        [Register(name, op0, op1, crn, crm, op2, kind,
                  tuple([Field(name, *f) for f in fields]),
                  tuple([Reserved(*x) for x in reserved]))
         for name, op0, op1, crn, crm, op2, kind, fields, reserved in regs],
        [Source(*s) for s in sources], path)


# -- features ----------------------------------------------------------------

def _enc_feature_condition(c: FeatureCondition) -> tuple:
    from libvirt_arm_cpu.kb.features import FeatureRef, FieldCondition, Group
    if isinstance(c, FieldCondition):
        return ("field", c.field.register, c.field.name, c.lo, c.hi)
    if isinstance(c, FeatureRef):
        return ("feature", c.name)
    if isinstance(c, Group):
        return (c.op, *map(_enc_feature_condition, c.terms))
    raise TypeError(f"a feature condition of type {type(c).__name__}")


def _dec_feature_condition(t: tuple, kb: KnowledgeBase) -> FeatureCondition:
    from libvirt_arm_cpu.kb.features import FeatureRef, FieldCondition, Group
    tag = t[0]
    if tag == "field":
        _, register, name, lo, hi = t
        return FieldCondition(kb.field(register, name), lo, hi)
    if tag == "feature":
        return FeatureRef(t[1])
    if tag in ("all", "any"):
        return Group(tag, tuple([_dec_feature_condition(x, kb) for x in t[1:]]))
    raise ValueError(f"a feature condition tagged {tag!r}")


def _enc_features(catalog: FeatureCatalog) -> tuple:
    return tuple((f.name, f.kind, None if f.condition is None else
                  _enc_feature_condition(f.condition), f.unavailable, f.llvm)
                 for f in catalog.features)


def _dec_features(t: tuple, kb: KnowledgeBase) -> FeatureCatalog:
    from libvirt_arm_cpu.kb.features import Feature, FeatureCatalog
    return FeatureCatalog([Feature(name, kind, None if cond is None else
                                   _dec_feature_condition(cond, kb), unavailable, llvm)
                           for name, kind, cond, unavailable, llvm in t], kb)


# -- dependency rules --------------------------------------------------------

def _field_ref(f: Field | None) -> tuple[str, str] | None:
    return None if f is None else (f.register, f.name)


def _enc_condition(c: Condition) -> tuple:
    from libvirt_arm_cpu.kb.dependencies import Always, Group, Not, Test
    if isinstance(c, Test):
        return ("test", c.register, _field_ref(c.field), c.op, c.value, _field_ref(c.ref),
                c.signed)
    if isinstance(c, Always):
        return ("always",)
    if isinstance(c, Group):
        return (c.op, *map(_enc_condition, c.terms))
    if isinstance(c, Not):
        return ("not", _enc_condition(c.term))
    raise TypeError(f"a rule condition of type {type(c).__name__}")


def _dec_condition(t: tuple, kb: KnowledgeBase) -> Condition:
    from libvirt_arm_cpu.kb.dependencies import Always, Group, Not, Test
    tag = t[0]
    if tag == "test":
        _, register, field, op, value, ref, signed = t
        return Test(register, None if field is None else kb.field(*field), op, value,
                    None if ref is None else kb.field(*ref), signed)
    if tag == "always":
        return Always()
    if tag in ("all", "any"):
        return Group(tag, tuple([_dec_condition(x, kb) for x in t[1:]]))
    if tag == "not":
        return Not(_dec_condition(t[1], kb))
    raise ValueError(f"a rule condition tagged {tag!r}")


def _enc_rules(rules: RuleBook) -> tuple:
    return (tuple((r.id, r.kind, r.subkind, r.confidence, r.enforced, r.feat, r.requires,
                   _enc_condition(r.when), tuple(map(_enc_condition, r.then)), r.origin,
                   r.also, r.note) for r in rules.rules), rules.path)


def _dec_rules(t: tuple, catalog: FeatureCatalog) -> RuleBook:
    from libvirt_arm_cpu.kb.dependencies import Rule, RuleBook
    rules, path = t
    kb = catalog.kb
    return RuleBook([Rule(rid, kind, subkind, confidence, enforced, feat, requires,
                          _dec_condition(when, kb),
                          tuple([_dec_condition(c, kb) for c in then]), origin, also, note)
                     for (rid, kind, subkind, confidence, enforced, feat, requires, when, then,
                          origin, also, note) in rules], catalog, path)


# -- the file ----------------------------------------------------------------

class Compiled:
    """A copy read back: each part rebuilt when first asked for (a command
    that needs the registers only does not pay for the rules); None for a
    part that does not rebuild (read its file instead)."""

    def __init__(self, parts: tuple) -> None:
        self._parts = parts
        self._kb: KnowledgeBase | None = None

    def registers(self) -> KnowledgeBase:
        if self._kb is None:
            self._kb = decode_registers(self._parts[0])
        return self._kb

    def features(self, kb: KnowledgeBase) -> FeatureCatalog | None:
        """The catalog over *kb* (the registers this process uses)."""
        try:
            return _dec_features(self._parts[1], kb)
        except _BROKEN:
            return None

    def rules(self, catalog: FeatureCatalog) -> RuleBook | None:
        try:
            return _dec_rules(self._parts[2], catalog)
        except _BROKEN:
            return None


# what a copy that does not rebuild raises (Error: the package's own, an
# UnknownName for a field the registers lack, say)
_BROKEN = (ValueError, TypeError, EOFError, KeyError, IndexError, AttributeError, Error)


def read(kb_dir: str, cache_dir: str) -> Compiled | None:
    """The copy of the knowledge base in *kb_dir* made from exactly its
    files by this version, else None (read the XML)."""
    body = read_cache(path_for(kb_dir, cache_dir), _MAGIC)
    if body is None:
        return None
    try:
        header, parts = marshal.loads(body)
        if header != _header(kb_dir) or type(parts) is not tuple or len(parts) != 3:
            return None
        compiled = Compiled(parts)
        compiled.registers()            # a copy that does not rebuild is no copy
    except _BROKEN:
        return None
    return compiled


def write(kb_dir: str, cache_dir: str, kb: KnowledgeBase, catalog: FeatureCatalog,
          rules: RuleBook) -> None:
    """Keep a copy of what the files of *kb_dir* gave (read from them by
    this process); silently nothing when the cache cannot be written."""
    try:
        body = marshal.dumps((_header(kb_dir), (encode_registers(kb), _enc_features(catalog),
                                                _enc_rules(rules))))
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        write_cache(path_for(kb_dir, cache_dir), _MAGIC, body)
    except Exception:       # noqa: BLE001 -- a cache never fails its caller
        return

