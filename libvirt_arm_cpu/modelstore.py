"""Saved CPU models: one folder, one file per model, named after the model.

The one owner of where models live (``[models] dir`` in the settings file,
or ``LIBVIRT_ARM_CPU_MODELS_DIR``; see :mod:`libvirt_arm_cpu.settings`), so
``cpu-baseline --save``, ``cpu-compare NAME``, ``translate`` and the Python
API all find the same models.  A model's name is a name, never a path: a
``<model>`` in a domain cannot reach a file outside the folder.

Where no saved model has a name, :func:`find` resolves a **named model**
(``xml/models.xml``: ``neoverse-v1-v1``, or ``neoverse-v1`` for its latest
version; :func:`libvirt_arm_cpu.kb.load.named_models`).  A named model fixes
every value it has; as an input of baseline it may be lowered in every
field (its writable mask covers every field: it has no host whose kernel
could refuse), so its baseline with a host is the most of it that host
runs (``cpu-baseline`` itself takes files, not names, today).
"""

from __future__ import annotations

import os
import re

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu import settings
from libvirt_arm_cpu.formats.cpumodel import from_xml, to_xml
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.errors import UnknownName, UsageError
from libvirt_arm_cpu.fileio import atomic_write, read_input

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from libvirt_arm_cpu.kb.named import NamedModel

__all__ = ["directory", "check_name", "path_of", "find", "save", "names", "catalog",
           "named_model", "from_named"]

# letters, digits and . _ + - (not first): what cpu-baseline names models
# (arm64-<hash>) and what an operator would call one; no '/', no '..'
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def directory() -> str:
    return settings.load().models_dir


def check_name(name: str) -> str:
    """*name* if it can name a saved model.

    :raise UsageError: for a path, '..', or characters a model name lacks.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise UsageError(f"'{shown}' is not a CPU model name (letters, digits and . _ + -, "
                         f"at most 128; a name, not a path)")
    return name


def path_of(name: str) -> str:
    return os.path.join(directory(), check_name(name) + ".xml")


def names() -> list[str]:
    where = directory()
    if not os.path.isdir(where):
        return []
    return sorted(n[:-4] for n in os.listdir(where) if n.endswith(".xml"))


def catalog() -> list[str]:
    """Every name :func:`find` resolves: the saved models, then the named
    models (each unversioned name, for its latest version, and each
    version's name), saved names first where they are the same."""
    saved = names()
    return saved + [n for n in kb_load.named_models().all_names() if n not in saved]


def from_named(m: NamedModel) -> CpuModel:
    """The CpuModel of a named model's version: its values, named
    ``<name>-v<N>``; every field may be lowered (see the module's doc).
    An architecture level's fields that are the host's stay
    :attr:`CpuModel.host_fields` (compare and translate resolve them on a
    host)."""
    kb = kb_load.registers()
    values = m.values
    writable = {r: kb.register(r).field_mask for r in values}
    return CpuModel(values, writable, hosts=(m.versioned,), name=m.versioned,
                    vcpu_off=m.vcpu_off, host_fields=m.host_fields)


def named_model(name: str) -> NamedModel | None:
    """The named model *name* (latest version without ``-v<N>``), None when
    there is none of that name.

    :raise UsageError: the model exists but not that version.
    """
    try:
        return kb_load.named_models().find(name)
    except LookupError as err:
        raise UsageError(str(err)) from None


def find(name: str) -> CpuModel:
    """The saved model *name*, else the named model *name*.

    :raise UsageError: a bad name, a named model's version that does not
        exist, or no such model (with the closest saved or named one).
    """
    path = path_of(name)
    if os.path.exists(path):
        return from_xml(read_input(path), path, kb_load.features())
    named = named_model(name)
    if named is not None:
        return from_named(named)
    err = UnknownName("CPU model", name, catalog())
    raise UsageError(f"{err} (saved CPU models are in {directory()}; make one with "
                     f"'libvirt-arm-cpu cpu-baseline --save'; 'libvirt-arm-cpu cpu-models' "
                     f"lists the named ones)")


def save(model: CpuModel, features: list[str], data: bytes | None = None) -> str:
    """Write *model* (or its XML *data*, already made) under its name;
    returns the path."""
    path = path_of(model.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, data if data is not None else to_xml(model, features))
    return path
