"""A persistent cache of what host profiles turn into, by file identity.

``cpu-baseline DIR`` over a fleet reads the same thousands of profiles run
after run; parsing and checking one costs about 2 ms.  This cache keeps, for
each profile file, the :class:`~libvirt_arm_cpu.model.CpuModel` it gives
and its :class:`~libvirt_arm_cpu.model.HostProfile`, so an unchanged file
is not read again: a ``stat`` answers for it.

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
list) are stored once and referenced (marshal's references).  A fleet's
distinct profiles of one CPU differ in a register or two: a model's values
and a profile's registers are kept as those of the first like it plus what
differs, so reading one back is a copy and a few items (10,000 such
profiles: a 4 MB shard, read back in ~0.1 s).  Models are rebuilt through
their constructor, so the invariants it checks hold.

**Failure.**  The cache only ever answers with what a profile read gave for
exactly that file: a shard that does not read back (truncated, corrupt, of
another version, not owned by this user) is ignored and rewritten whole; a
directory that cannot be made or written means no cache, never an error.
Writes are atomic (a temporary file renamed over the shard); two processes
writing one shard at once lose entries, never mix them.
"""

from __future__ import annotations

import marshal
import os
import stat as stat_mod
import time
from dataclasses import fields as dc_fields

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.deferred import sha256
from libvirt_arm_cpu.fileio import code_stamp, file_stamp, read_cache, write_cache
from libvirt_arm_cpu.model import (CpuIdentity, CpuModel, Fingerprint, HostProfile, LoaderInfo,
                                   Platform, ProfileRegister, QemuInfo, VcpuOffValues)

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (2 ms a start)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FORMAT", "RACY_SECONDS", "ModelCache", "Entry", "open_cache"]

FORMAT = 3          # 2: each record holds the profile too; 3: values as a delta
_MAGIC = b"LACMODELS\n"
RACY_SECONDS = 2.0
SHARD_SUFFIX = ".fleet"
# the modules whose code decides what a profile file gives (stamped: an
# edited checkout never answers from a cache its old code wrote)
_CODE = ("model.py", "formats/profile.py", "formats/platform.py", "formats/fleet.py",
         "formats/modelcache.py", "service.py", "kb/registers.py", "kb/firmware.py",
         "xmlsafe.py")

Identity = tuple[int, int, int, int, int]          # dev, inode, size, mtime_ns, ctime_ns
# (content key or None, schema-validated, record or None: a copy of another
# profile of the run, only its identity part checked)
Entry = tuple["bytes | None", bool, "tuple | None"]


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
        self.parts: dict[tuple, tuple] = {}         # profiles' shared parts
        self.bases: dict[tuple, tuple] = {}         # register names -> the values others differ from

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

    def nested(self, t: tuple) -> tuple:
        """*t*, a tuple of shared parts, itself shared (a fleet's models
        have a few vCPU-feature effect tables between them)."""
        return self.tuples.setdefault(t, t)

    def delta(self, d: dict) -> tuple:
        """A model's register values: (keys, values) as :meth:`mapping`, or
        (keys, base values, keys changed, their values) when they differ in
        few places from the first values stored with these keys (a fleet's
        distinct profiles of one CPU differ in a field or two: reading one
        back is then a copy of the base's dict and a few items, not ~190)."""
        keys, values = self.mapping(d)
        base = self.bases.setdefault(keys, values)
        if base is values or len(values) < 8:
            return keys, values
        changed = [i for i, (a, b) in enumerate(zip(base, values)) if a != b]
        if len(changed) * 4 > len(values):
            return keys, values
        return (keys, base, self.tup(keys[i] for i in changed),
                self.tup(values[i] for i in changed))

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
    return (share.delta(m.values), share.mapping(m.writable), m.imp_id_writable,
            share.tup(m.implementations), m.name, share.tup(m.vcpu_off),
            share.nested(tuple((f, share.mapping(e)) for f, e in m.vcpu_effects.items())),
            share.mapping(m.firmware),
            None if m.reg_list is None else share.tup(sorted(m.reg_list)),
            _enc_platform(m.platform, share))


