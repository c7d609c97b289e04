"""A compact, checked copy of what the libvirt hook reads on every domain
start: this host's profile and the register knowledge base.

Both exist as XML (``host.xml``, ``xml/registers.xml``); reading them costs
the hook milliseconds a start.  This form is Python's ``marshal`` of plain
values (tuples, lists, dicts, numbers, strings: marshal builds no objects
of its own and runs no code): each value of :mod:`libvirt_arm_cpu.model`
as the tuple of its fields, the register knowledge base as
:mod:`libvirt_arm_cpu.kb.compiled` keeps it, rebuilt through their
constructors, so the invariants they check hold.

It is only ever a copy.  A header names the format, the package version
and the size and modification time of both XML files it was made from;
:func:`loads` returns None for a copy that does not match them (or that
cannot be read back), and the caller reads the XML instead.
"""

from __future__ import annotations

import dataclasses
import marshal
import os

from libvirt_arm_cpu import __version__, model
from libvirt_arm_cpu.kb import registers as kbreg
from libvirt_arm_cpu.kb.compiled import decode_registers, encode_registers

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (on the hook's path)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FORMAT", "stamp", "dumps", "loads"]

FORMAT = 3          # 2: the host's platform (model.Platform); 3: the registers as kb.compiled keeps them
_MAGIC = b"LACC"

Stamp = tuple[str, int, int]      # path, size, mtime (ns)


def stamp(path: str) -> Stamp:
    """What identifies a version of a file here (:raise OSError:)."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


# Each value type as a tuple of its fields in order.  The fields that hold
# other value types are named here with their shape (one of them, or a
# list); the rest are plain values marshal keeps as they are.  The register
# knowledge base is kept as kb.compiled keeps it.
_ONE, _LIST = "one", "list"
_NESTED: dict[type, dict[str, tuple[str, type]]] = {
    model.HostProfile: {"qemu": (_ONE, model.QemuInfo), "cpus": (_LIST, model.CpuIdentity),
                        "registers": (_LIST, model.ProfileRegister),
                        "fingerprint": (_ONE, model.Fingerprint),
                        "vcpu_off": (_LIST, model.VcpuOffValues),
                        "loader": (_ONE, model.LoaderInfo),
                        "platform": (_ONE, model.Platform)},
}
_TYPES: tuple[type, ...] = (
    model.QemuInfo, model.LoaderInfo, model.VcpuOffValues, model.CpuIdentity,
    model.ProfileRegister, model.Fingerprint, model.Platform, model.HostProfile)
_PLAN: dict[type, list[tuple[str, tuple[str, type] | None]]] = {
    cls: [(f.name, _NESTED.get(cls, {}).get(f.name))
          for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    for cls in _TYPES}


def _encode(v: Any, cls: type) -> tuple:
    out = []
    for name, nested in _PLAN[cls]:
        x = getattr(v, name)
        if nested is not None and x is not None:
            shape, sub = nested
            if shape == _ONE:
                x = _encode(x, sub)
            else:
                x = [_encode(y, sub) for y in x]
        out.append(x)
    return tuple(out)


# For decoding: where each type's fields of other value types sit.  A type
# with none (a profile's registers: hundreds a copy) is rebuilt straight
# from its tuple.
_NESTED_AT: dict[type, list[tuple[int, str, type]]] = {
    cls: [(i, *nested) for i, (_name, nested) in enumerate(plan) if nested is not None]
    for cls, plan in _PLAN.items()}


def _decode(t: tuple, cls: type) -> Any:
    if len(t) != len(_PLAN[cls]):
        raise ValueError(f"{cls.__name__}: {len(t)} values, expected {len(_PLAN[cls])}")
    nested = _NESTED_AT[cls]
    if not nested:
        return cls(*t)
    args = list(t)
    for i, shape, sub in nested:
        x = args[i]
        if x is not None:
            if shape == _ONE:
                args[i] = _decode(x, sub)
            else:
                args[i] = [_decode(y, sub) for y in x]
    return cls(*args)


def dumps(profile: model.HostProfile, kb: kbreg.KnowledgeBase, profile_stamp: Stamp,
          kb_stamp: Stamp) -> bytes:
    head = (FORMAT, __version__, profile_stamp, kb_stamp)
    return _MAGIC + marshal.dumps((head, _encode(profile, model.HostProfile), encode_registers(kb)))


def loads(data: bytes, profile_stamp: Stamp, kb_stamp: Stamp
          ) -> tuple[model.HostProfile, kbreg.KnowledgeBase] | None:
    """The profile and knowledge base of a copy made from exactly these
    files by this version; None otherwise (read the XML instead)."""
    if not data.startswith(_MAGIC):
        return None
    try:
        head, profile, kb = marshal.loads(data[len(_MAGIC):])
        if tuple(head) != (FORMAT, __version__, profile_stamp, kb_stamp):
            return None
        p, k = _decode(profile, model.HostProfile), decode_registers(kb)
    except (ValueError, TypeError, EOFError, KeyError, IndexError, AttributeError):
        return None
    if not isinstance(p, model.HostProfile) or not isinstance(k, kbreg.KnowledgeBase):
        return None
    return p, k
