"""A persistent cache of what host profiles turn into, by file identity.

``cpu-baseline DIR`` over a fleet reads the same thousands of profiles run
after run; parsing and checking one costs about 2 ms.  This cache keeps, for
each profile file, the :class:`~libvirt_arm_cpu.model.CpuModel` it gives,
so an unchanged file is not read again: a ``stat`` answers for it.  (Not
the :class:`~libvirt_arm_cpu.model.HostProfile`: rebuilding its ~190
register objects costs most of what parsing does; a caller that needs the
profiles reads the files.)

**Key.**  A file is known by its directory and name, device and inode, size,
modification and change times (ns).  The change time (ctime) cannot be set
by a program: any write, rename onto the path, ``touch`` or ``cp -p`` moves
it, so a file whose content changed never matches its old entry (``rsync -t``
and ``cp -p`` keep the mtime, not the ctime or inode).  A file changed
within :data:`RACY_SECONDS` of being read is not stored (a second write in
the same timestamp tick would keep its identity), nor one whose identity
changed while it was read.  Every shard is also stamped with this format,
the package version, the knowledge base file it was made with (path, size,
mtime) and the modules whose code decides a profile's model (size, mtime):
any other stamp and the shard is ignored.

**Form.**  One shard a directory of inputs (``<cache dir>/<digest of the
directory>.fleet``): a header, a CRC-32 of the body and the body, Python's
``marshal`` of plain values only (tuples, strings, numbers, None, bools;
marshal builds no objects of its own and runs no code).  Values shared
between profiles (register names, a value, a writable mask, the register
list) are stored once and referenced (marshal's references), so 10,000
distinct profiles of one CPU take about 10 MB.  Models are rebuilt through
their constructor, so the invariants it checks hold.

**Failure.**  The cache only ever answers with what a profile read gave for
exactly that file: a shard that does not read back (truncated, corrupt, of
another version, not owned by this user) is ignored and rewritten whole; a
directory that cannot be made or written means no cache, never an error.
Writes are atomic (a temporary file renamed over the shard); two processes
writing one shard at once lose entries, never mix them.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import stat as stat_mod
import time
import zlib
from dataclasses import fields as dc_fields
from typing import Any

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.fileio import atomic_write
from libvirt_arm_cpu.model import CpuModel, Platform

__all__ = ["FORMAT", "ENV", "RACY_SECONDS", "ModelCache", "Entry", "default_dir", "open_cache"]

FORMAT = 1
_MAGIC = b"LACMODELS\n"
ENV = "LIBVIRT_ARM_CPU_CACHE_DIR"       # a directory; "" or "none" switches the cache off
RACY_SECONDS = 2.0
SHARD_SUFFIX = ".fleet"
# the modules whose code decides what a profile file gives (stamped: an
# edited checkout never answers from a cache its old code wrote)
_CODE = ("model.py", "formats/profile.py", "formats/platform.py", "formats/fleet.py",
         "formats/modelcache.py", "service.py", "kb/registers.py", "kb/firmware.py",
         "xmlsafe.py")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Identity = tuple[int, int, int, int, int]          # dev, inode, size, mtime_ns, ctime_ns
# (content key or None, schema-validated, record or None: a copy of another
# profile of the run, only its identity part checked)
Entry = tuple["bytes | None", bool, "tuple | None"]


def default_dir(settings_profile: str) -> str:
    """``LIBVIRT_ARM_CPU_CACHE_DIR``, else ``profiles/`` beside the settings'
    host profile cache (``/var/cache/libvirt-arm-cpu/profiles``); "" (no
    cache) when the variable is empty or ``none``."""
    env = os.environ.get(ENV)
    if env is not None:
        return "" if env.strip().lower() in ("", "none", "off") else env
    return os.path.join(os.path.dirname(os.path.abspath(settings_profile)), "profiles")


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _file_stamp(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _code_stamp() -> tuple:
    return tuple(_file_stamp(os.path.join(_PACKAGE, name)) for name in _CODE)


# -- encoding: plain, shared values --------------------------------------------

_PLAIN = frozenset((int, str, type(None)))


class _Sharer:
    """Equal values made one object, so marshal writes them once (and
    references them after): a model's registers as a tuple of names, shared
    by every model of the shard, and a tuple of values, whose numbers are
    shared too (a distinct profile differs in a few).  The memos are plain
    dicts filled by C-level calls: sharing costs microseconds a model."""

    def __init__(self) -> None:
        self.scalars: dict[Any, Any] = {}
        self.tuples: dict[tuple, tuple] = {}
        self.platforms: dict[tuple, tuple] = {}

    def tup(self, items: Any) -> tuple:
        """*items* (hashable values) as a shared tuple of shared values;
        only ints, strings and None are shared (True == 1 as a dict key)."""
        t = tuple(items)
        if not _PLAIN.issuperset(map(type, t)):
            return t
        got = self.tuples.get(t)
        if got is None:
            got = self.tuples[t] = tuple(map(self.scalars.setdefault, t, t))
        return got

    def mapping(self, d: dict) -> tuple[tuple, tuple]:
        """A dict of plain keys and values as (keys, values), each shared."""
        return self.tup(d), self.tup(d.values())

    def seed(self, x: Any) -> None:
        """Make the values of *x* (a record read back) the ones new records
        share, so a shard written again holds each value once."""
        if type(x) is tuple:
            if _PLAIN.issuperset(map(type, x)):
                if self.tuples.setdefault(x, x) is x:
                    for y in x:
                        self.scalars.setdefault(y, y)
            else:
                for y in x:
                    self.seed(y)


_INT, _INT_OR_NONE = frozenset((int,)), frozenset((int, type(None)))
_STR = frozenset((str,))
_PLATFORM_FIELDS = [f.name for f in dc_fields(Platform)]
_PLATFORM_SETS = ("sve_vls", "gic")


def _enc_platform(p: Platform, share: _Sharer) -> tuple:
    t = tuple(share.tup(sorted(v)) if isinstance(v, frozenset) else v
              for v in (getattr(p, f) for f in _PLATFORM_FIELDS))
    return share.platforms.setdefault((tuple(map(type, t)), t), t)    # (False is not 0)


def _dec_platform(t: tuple) -> Platform:
    if len(t) != len(_PLATFORM_FIELDS) or not all(
            type(v) in (int, bool, type(None)) or (
                f in _PLATFORM_SETS and type(v) is tuple and _INT.issuperset(map(type, v)))
            for f, v in zip(_PLATFORM_FIELDS, t)):
        raise ValueError("platform")
    args: list[Any] = [frozenset(v) if f in _PLATFORM_SETS and v is not None else v
                       for f, v in zip(_PLATFORM_FIELDS, t)]
    return Platform(*args)


def _enc_model(m: CpuModel, share: _Sharer) -> tuple:
    """A model but its hosts, as plain values."""
    return (share.mapping(m.values), share.mapping(m.writable), m.imp_id_writable,
            share.tup(m.implementations), m.name, share.tup(m.vcpu_off),
            tuple((f, share.mapping(e)) for f, e in m.vcpu_effects.items()),
            share.mapping(m.firmware),
            None if m.reg_list is None else share.tup(sorted(m.reg_list)),
            _enc_platform(m.platform, share))


def _dict(t: tuple, checked: dict[int, Any], kinds: frozenset = _INT) -> dict:
    """Register (or firmware) name -> number, as stored (*checked*: stored
    tuples, by id, already found to hold what they must; each kept there,
    so its id is not another's); :raise ValueError: for anything else."""
    keys, values = t
    if len(keys) != len(values):
        raise ValueError("keys and values")
    if checked.get(id(keys)) is not keys:
        if not _STR.issuperset(map(type, keys)):
            raise ValueError("not register names")
        checked[id(keys)] = keys
    if checked.get(id(values)) is not values:
        if not kinds.issuperset(map(type, values)):
            raise ValueError("not numbers")
        if kinds is _INT:
            checked[id(values)] = values
    return dict(zip(keys, values))


def _dec_model(t: tuple, label: str, memo: dict[int, tuple[Any, Any]],
               checked: dict[int, Any]) -> CpuModel:
    """The model of a record, under *label*.  Its dicts are its own; the
    immutable parts (register list, platform) are one object for one stored
    value (*memo*: id of the stored value -> (it, what it gave))."""
    (values, writable, imp_id, impls, name, off, effects, firmware, reg_list, platform) = t
    if not isinstance(name, str) or not name or type(imp_id) is not bool:
        raise ValueError("model name")
    frozen = None
    if reg_list is not None:
        got = memo.get(id(reg_list))
        if got is None or got[0] is not reg_list:
            if not _INT.issuperset(map(type, reg_list)):
                raise ValueError("register list")
            got = memo[id(reg_list)] = (reg_list, frozenset(reg_list))
        frozen = got[1]
    got = memo.get(id(platform))
    if got is None or got[0] is not platform:
        got = memo[id(platform)] = (platform, _dec_platform(platform))
    plat = got[1]
    return CpuModel(_dict(values, checked), _dict(writable, checked), imp_id, (label,),
                    tuple(impls), name=name, vcpu_off=tuple(off),
                    vcpu_effects={f: _dict(e, checked) for f, e in effects},
                    firmware=_dict(firmware, checked, _INT_OR_NONE),
                    reg_list=frozen, platform=plat)


# -- shards --------------------------------------------------------------------

class _Shard:
    """The entries of one input directory: file name -> (identity, entry)."""

    def __init__(self, path: str, directory: str) -> None:
        self.path = path                       # the shard file
        self.directory = directory             # the inputs' directory
        self.entries: dict[str, tuple[Identity, Entry]] = {}
        self.dirty = False
        self.listed: set[str] | None = None    # every *.xml of the directory, when known


class ModelCache:
    """The cache in *directory* for knowledge base file *kb_path*.

    :meth:`lookup` and :meth:`store` never raise for the cache's own sake;
    :meth:`save` writes what changed (or nothing, when it cannot)."""

    def __init__(self, directory: str, kb_path: str) -> None:
        self.directory = os.path.abspath(directory)
        self.header = (FORMAT, __version__, _file_stamp(kb_path), _code_stamp())
        self.shards: dict[str, _Shard] = {}
        self.model_memo: dict[int, tuple[Any, Any]] = {}   # id -> (stored value, its part)
        self.checked: dict[int, Any] = {}       # id -> stored tuple of the right types
        self.hits = self.misses = self.stored = 0

    # reading

    def _shard(self, directory: str) -> _Shard:
        shard = self.shards.get(directory)
        if shard is None:
            digest = hashlib.sha256(os.fsencode(directory)).hexdigest()[:24]
            shard = self.shards[directory] = _Shard(
                os.path.join(self.directory, digest + SHARD_SUFFIX), directory)
            loaded = self._load(shard.path, directory)
            if loaded is None:
                shard.dirty = os.path.exists(shard.path)    # rewrite what does not read back
            else:
                shard.entries = loaded
        return shard

    def _load(self, path: str, directory: str) -> dict[str, tuple[Identity, Entry]] | None:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                    return None           # only a shard this user alone can have written
                data = f.read()
        except OSError:
            return None
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
            return None
        body = memoryview(data)[len(_MAGIC) + 4:]
        if zlib.crc32(body) != int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 4], "big"):
            return None
        try:
            header, shard_dir, entries = marshal.loads(body)
            if header != self.header or shard_dir != directory or type(entries) is not dict:
                return None
            for name, (ident, (key, checked, record)) in entries.items():
                if (type(name) is not str or type(ident) is not tuple or len(ident) != 5
                        or not (key is None or type(key) is bytes) or type(checked) is not bool
                        or not (record is None or (type(record) is tuple
                                                   and len(record) == 1))):
                    return None
        except (ValueError, TypeError, EOFError):
            return None
        return entries

    def stat(self, path: str) -> os.stat_result | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st if stat_mod.S_ISREG(st.st_mode) else None

    def lookup(self, path: str) -> tuple[Entry | None, os.stat_result | None]:
        """The entry for *path* as it is now, and its stat (None: not a
        regular file: no cache)."""
        st = self.stat(path)
        if st is None:
            return None, None
        full = os.path.abspath(path)
        shard = self._shard(os.path.dirname(full))
        got = shard.entries.get(os.path.basename(full))
        if got is not None and got[0] == _identity(st):
            self.hits += 1
            return got[1], st
        self.misses += 1
        return None, st

    def model(self, record: tuple, label: str) -> CpuModel:
        """The model of a stored record, under *label*.

        :raise ValueError, TypeError, KeyError: a record that does not
            rebuild (the caller reads the file instead)."""
        return _dec_model(record[0], label, self.model_memo, self.checked)

    def get(self, record: tuple, label: str) -> CpuModel | None:
        """The model of a record under *label*; None when it does not
        rebuild (read the file instead)."""
        try:
            if isinstance(record[0], CpuModel):     # stored in this run
                from dataclasses import replace
                return replace(record[0], hosts=(label,))
            return _dec_model(record[0], label, self.model_memo, self.checked)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None

    # writing

    def listed(self, directory: str, names: list[str]) -> None:
        """*names* are every input file of *directory* (a directory given
        whole): entries of other names can go."""
        shard = self._shard(os.path.abspath(directory))
        shard.listed = set(names)

    def store(self, path: str, before: os.stat_result, size: int, key: bytes | None,
              checked: bool, found: CpuModel | None) -> None:
        """Remember what reading *path* (stat *before* the read, *size*
        bytes read) gave: *found* (its own model), or None for a copy of a profile read
        before in the same run (content *key*).  Not stored
        when the file changed while it was read or too recently."""
        try:
            after = os.stat(path)
        except OSError:
            return
        ident = _identity(before)
        if _identity(after) != ident or size != before.st_size:
            return
        newest = max(before.st_mtime_ns, before.st_ctime_ns)
        if time.time_ns() - newest < RACY_SECONDS * 1e9:
            return
        full = os.path.abspath(path)
        shard = self._shard(os.path.dirname(full))
        name = os.path.basename(full)
        record = None if found is None else (found,)     # encoded at save
        shard.entries[name] = (ident, (key, checked, record))
        shard.dirty = True
        self.stored += 1

    def save(self) -> None:
        """Write the shards that changed, atomically; silently nothing when
        the directory cannot be written."""
        todo = [s for s in self.shards.values() if s.dirty or
                (s.listed is not None and set(s.entries) - s.listed)]
        if not todo:
            return
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError:
            return
        share = _Sharer()
        for shard in todo:
            for _ident, (_key, _checked, record) in shard.entries.values():
                if record is not None and not isinstance(record[0], CpuModel):
                    share.seed(record)
        for shard in todo:
            entries = {}
            for name, (ident, (key, checked, record)) in shard.entries.items():
                if shard.listed is not None and name not in shard.listed:
                    continue
                if record is not None and isinstance(record[0], CpuModel):
                    record = (_enc_model(record[0], share),)
                entries[name] = (ident, (key, checked, record))
            shard.entries = {n: e for n, e in shard.entries.items() if n in entries}
            body = marshal.dumps((self.header, shard.directory, entries))
            data = _MAGIC + zlib.crc32(body).to_bytes(4, "big") + body
            try:
                atomic_write(shard.path, data, mode=0o600)
            except Exception:       # noqa: BLE001 -- a cache never fails its caller
                return
            shard.dirty = False


def open_cache(directory: str | None, kb_path: str) -> ModelCache | None:
    """The cache in *directory* (None or "": no cache), or None when the
    knowledge base is not a file (nothing to stamp)."""
    if not directory or not os.path.isfile(kb_path):
        return None
    return ModelCache(directory, kb_path)