def _of(t: Any, checked: dict[tuple[int, frozenset], Any], kinds: frozenset = _INT) -> tuple:
    """*t*, a stored tuple whose items are all of *kinds*; checked once a
    stored object and kind (*checked*: (id, kinds) -> it, kept there so its
    id is not another's).  :raise ValueError: for anything else."""
    if checked.get((id(t), kinds)) is not t:
        if type(t) is not tuple or not kinds.issuperset(map(type, t)):
            raise ValueError("stored values of the wrong kind")
        checked[id(t), kinds] = t
    return t


def _dict(t: tuple, checked: dict[tuple[int, frozenset], Any], kinds: frozenset = _INT) -> dict:
    """Register (or firmware, or fingerprint) name -> value, as stored
    ((keys, values), checked as :func:`_of`); a dict of its own."""
    keys, values = t
    if len(keys) != len(values):
        raise ValueError("keys and values")
    return dict(zip(_of(keys, checked, _STR), _of(values, checked, kinds)))


def _frozen(t: Any, memo: dict[Any, tuple[Any, ...]], make: Any, tag: str = "") -> Any:
    """What *make* gives for stored value *t* (*make* checks it), one object
    for one stored value (*memo*: (id, *tag*) -> (it, what it gave))."""
    got = memo.get((id(t), tag))
    if got is None or got[0] is not t:
        got = memo[id(t), tag] = (t, make(t))
    return got[1]


def _shared_dict(t: tuple, memo: dict[Any, tuple[Any, ...]],
                 checked: dict[tuple[int, frozenset], Any], kinds: frozenset = _INT) -> dict:
    """:func:`_dict` of *t*, one dict for one stored content: a fleet's
    models share most of theirs (writable masks, vCPU-feature effects,
    firmware), as the models of copies of one profile always have (models
    are values, never changed in place), and the engine then compares them
    by identity rather than item by item."""
    keys, values = t
    got = memo.get((id(keys), id(values)))
    if got is None or got[0] is not keys or got[1] is not values:
        got = memo[id(keys), id(values)] = (keys, values, _dict(t, checked, kinds))
    return got[2]


def _values(t: tuple, memo: dict[Any, tuple[Any, ...]],
            checked: dict[tuple[int, frozenset], Any]) -> dict:
    """A model's register values as stored (:meth:`_Sharer.delta`): a dict
    of its own (a distinct profile's values are its own)."""
    if len(t) == 2:
        return _dict(t, checked)
    keys, base, changed, values = t
    if len(changed) != len(values):
        raise ValueError("keys and values")
    got = _shared_dict((keys, base), memo, checked).copy()
    got.update(zip(_of(changed, checked, _STR), _of(values, checked)))
    if len(got) != len(keys):
        raise ValueError("a changed register the base does not have")
    return got


def _dec_model(t: tuple, label: str, memo: dict[Any, tuple[Any, ...]],
               checked: dict[tuple[int, frozenset], Any]) -> CpuModel:
    """The model of a record, under *label*.  Its parts are one object for
    one stored content (*memo*, as :func:`_frozen` and :func:`_shared_dict`)."""
    (values, writable, imp_id, impls, name, off, effects, firmware, reg_list, platform) = t
    if not isinstance(name, str) or not name or type(imp_id) is not bool:
        raise ValueError("model name")
    return CpuModel(_values(values, memo, checked), _shared_dict(writable, memo, checked),
                    imp_id, (label,), _of(impls, checked), name=name,
                    vcpu_off=_of(off, checked, _STR),
                    vcpu_effects=_frozen(effects, memo, lambda t: {
                        f: _shared_dict(e, memo, checked) for f, e in t}, "effects"),
                    firmware=_shared_dict(firmware, memo, checked, _INT_OR_NONE),
                    reg_list=None if reg_list is None else _frozen(reg_list, memo, _frozenset),
                    platform=_frozen(platform, memo, _dec_platform))


