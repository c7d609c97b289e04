"""The methods ``dataclasses`` writes for this package's value types,
compiled once and kept, as Python keeps a module's bytecode.

On Python 3.11 ``dataclasses`` writes each class's ``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__`` and ``__delattr__``
as source text and compiles it, one ``exec`` each, every time the class is
created, that is at every import: 0.27 ms a frozen class.  A command over a
fleet creates 41 of them (11 ms of a 90 ms run), a domain's check in the
hook 25.  Such a method's source follows from the class's declaration
alone, so its compiled code is kept, keyed by that source, in
``__pycache__`` beside the package's bytecode, under the interpreter's own
rules: written only where it would write bytecode (not under ``-B`` or
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

import marshal
import os
import sys
import types

__all__ = ["install", "save", "cache_path"]

_PACKAGE = "libvirt_arm_cpu."
_MAGIC = b"LACMETH1"
# Entries are never stale (the key is the source), only unused once a class
# changes: past this many the file is written afresh with this run's.
_MOST = 2000

_known: dict[str, types.CodeType] | None = None     # read from the file, when first needed
_used: dict[str, types.CodeType] = {}                # what this process compiled or read


def cache_path() -> str:
    """Where the compiled methods are kept (one file per interpreter)."""
    here = os.path.dirname(os.path.abspath(__file__))
    name = f"dataclass-methods.{sys.implementation.cache_tag}.bin"
    if sys.pycache_prefix:
        return os.path.join(sys.pycache_prefix, here.lstrip(os.sep), name)
    return os.path.join(here, "__pycache__", name)


def install() -> None:
    """From now on the package's dataclasses take their methods' code from
    the cache (compiled, and kept for :func:`save`, when it has none)."""
    import dataclasses
    dataclasses.exec = _exec        # type: ignore[attr-defined]  # shadows the builtin there


def _exec(source, globals=None, locals=None, /):    # noqa: A002 - exec's own signature
    name = globals.get("__name__", "") if isinstance(globals, dict) else ""
    if type(source) is not str or not name.startswith(_PACKAGE):
        return exec(source, globals, locals)
    code = _used.get(source)
    if code is None:
        code = _read().get(source)
        if code is None:
            # as exec compiles it within dataclasses: no __future__ flags of ours
            code = compile(source, "<string>", "exec", dont_inherit=True)
        _used[source] = code
    return exec(code, globals, locals)


def _read() -> dict[str, types.CodeType]:
    global _known
    if _known is None:
        _known = {}
        from libvirt_arm_cpu.fileio import read_cache
        body = read_cache(cache_path(), _MAGIC)
        if body is not None:
            try:
                table = marshal.loads(body)
            except (ValueError, EOFError, TypeError):
                table = None
            if isinstance(table, dict) and all(
                    type(k) is str and type(v) is types.CodeType for k, v in table.items()):
                _known = table
    return _known


def save() -> None:
    """Keep what this process compiled (nothing when the file has it all,
    bytecode is not written here, or the directory cannot be written)."""
    known = _read() if _used else {}
    if not _used or sys.dont_write_bytecode or all(k in known for k in _used):
        return
    table = {**known, **_used} if len(known) + len(_used) <= _MOST else dict(_used)
    path = cache_path()
    try:
        from libvirt_arm_cpu.fileio import write_cache
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_cache(path, _MAGIC, marshal.dumps(table))
    except Exception:       # noqa: BLE001 -- a cache never fails its caller (a read-only
        return              # install: compiled again next time, as before)
    global _known
    _known = table
