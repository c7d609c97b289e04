"""Where the package finds its data files.

The knowledge base lives in the source tree's ``xml/`` (a checkout or an
editable install) or, for a regular install, in
``<prefix>/share/libvirt-arm-cpu/xml`` (setup.cfg's data_files).
``LIBVIRT_ARM_CPU_XML_DIR`` overrides both, for tests and packagers.

Plain ``os.path`` strings: this runs on the hook's path, where importing
pathlib alone costs several milliseconds.
"""

from __future__ import annotations

import os
import sys

__all__ = ["kb_dir", "schema_path", "hook_script", "readable_file"]

_SOURCE_TREE_XML = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "xml")


def kb_dir() -> str:
    override = os.environ.get("LIBVIRT_ARM_CPU_XML_DIR")
    if override:
        return override
    if os.path.exists(os.path.join(_SOURCE_TREE_XML, "registers.xml")):
        return _SOURCE_TREE_XML
    return os.path.join(sys.prefix, "share", "libvirt-arm-cpu", "xml")


def schema_path(name: str) -> str:
    """Path of an XSD shipped in ``xml/schemas``."""
    return os.path.join(kb_dir(), "schemas", name)


def hook_script() -> str:
    """The libvirt hook script shipped in ``hooks/`` (source tree) or
    ``<prefix>/share/libvirt-arm-cpu/hooks``."""
    in_tree = os.path.join(os.path.dirname(_SOURCE_TREE_XML), "hooks", "libvirt-arm-cpu")
    if os.path.exists(in_tree):
        return in_tree
    return os.path.join(sys.prefix, "share", "libvirt-arm-cpu", "hooks", "libvirt-arm-cpu")


def readable_file(path: str) -> bool:
    """Is *path* a regular file this process can read (the loader, say)?"""
    return os.path.isfile(path) and os.access(path, os.R_OK)
