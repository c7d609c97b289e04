"""The methods ``dataclasses`` writes for this package's value types,
compiled once and kept, as Python keeps a module's bytecode.

On Python 3.11 ``dataclasses`` writes each class's ``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__`` and ``__delattr__``
as source text and compiles it, one ``exec`` each, every time the class is
created, that is at every import: 0.27 ms a frozen class.  A command over a
fleet creates 41 of them (11 ms of a 90 ms run), a domain's check in the
hook 25.  Such a method's source follows from the class's declaration
alone, so its compiled code is kept, keyed by that source, beside the
module's bytecode (``__pycache__/model.cpython-311.methods`` for
``model.py``: one file a module, so that a process reads the methods of
the modules it imports, not all) under the interpreter's own rules:
written only where it would write bytecode (not under ``-B`` or
``PYTHONDONTWRITEBYTECODE``), into ``sys.pycache_prefix`` when set.  It is
read only when this user alone can have written it (fileio.read_cache):
a code cache another user could edit would run their code.

The process that starts (the command's ``run_main``; in the hook,
``hook.run`` before its check imports the engine) calls :func:`install`
before the value types are imported and :func:`save` when done.  A file
that cannot be written fails nothing.  Only this package's classes go through it:
another module's dataclasses (an API caller's) are compiled as always.
"""

from __future__ import annotations

import _frozen_importlib_external as _bootstrap_external     # the import system's own paths
import marshal
import os
import sys
import types

__all__ = ["install", "save", "cache_path"]

_PACKAGE = "libvirt_arm_cpu."
_MAGIC = b"LACMETH1"
# Entries are never stale (the key is the source), only unused once a class
# changes: past this many a module's file is written afresh with this run's.
_MOST = 200

# per module file: what its cache held when first read, and what this
# process compiled or read
_known: dict[str, dict[str, types.CodeType]] = {}
_used: dict[str, dict[str, types.CodeType]] = {}


def cache_path(module_file: str) -> str:
    """Where the compiled methods of the module at *module_file* are kept:
    beside its bytecode, as the import system names it (``__pycache__``,
    or ``sys.pycache_prefix``; the interpreter's tag)."""
    pyc = _bootstrap_external.cache_from_source(module_file)
    return pyc.rpartition(".")[0] + ".methods"


def install() -> None:
    """From now on the package's dataclasses take their methods' code from
    the cache (compiled, and kept for :func:`save`, when it has none)."""
    import dataclasses
    dataclasses.exec = _exec        # type: ignore[attr-defined]  # shadows the builtin there


def _exec(source, globals=None, locals=None, /):    # noqa: A002 - exec's own signature
    module = globals if isinstance(globals, dict) else {}
    name, file = module.get("__name__", ""), module.get("__file__")
    if type(source) is not str or not name.startswith(_PACKAGE) or type(file) is not str:
        return exec(source, globals, locals)
    used = _used.setdefault(file, {})
    code = used.get(source)
    if code is None:
        code = _read(file).get(source)
        if code is None:
            # as exec compiles it within dataclasses: no __future__ flags of ours
            code = compile(source, "<string>", "exec", dont_inherit=True)
        used[source] = code
    return exec(code, globals, locals)


def _read(module_file: str) -> dict[str, types.CodeType]:
    known = _known.get(module_file)
    if known is None:
        known = _known[module_file] = {}
        from libvirt_arm_cpu.fileio import read_cache
        body = read_cache(cache_path(module_file), _MAGIC)
        if body is not None:
            try:
                table = marshal.loads(body)
            except (ValueError, EOFError, TypeError):
                table = None
            if isinstance(table, dict) and all(
                    type(k) is str and type(v) is types.CodeType for k, v in table.items()):
                known = _known[module_file] = table
    return known


def save() -> None:
    """Keep what this process compiled (nothing for a module whose file has
    it all, nothing where bytecode is not written or the directory cannot
    be written)."""
    if sys.dont_write_bytecode:
        return
    from libvirt_arm_cpu.fileio import write_cache
    for module_file, used in _used.items():
        known = _read(module_file)
        if all(k in known for k in used):
            continue
        table = {**known, **used} if len(known) + len(used) <= _MOST else dict(used)
        path = cache_path(module_file)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_cache(path, _MAGIC, marshal.dumps(table))
        except Exception:       # noqa: BLE001 -- a cache never fails its caller (a read-only
            continue            # install: compiled again next time, as before)
        _known[module_file] = table
