"""The value types' dataclass methods, compiled once and kept
(libvirt_arm_cpu/methodcache.py): the methods made from the cache are the
ones dataclasses compiles, a later process compiles none of them, and a
cache that is damaged, another user's or not to be written changes nothing
but the time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Every value type of the modules a fleet command and a domain's check
# import, each generated method's code as marshal writes it, and the
# sources this process compiled (not wrapping compile: that would change
# the flags it inherits).
PROBE = r"""
import json, marshal, sys
from libvirt_arm_cpu import methodcache
if INSTALL:
    methodcache.install()
import dataclasses
import libvirt_arm_cpu.engine.baseline, libvirt_arm_cpu.engine.compare
import libvirt_arm_cpu.engine.validate, libvirt_arm_cpu.cpuinputs, libvirt_arm_cpu.modelstore
@dataclasses.dataclass(frozen=True)
class Foreign:
    foreign_field: int
methods = {}
for name, module in sorted(sys.modules.items()):
    if not name.startswith("libvirt_arm_cpu."):
        continue
    for obj in vars(module).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == name:
            for m in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__",
                      "__delattr__"):
                f = obj.__dict__.get(m)
                if f is not None and hasattr(f, "__code__"):
                    methods[f"{name}.{obj.__qualname__}.{m}"] = (
                        marshal.dumps(f.__code__).hex(), repr(f.__annotations__))
from libvirt_arm_cpu.model import CpuModel
try:
    CpuModel.__setattr__(object.__new__(CpuModel), "name", "x")
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
# compiled here: what this process used that the files did not have
compiled = [s for f, used in methodcache._used.items() for s in used
            if s not in methodcache._read(f)]
compiled_in = sorted({f.rpartition("libvirt_arm_cpu/")[2] for f, used in methodcache._used.items()
                      if any(s not in methodcache._read(f) for s in used)})
methodcache.save()
print(json.dumps({"methods": methods, "compiled": compiled, "frozen": frozen,
                  "compiled_in": compiled_in,
                  "foreign": any("foreign_field" in s for s in compiled)}))
"""


def _probe(tmp_path: Path, install: bool = True, **env: str) -> dict:
    full = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"),
            "PYTHONPATH": str(ROOT), **env}
    full.pop("PYTHONDONTWRITEBYTECODE", None)
    full.update(env)
    p = subprocess.run([sys.executable, "-c", PROBE.replace("INSTALL", repr(install))],
                       capture_output=True, text=True, env=full, cwd="/", timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _cache_files(tmp_path: Path) -> list[Path]:
    """The cache's files: one a module with value types, beside its bytecode."""
    return sorted((tmp_path / "pycache").rglob("*.methods"))


def test_methods_from_the_cache_are_the_ones_dataclasses_compiles(tmp_path):
    plain = _probe(tmp_path, install=False)
    assert not _cache_files(tmp_path)
    first = _probe(tmp_path)
    files = _cache_files(tmp_path)
    assert all((f.stat().st_mode & 0o777) == 0o600 for f in files)
    # beside each module's bytecode: model.py's, kb/registers.py's...
    tag = sys.implementation.cache_tag
    names = {str(f.relative_to(f.parents[1])) for f in files}
    assert {f"libvirt_arm_cpu/model.{tag}.methods", f"kb/registers.{tag}.methods"} <= names
    assert "model.py" in first["compiled_in"] and "kb/registers.py" in first["compiled_in"]
    later = _probe(tmp_path)
    assert len(plain["methods"]) > 100         # the value types of both paths
    assert first["methods"] == plain["methods"]
    assert later["methods"] == plain["methods"]
    assert first["compiled"] and not later["compiled"]
    assert plain["frozen"] and first["frozen"] and later["frozen"]
    # an API caller's own dataclasses are compiled as always, never kept
    assert not first["foreign"]
    assert not any(b"foreign_field" in f.read_bytes() for f in files)


def test_a_damaged_or_foreign_cache_is_compiled_again(tmp_path):
    _probe(tmp_path)
    cache = next(f for f in _cache_files(tmp_path) if f.name.startswith("model."))
    good = cache.read_bytes()
    # a flipped byte (the CRC), a cut file, another's writable file: ignored
    for damage in (lambda: cache.write_bytes(good[:-40] + bytes([good[-40] ^ 1]) + good[-39:]),
                   lambda: cache.write_bytes(good[: len(good) // 2]),
                   lambda: cache.chmod(0o664)):
        cache.write_bytes(good)
        cache.chmod(0o600)
        assert _probe(tmp_path)["compiled"] == []
        damage()
        again = _probe(tmp_path)
        assert again["compiled"], "a damaged or group-writable cache was used"
        assert again["compiled_in"] == ["model.py"]        # the other modules' files serve
        assert again["frozen"]


def test_a_cache_that_cannot_be_written_fails_nothing(tmp_path):
    """A read-only install (here: a directory where the file would go, so
    the atomic write fails): every command and the hook's check work, and
    compile as before."""
    _probe(tmp_path)
    for cache in _cache_files(tmp_path):
        cache.unlink()
        cache.mkdir()
    out = _probe(tmp_path)
    assert out["compiled"] and out["frozen"] and all(f.is_dir() for f in _cache_files(tmp_path))


def test_no_cache_is_written_where_bytecode_is_not(tmp_path):
    out = _probe(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert out["compiled"]
    assert not _cache_files(tmp_path)


def test_each_command_and_the_hooks_check_use_it(tmp_path):
    """run_main (every command, the helper's too) and the hook's check
    install it and save what they compiled."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"),
           "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    p = subprocess.run([sys.executable, "-m", "libvirt_arm_cpu.cli", "decode",
                        "ID_AA64ISAR0_EL1", "0x1000"], capture_output=True, text=True,
                       env=env, cwd="/", timeout=120)
    assert p.returncode == 0, p.stderr
    assert _cache_files(tmp_path)
    from libvirt_arm_cpu import hook
    source = Path(hook.__file__).read_text()
    assert "methodcache.install()" in source.split("def _check", 1)[1]
    assert "methodcache.save()" in source.split("def run(", 1)[1].split("def _run", 1)[0]