def _frozenset(t: Any) -> frozenset[int]:
    if type(t) is not tuple or not _INT.issuperset(map(type, t)):
        raise ValueError("not a set of numbers")
    return frozenset(t)


_STR_OR_NONE = frozenset((str, type(None)))


def _enc_profile(p: HostProfile, share: _Sharer) -> tuple:
    """A host profile as plain values: (its own part, the part hosts of one
    kind share).  Each register is one shared tuple (a fleet's distinct
    profiles differ in a few); the shared part is one object for the hosts
    that have it, so it is checked and rebuilt once."""
    q, caps = p.qemu, p.capabilities
    shared = (p.machine, p.kernel_release, p.kernel_version, p.tool_version,
              share.tup((q.status, q.path, q.version, q.sysreg, q.detail)),
              share.tup(p.vcpu_features), share.tup(caps),
              share.tup(n for n, _ in caps.values()), share.tup(v for _, v in caps.values()),
              share.tup(x for c in p.cpus for x in (c.cpu, c.midr, c.revidr)),
              p.masks_known,
              None if p.vcpu_off is None else tuple(
                  (share.tup(o.features), share.mapping(o.registers),
                   None if o.list_removed is None else share.tup(sorted(o.list_removed)),
                   None if o.list_added is None else share.tup(sorted(o.list_added)))
                  for o in p.vcpu_off),
              share.tup((p.loader.status, p.loader.path)),
              None if p.firmware is None else share.mapping(p.firmware),
              None if p.reg_list is None else share.tup(sorted(p.reg_list)),
              _enc_platform(p.platform, share))
    tuples, scalars = share.tuples, share.scalars
    regs = []
    for r in p.registers:       # share.tup, inline: ~190 a profile
        t = (r.name, *r.encoding, r.kvm_id, r.mask_index, r.value, r.writable)
        got = tuples.get(t)
        if got is None:
            got = tuples[t] = tuple(map(scalars.setdefault, t, t))
        regs.append(got)
    # registers as (base, None), or (base, (places, registers there)) when
    # few differ from the first profile of this shared part stored
    # (a distinct host of a kind: a list copy and a few items to read back)
    part = share.parts.setdefault((tuple(map(type, shared)), shared), shared)
    own = tuple(regs)
    base = share.bases.setdefault((id(part), len(own)), own)
    changes = None
    if base is not own:
        places = [i for i, (a, b) in enumerate(zip(base, own)) if a is not b]
        if len(places) * 4 > len(own):
            base = own
        elif places:
            changes = (share.tup(places), tuple(own[i] for i in places))
    return ((p.hostname, p.probed_at, share.mapping(p.fingerprint.components), base, changes),
            part)


def _typed(t: Any, kinds: tuple[frozenset, ...]) -> tuple:
    """*t*, a tuple whose items have the types *kinds* gives, one each;
    :raise ValueError: otherwise."""
    if type(t) is not tuple or len(t) != len(kinds) or not all(
            type(v) in k for v, k in zip(t, kinds)):
        raise ValueError("stored values of the wrong kind")
    return t


_S, _SN, _I, _IN = _STR, _STR_OR_NONE, _INT, _INT_OR_NONE
_REGISTER = (_S, _I, _I, _I, _I, _I, _I, _IN, _IN, _IN)


def _cpus(t: Any) -> tuple[CpuIdentity, ...]:
    if type(t) is not tuple or len(t) % 3:
        raise ValueError("cpus")
    return tuple(CpuIdentity(*_typed(t[i:i + 3], (_I, _IN, _IN))) for i in range(0, len(t), 3))


