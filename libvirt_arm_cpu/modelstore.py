"""Saved CPU models: one folder, one file per model, named after the model.

The one owner of where models live (``[models] dir`` in the settings file,
or ``LIBVIRT_ARM_CPU_MODELS_DIR``; see :mod:`libvirt_arm_cpu.settings`), so
``cpu-baseline --save``, ``cpu-compare NAME``, ``translate`` and the Python
API all find the same models.  A model's name is a name, never a path: a
``<model>`` in a domain cannot reach a file outside the folder.
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

__all__ = ["directory", "check_name", "path_of", "find", "save", "names"]

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


def find(name: str) -> CpuModel:
    """The saved model *name*.

    :raise UsageError: a bad name, or no such model (with the closest
        saved one).
    """
    path = path_of(name)
    if os.path.exists(path):
        return from_xml(read_input(path), path, kb_load.features())
    err = UnknownName("CPU model", name, names())
    raise UsageError(f"{err} (saved CPU models are in {directory()}; make one with "
                     f"'libvirt-arm-cpu cpu-baseline --save')")


def save(model: CpuModel, features: list[str], data: bytes | None = None) -> str:
    """Write *model* (or its XML *data*, already made) under its name;
    returns the path."""
    path = path_of(model.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, data if data is not None else to_xml(model, features))
    return path
