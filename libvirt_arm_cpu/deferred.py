"""Standard-library modules imported when first used, not when imported,
and hashlib's hashes without hashlib.

The libvirt hook runs on every domain start and each command is a process
of its own: their start is mostly imports.  ``dataclasses`` imports
``inspect`` (4 ms: ``ast``, ``dis``, ``tokenize``...) only to describe a
class that has no docstring, and every value type here has one
(tests/test_hook.py holds it), so the process that starts (the hook script,
the command's ``main``) puts that import off until something uses it.

(``importlib.util.LazyLoader`` does not serve: an ``import`` statement
reads the module's ``__spec__``, which loads it.)

``sha256`` and ``blake2b`` are hashlib's own, from the modules hashlib
takes them from: importing hashlib loads OpenSSL, 2-3 ms a start.
"""

from __future__ import annotations

import sys
import types

try:
    from _blake2 import blake2b
    from _sha256 import sha256
except ImportError:     # pragma: no cover - CPython always builds them
    from hashlib import blake2b, sha256

__all__ = ["defer", "HOOK_PUT_OFF", "sha256", "blake2b"]

# What the libvirt hook script puts off: modules a domain's check imports
# only because the modules it needs import them --
#   inspect: dataclasses (above);
#   copy: dataclasses, for asdict() and friends (1 ms: it tries to import
#     Jython's org.python.core, a search of sys.path that finds nothing);
#   xml.etree.ElementTree: the formats' modules; the check reads the domain
#     with xmlsafe.parse_light, and only a domain rewritten for a migration
#     needs ElementTree (1.5 ms with what it imports).
HOOK_PUT_OFF = ("inspect", "copy", "xml.etree.ElementTree")


def defer(name: str) -> None:
    """Until an attribute of module *name* is first used, ``import name``
    gives a stand-in, which then imports the module and gives the
    attribute; the module itself from then on.  Nothing when it is imported
    already."""
    if name in sys.modules:
        return
    parent = name.rpartition(".")[0]
    if parent:
        # "import a.b.c as x" takes c from a.b, or from sys.modules: a.b
        # must be there (a package's __init__, not the module put off)
        __import__(parent)
    stand_in = types.ModuleType(name)

    def __getattr__(attr: str) -> object:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        __import__(name)
        return getattr(sys.modules[name], attr)

    stand_in.__getattr__ = __getattr__      # type: ignore[method-assign]
    sys.modules[name] = stand_in
    if parent:      # as the import system does (it sets the real one when it loads)
        setattr(sys.modules[parent], name.rpartition(".")[2], stand_in)