def _dec_shared(t: tuple, memo: dict[Any, tuple[Any, ...]],
                checked: dict[tuple[int, frozenset], Any]) -> dict[str, Any]:
    """The fields of a profile's shared part (see :func:`_enc_profile`)."""
    (machine, release, version, tool, qemu, features, cap_names, cap_numbers, cap_values,
     cpus, masks_known, vcpu_off, loader, firmware, reg_list, platform) = t
    _typed((machine, release, version, tool), (_S,) * 4)
    numbers, values = _of(cap_numbers, checked), _of(cap_values, checked)
    if not len(cap_names) == len(numbers) == len(values) or type(masks_known) is not bool:
        raise ValueError("profile")
    return dict(
        machine=machine, kernel_release=release, kernel_version=version, tool_version=tool,
        qemu=QemuInfo(*_typed(qemu, (_S, _SN, _SN, _S, _SN))),
        vcpu_features=list(_of(features, checked, _STR)),
        capabilities=dict(zip(_of(cap_names, checked, _STR), zip(numbers, values))),
        cpus=list(_cpus(cpus)), masks_known=masks_known,
        vcpu_off=None if vcpu_off is None else [
            VcpuOffValues(_of(f, checked, _STR), _dict(regs_off, checked),
                          None if rm is None else _frozen(rm, memo, _frozenset),
                          None if add is None else _frozen(add, memo, _frozenset))
            for f, regs_off, rm, add in vcpu_off],
        loader=LoaderInfo(*_typed(loader, (_S, _SN))),
        firmware=None if firmware is None else _dict(firmware, checked, _INT_OR_NONE),
        reg_list=None if reg_list is None else _frozen(reg_list, memo, _frozenset),
        platform=_frozen(platform, memo, _dec_platform))


def _registers(regs: tuple, registers: dict[int, ProfileRegister], alive: list[tuple]
               ) -> list[ProfileRegister]:
    """Stored registers as objects, one for one stored register (*registers*:
    id of a stored register -> it, each stored one kept in *alive* so that
    its id is not another's)."""
    got: list[Any] = list(map(registers.get, map(id, regs)))
    if not all(got):            # (not "None in got": that calls each register's __eq__)
        for i, r in enumerate(regs):
            if got[i] is None:
                name, op0, op1, crn, crm, op2, kvm_id, index, value, mask = _typed(r, _REGISTER)
                got[i] = registers[id(r)] = ProfileRegister(name, (op0, op1, crn, crm, op2),
                                                            kvm_id, index, value, mask)
                alive.append(r)
    return got


