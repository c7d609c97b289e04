"""Feature names and the register-field conditions behind them.

Two vocabularies, both generated into ``xml/features.xml`` by
:mod:`libvirt_arm_cpu.kb.gen`:

* Linux hwcaps, as ``/proc/cpuinfo`` prints them (``aes``, ``atomics``,
  ``sve2``); the AArch32 ones (shown to 32-bit tasks) are named
  ``aarch32:<name>`` here, since several share a name with an AArch64 one;
* Arm's ``FEAT_*`` names (``FEAT_DotProd``), from Arm's machine-readable
  specification.

A feature's condition is a tree of field ranges (``REG.FIELD`` between a
minimum and an optional maximum, compared signed where the field is signed),
``all``/``any`` groups and references to other features.  Evaluation is
three-valued: with only some registers known the answer may be ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from libvirt_arm_cpu.errors import UnknownName
from libvirt_arm_cpu.kb.registers import NAMESPACE, Field, KnowledgeBase

__all__ = ["Feature", "FieldCondition", "Group", "FeatureRef", "FeatureCatalog"]

_NS = "{" + NAMESPACE + "}"

Values = Mapping[str, int]   # register name -> raw 64-bit value


@dataclass(frozen=True)
class FieldCondition:
    """``field`` holds a value whose order lies in [lo, hi]."""

    field: Field
    lo: int
    hi: int | None      # None: no upper bound

    def holds(self, values: Values, catalog: FeatureCatalog) -> bool | None:
        raw = values.get(self.field.register)
        if raw is None:
            return None
        key = self.field.order(self.field.get(raw))
        return self.lo <= key and (self.hi is None or key <= self.hi)

    def fields(self) -> Iterator[Field]:
        yield self.field

    def describe(self) -> str:
        f = self.field
        lo = f.from_order(self.lo)
        name = f.meaning(lo)
        text = f"{f} >= {lo}" + (f" ({name})" if name else "")
        if self.hi is not None:
            hi = f.from_order(self.hi)
            text = (f"{f} == {lo}" + (f" ({name})" if name else "") if hi == lo
                    else f"{text} and <= {hi}")
        return text + (" [signed]" if f.signed else "")


@dataclass(frozen=True)
class Group:
    """All or any of several feature conditions."""

    op: str             # "all" or "any"
    terms: tuple[Condition, ...]

    def holds(self, values: Values, catalog: FeatureCatalog) -> bool | None:
        results = [t.holds(values, catalog) for t in self.terms]
        decisive = self.op == "any"     # True decides "any", False decides "all"
        if decisive in results:
            return decisive
        if None in results:
            return None
        return not decisive

    def fields(self) -> Iterator[Field]:
        for t in self.terms:
            yield from t.fields()

    def describe(self) -> str:
        joiner = " and " if self.op == "all" else " or "
        return "(" + joiner.join(t.describe() for t in self.terms) + ")"


@dataclass(frozen=True)
class FeatureRef:
    """A condition that another feature is present."""

    name: str

    def holds(self, values: Values, catalog: FeatureCatalog) -> bool | None:
        return catalog.feature(self.name).holds(values, catalog)

    def fields(self) -> Iterator[Field]:
        return iter(())     # the referenced feature lists its own

    def describe(self) -> str:
        return self.name


Condition = FieldCondition | Group | FeatureRef


@dataclass(frozen=True)
class Feature:
    """A named CPU feature (hwcap or FEAT_*) and the ID register values that show it."""

    name: str
    kind: str                       # hwcap, aarch32-hwcap, feat
    condition: Condition | None     # None: ID registers cannot tell
    unavailable: str | None = None  # why not, when condition is None
    llvm: str | None = None

    @property
    def key(self) -> str:
        """The name users type: ``aes``, ``aarch32:aes``, ``FEAT_AES``."""
        return f"aarch32:{self.name}" if self.kind == "aarch32-hwcap" else self.name

    def holds(self, values: Values, catalog: FeatureCatalog) -> bool | None:
        if self.condition is None:
            return None
        return self.condition.holds(values, catalog)

    def fields(self, catalog: FeatureCatalog) -> list[Field]:
        """Every field the condition reads, following feature references."""
        return self._walk(catalog, None)

    def satisfied_by(self, values: Values, catalog: FeatureCatalog) -> list[Field]:
        """The fields whose own condition holds within this feature's (expanded)
        condition: the fields that give it, when it is present.  For FEAT_Crypto
        (AES or SHA1 or ...) that is AES and SHA1, not a zero SM4."""
        return self._walk(catalog, values)

    def _walk(self, catalog: FeatureCatalog, values: Values | None) -> list[Field]:
        """The fields of the expanded condition; with *values*, only the field
        conditions (and referenced features) that hold for them."""
        def keep(cond: Condition) -> bool:
            return values is None or cond.holds(values, catalog) is True

        out: list[Field] = []
        stack: list[Condition] = [self.condition] if self.condition else []
        seen: set[str] = set()
        while stack:
            cond = stack.pop()
            if isinstance(cond, FeatureRef):
                ref = catalog.feature(cond.name).condition
                if cond.name not in seen and ref is not None and keep(ref):
                    seen.add(cond.name)
                    stack.append(ref)
            elif isinstance(cond, Group):
                stack.extend(reversed(cond.terms))
            elif keep(cond) and cond.field not in out:
                out.append(cond.field)
        return out

    def requires(self) -> str:
        if self.condition is None:
            return f"cannot be told from ID registers: {self.unavailable}"
        text = self.condition.describe()
        return text[1:-1] if text.startswith("(") and text.endswith(")") else text


class FeatureCatalog:
    def __init__(self, features: list[Feature], kb: KnowledgeBase) -> None:
        self.features = tuple(features)
        self.kb = kb
        self._by_key = {f.key.upper(): f for f in self.features}
        self._by_field: dict[str, list[Feature]] = {}
        for f in self.features:
            for fld in f.fields(self):
                self._by_field.setdefault(str(fld), []).append(f)

    def __iter__(self) -> Iterator[Feature]:
        return iter(self.features)

    def feature(self, name: str) -> Feature:
        """By hwcap or FEAT name, case-insensitively (``FEAT_`` optional).

        :raise UnknownName: naming the closest feature.
        """
        key = name.strip().upper()
        found = self._by_key.get(key) or self._by_key.get("FEAT_" + key)
        if found is None:
            raise UnknownName("feature", name, (f.key for f in self.features))
        return found

    def reading(self, field: Field) -> list[Feature]:
        """The features whose condition reads *field*."""
        return self._by_field.get(str(field), [])

    def present(self, values: Values) -> list[Feature]:
        return [f for f in self.features if f.holds(values, self) is True]