def _dec_profile(t: tuple, memo: dict[Any, tuple[Any, ...]],
                 checked: dict[tuple[int, frozenset], Any],
                 registers: dict[int, ProfileRegister], alive: list[tuple]) -> HostProfile:
    """The profile of a record.  The hosts of one stored shared part share
    its objects, lists and dicts included (profiles are values, never
    changed in place: copies of one content are one profile object
    already); its registers are one object for one stored register
    (:func:`_registers`): compare_many judges a shared register object
    once."""
    own, shared = t
    hostname, probed, fingerprint, base, changes = own
    if type(hostname) is not str or type(probed) is not str or type(base) is not tuple:
        raise ValueError("profile")
    got = _frozen(base, memo, lambda b: _registers(b, registers, alive), "registers").copy()
    if changes is not None:
        places, regs = changes
        if (type(regs) is not tuple or len(_of(places, checked)) != len(regs)
                or (places and min(places) < 0)):
            raise ValueError("profile")
        for i, r in zip(places, _registers(regs, registers, alive)):
            got[i] = r          # (an IndexError for a place beyond the base)
    return HostProfile(hostname=hostname, probed_at=probed, registers=got,
                       fingerprint=Fingerprint(_dict(fingerprint, checked, _STR)),
                       **_frozen(shared, memo, lambda x: _dec_shared(x, memo, checked), "host"))


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
        self.header = (FORMAT, __version__, file_stamp(kb_path), code_stamp(_CODE))
        self.shards: dict[str, _Shard] = {}
        self.model_memo: dict[Any, tuple[Any, ...]] = {}   # (id, tag) -> (stored, its part)
        self.checked: dict[tuple[int, frozenset], Any] = {}   # stored tuples of the right types
        self.registers: dict[int, ProfileRegister] = {}       # id of a stored register -> it
        self.alive: list[tuple] = []            # every stored register in self.registers
        self.by_head: dict[str, _Shard] = {}     # a path's directory part as given -> its shard
        self.hits = self.misses = self.stored = 0

    # reading

    def _shard(self, directory: str) -> _Shard:
        shard = self.shards.get(directory)
        if shard is None:
            digest = sha256(os.fsencode(directory)).hexdigest()[:24]
            shard = self.shards[directory] = _Shard(
                os.path.join(self.directory, digest + SHARD_SUFFIX), directory)
            loaded = self._load(shard.path, directory)
            if loaded is None:
                shard.dirty = os.path.exists(shard.path)    # rewrite what does not read back
            else:
                shard.entries = loaded
        return shard

    def _load(self, path: str, directory: str) -> dict[str, tuple[Identity, Entry]] | None:
        body = read_cache(path, _MAGIC)     # (only a shard this user alone can have written)
        if body is None:
            return None
        try:
            header, shard_dir, entries = marshal.loads(body)
            if header != self.header or shard_dir != directory or type(entries) is not dict:
                return None
            for name, (ident, (key, checked, record)) in entries.items():
                if (type(name) is not str or type(ident) is not tuple or len(ident) != 5
                        or not (key is None or type(key) is bytes) or type(checked) is not bool
                        or not (record is None or (type(record) is tuple
                                                   and len(record) == 2))):
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
        # the directory made absolute once, not each of its thousands of files
        cut = path.rfind(os.sep) + 1            # ("dir/", "name"), ("/", "name"), ("", "name")
        head, name = path[:cut], path[cut:]
        shard = self.by_head.get(head)
        if shard is None:
            shard = self.by_head[head] = self._shard(os.path.abspath(head or os.curdir))
        got = shard.entries.get(name)
        if got is not None and got[0] == _identity(st):
            self.hits += 1
            return got[1], st
        self.misses += 1
        return None, st

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

    def host(self, record: tuple) -> HostProfile | None:
        """The host profile of a record; None when the record holds none (a
        run that did not keep it: forked readers send the model only) or it
        does not rebuild (read the file instead)."""
        try:
            if record[1] is None or isinstance(record[1], HostProfile):    # stored in this run
                return record[1]
            return _dec_profile(record[1], self.model_memo, self.checked, self.registers,
                                self.alive)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None

    # writing

    def listed(self, directory: str, names: list[str]) -> None:
        """*names* are every input file of *directory* (a directory given
        whole): entries of other names can go."""
        shard = self._shard(os.path.abspath(directory))
        shard.listed = set(names)

    def store(self, path: str, before: os.stat_result, size: int, key: bytes | None,
              checked: bool, found: CpuModel | None, profile: HostProfile | None = None
              ) -> None:
        """Remember what reading *path* (stat *before* the read, *size*
        bytes read) gave: *found* (its own model) and *profile* (its host
        profile, when the reader kept it), or None for a copy of a profile
        read before in the same run (content *key*).  Not stored when the
        file changed while it was read or too recently."""
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
        record = None if found is None else (found, profile)     # encoded at save
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
                    if type(record[1]) is tuple and len(record[1]) == 2:
                        part = record[1][1]     # new profiles of this kind: the same part
                        share.parts.setdefault((tuple(map(type, part)), part), part)
        for shard in todo:
            entries = {}
            for name, (ident, (key, checked, record)) in shard.entries.items():
                if shard.listed is not None and name not in shard.listed:
                    continue
                if record is not None and isinstance(record[0], CpuModel):
                    p = record[1]
                    record = (_enc_model(record[0], share),
                              None if p is None else _enc_profile(p, share))
                entries[name] = (ident, (key, checked, record))
            shard.entries = {n: e for n, e in shard.entries.items() if n in entries}
            body = marshal.dumps((self.header, shard.directory, entries))
            try:
                write_cache(shard.path, _MAGIC, body)
            except Exception:       # noqa: BLE001 -- a cache never fails its caller
                return
            shard.dirty = False


def open_cache(directory: str | None, kb_path: str) -> ModelCache | None:
    """The cache in *directory* (None or "": no cache), or None when the
    knowledge base is not a file (nothing to stamp)."""
    if not directory or not os.path.isfile(kb_path):
        return None
    return ModelCache(directory, kb_path)
