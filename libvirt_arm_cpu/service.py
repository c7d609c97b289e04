"""The service layer: what the CLI, the Python API and the hook do alike.

Each edge (``cli``/``commands``, ``api``, ``hook``) parses its own input and
reports in its own way; the work between, loading and checking inputs,
finding this host's profile and saved models, translating and validating a
domain, is here once.  It sits on the pure engine (baseline, compare,
translate) and the formats (profile, cpumodel, domain) and does the I/O they
must not.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu import settings as settings_mod
from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.model import Translation
from libvirt_arm_cpu.errors import STDIN, ParseError, UsageError, WrongKind, path_label
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.formats.fleet import check_identity, profile_key
from libvirt_arm_cpu.formats.profile import from_xml as profile_from_xml, read_profile
from libvirt_arm_cpu.model import HostProfile
from libvirt_arm_cpu.formats.profile import validate as validate_profile
from libvirt_arm_cpu.formats.modelcache import Entry, ModelCache, open_cache
from libvirt_arm_cpu.formats.kinds import CPU_MODEL, HOST_PROFILE, REGISTER_DUMP, kind_of, wrong_kind

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (2 ms a start)
if TYPE_CHECKING:
    from typing import Any

    from libvirt_arm_cpu.engine.translate import Resolution
    from libvirt_arm_cpu.engine.validate import Validation
    from libvirt_arm_cpu.formats.domain import Domain

# Translating, validating and domains are imported where used: a fleet
# command (cpu-baseline, cpu-compare over thousands of hosts) needs none of
# them, and their imports are milliseconds of its start.

__all__ = ["bulk", "host_profile", "find_model", "load_inputs", "load_hosts", "load_input",
           "check_against_kb",
           "model_cache",
           "resolve_model", "resolve_cpu", "model_features", "parse_domain", "translate_domain",
           "validate_translated", "input_label", "precheck_defined"]


def model_cache(kb: registers.KnowledgeBase, directory: str | None = None,
                enabled: bool = True) -> ModelCache | None:
    """The profile cache cpu-baseline reads through
    (:mod:`libvirt_arm_cpu.formats.modelcache`): in *directory*, else
    ``LIBVIRT_ARM_CPU_CACHE_DIR``, else ``profiles/`` beside the settings'
    host profile; None when not *enabled*, or when the settings file does
    not read (no cache rather than an error: it is only a cache)."""
    if not enabled:
        return None
    if directory is None:
        try:
            conf = settings_mod.load()
        except ParseError:
            return None
        directory = settings_mod.cache_dir(conf.profile)
    return open_cache(directory, kb.path)


def input_label(path: str) -> str:
    """The name a host or model read from *path* goes by in messages: the
    file's name without directory and extension, ``<stdin>`` for ``-``."""
    return STDIN if path == "-" else os.path.splitext(os.path.basename(path))[0]


# -- hosts and models ----------------------------------------------------------

def host_profile(path: str | None) -> HostProfile:
    """--host PROFILE, else the settings' profile (this host's cache,
    probed again when stale, unless the settings say never)."""
    if path:
        return read_profile(path)
    from libvirt_arm_cpu.host.hostcache import configured_profile
    return configured_profile(settings_mod.load())


def find_model(name: str) -> CpuModel:
    return modelstore.find(name)


def expand_paths(paths: list[str], cache: ModelCache | None = None) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            names = [n for n in os.listdir(p) if n.endswith(".xml")]
            found = sorted(os.path.join(p, n) for n in names)
            if not found:
                raise UsageError(f"{p}: no *.xml host profiles in this directory")
            if cache is not None:
                cache.listed(p, names)
            out.extend(found)
        else:
            out.append(p)
    return out


def load_inputs(paths: list[str], kb: registers.KnowledgeBase, validate: bool = False,
                cache: ModelCache | None = None, other: OtherReader | None = None,
                profiles: bool = True, jobs: int | None = 1
                ) -> list[tuple[str, CpuModel, HostProfile | None]]:
    """Profiles and saved models, each with a label.  Profiles with the same
    content (a fleet's many hosts of one CPU) are parsed once (see
    :mod:`libvirt_arm_cpu.formats.fleet`).  Every profile goes through the
    reader's own checks (the safe XML reader, every value and name, the
    knowledge base); *validate* adds the schema (``--validate``: 30 ms a
    distinct profile, the probe validated each when it wrote it).

    *profiles* False: the caller uses the models only, and every input's
    profile is given as None.  *cache*
    (:mod:`libvirt_arm_cpu.formats.modelcache`, the model and the profile
    each file gives): a profile file unchanged since a run stored it is not
    read again, and the answer is the same as reading it.  *other*: how an input that
    is not a host profile or register dump is read (cpu-baseline's libvirt
    ``<cpu>`` inputs, :func:`libvirt_arm_cpu.cpuinputs.baseline_inputs`;
    default: as a saved model).  *jobs*: processes reading profiles at once
    when there are hundreds to read (None: one a CPU; forked: for commands,
    not for callers with threads); the answer, and the first error, are
    those of reading them one by one."""
    return _read_all(paths, kb, validate, cache, other, profiles, True, jobs)  # type: ignore


def load_hosts(paths: list[str], kb: registers.KnowledgeBase, validate: bool = False,
               cache: ModelCache | None = None, other: OtherReader | None = None,
               jobs: int | None = 1) -> list[tuple[str, HostProfile | None]]:
    """The host profiles of *paths* (files and directories, as
    :func:`load_inputs` reads them, *other* and *jobs* too, through
    *cache*), each with its label; None for an input that is a saved model.
    Copies of one content are one object; a file the cache answers for is
    not read, nor its model rebuilt (compare over a fleet needs only the
    profiles)."""
    return [(label, p) for label, _, p in
            _read_all(paths, kb, validate, cache, other, True, False, jobs)]


def _read_all(paths: list[str], kb: registers.KnowledgeBase, validate: bool,
              cache: ModelCache | None, other: OtherReader | None, profiles: bool,
              models: bool, jobs: int | None
              ) -> list[tuple[str, CpuModel | None, HostProfile | None]]:
    """:func:`load_inputs`; *models* False: a model the cache would rebuild
    is given as None (others are given as read)."""
    seen: dict[bytes, tuple[CpuModel | None, HostProfile | None]] = {}
    out: list[tuple[str, CpuModel | None, HostProfile | None]] = []
    with bulk(len(paths) > 1 or any(os.path.isdir(p) for p in paths)):
        try:
            files = expand_paths(paths, cache)
            looked = [cache.lookup(p) if cache is not None and p != "-" else (None, None)
                      for p in files]
            ahead = _ReadAhead(files, looked, kb, validate, profiles, jobs)
            with ahead:
                for i, (path, (entry, before)) in enumerate(zip(files, looked)):
                    out.extend(_cached_input(path, input_label(path), kb, cache, seen, validate,
                                             profiles, models, other, entry, before,
                                             ahead.get(i)))
        finally:
            if cache is not None:
                cache.save()
    return out


OtherReader = Callable[[bytes, str, str, registers.KnowledgeBase,
                        "dict[bytes, tuple[CpuModel, HostProfile]]", bool],
                       "list[tuple[str, CpuModel, HostProfile | None]]"]


@contextmanager
def bulk(on: bool = True) -> Iterator[None]:
    """Work on a fleet (reading thousands of profiles, the engine over
    them): no garbage collection meanwhile -- what is made holds no cycles,
    and the collections cost 10-30 % of such a run -- and none of it
    counted young afterwards (gc.freeze resets the young generation's count,
    unfreeze moves those objects to the old one), so enabling collection
    again collects nothing at once.  Nested: only the outermost acts."""
    enabled = gc.isenabled()
    if on and enabled:
        gc.disable()
    try:
        yield
    finally:
        if on and enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


# Reading ahead in other processes: worth it from a few hundred profiles to
# read (forking and a pool cost ~20 ms; a profile ~2 ms).
PARALLEL_MIN = 200
_WORKER: tuple = ()          # (kb, validate, profiles), inherited by the forked readers


def _read_chunk(chunk: list[tuple[int, str]]) -> list[tuple[int, tuple]]:
    """In a reader process: each file of *chunk* read as :func:`_load`
    would, the first of each content in full, the others' identity part
    only, as ("full", key, model, profile, size), ("copy", key, size);
    ("again",) where the main process reads it itself (not a profile, or
    any error: it then fails there exactly as it would have)."""
    kb, validate, profiles = _WORKER
    keys: set[bytes] = set()
    out: list[tuple[int, tuple]] = []
    for i, path in chunk:
        try:
            data = read_input(path)
            if b"<hostprofile" not in data[:400]:
                out.append((i, ("again",)))
                continue
            key = profile_key(data)
            if key is not None and key in keys:
                check_identity(data, path)
                out.append((i, ("copy", key, len(data))))
                continue
            model, p, key, _ = _load(data, path, input_label(path), kb, None, validate)
            if key is not None:
                keys.add(key)
            out.append((i, ("full", key, model, p if profiles else None, len(data))))
        except Exception:            # noqa: BLE001 -- read again where it is reported
            out.append((i, ("again",)))
    return out


def _init_reader(state: tuple) -> None:
    global _WORKER
    _WORKER = state


class _ReadAhead:
    """The profiles :func:`load_inputs` must read (not answered by the
    cache), read by *jobs* forked processes in contiguous chunks, in order;
    :meth:`get` waits for an input's result (None: read it here)."""

    def __init__(self, files: list[str], looked: list, kb: registers.KnowledgeBase,
                 validate: bool, profiles: bool, jobs: int | None) -> None:
        self.pool: Any = None
        self.futures: list[Any] = []
        self.chunk_of: dict[int, int] = {}
        self.results: dict[int, tuple] = {}
        if jobs is None:
            jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if jobs < 2:
            return
        todo = []
        keys: set[bytes] = set()     # contents the cache answers for: their copies too
        for i, (path, (entry, _)) in enumerate(zip(files, looked)):
            if entry is not None:
                key, _, record = entry
                if _answers(entry, validate, profiles):
                    if key is not None:
                        keys.add(key)
                    continue
                if record is None and key in keys:
                    continue
            if path != "-":
                todo.append((i, path))
        if len(todo) < PARALLEL_MIN:
            return
        size = max(16, len(todo) // (jobs * 8))
        chunks = [todo[k:k + size] for k in range(0, len(todo), size)]
        try:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self.pool = ProcessPoolExecutor(jobs, multiprocessing.get_context("fork"),
                                            initializer=_init_reader,
                                            initargs=((kb, validate, profiles),))
            self.futures = [self.pool.submit(_read_chunk, c) for c in chunks]
        except (OSError, ValueError, ImportError, RuntimeError):
            self.close()
            return
        self.chunk_of = {i: k for k, c in enumerate(chunks) for i, _ in c}

    def close(self) -> None:
        if self.pool is not None:
            # pending chunks are dropped; running ones (a few hundred ms) end
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, i: int) -> tuple | None:
        k = self.chunk_of.get(i)
        if k is None:
            return None
        if i not in self.results:
            try:
                self.results.update(self.futures[k].result())
            except Exception:        # noqa: BLE001 -- a broken reader: read here
                self.chunk_of = {}
                return None
            self.futures[k] = None
        return self.results.pop(i, None)


def _answers(entry: Entry, validate: bool, profiles: bool) -> bool:
    """Can a cache *entry* of a file stand for reading it: a record of its
    own, stored by a validating run when *validate*, holding the profile
    when *profiles* are wanted?"""
    _, checked, record = entry
    return (record is not None and (checked or not validate)
            and (not profiles or record[1] is not None))


def _cached_input(path: str, label: str, kb: registers.KnowledgeBase, cache: ModelCache | None,
                  seen: dict[bytes, tuple[CpuModel | None, HostProfile | None]],
                  validate: bool, profiles: bool, models: bool, other: OtherReader | None,
                  entry: Entry | None, before: os.stat_result | None, ahead: tuple | None
                  ) -> Sequence[tuple[str, CpuModel | None, HostProfile | None]]:
    """One input of :func:`_read_all`: from *cache* when its *entry*
    (looked up at stat *before*) is this very file, else read (by a reader
    process: *ahead*, else here)."""
    if entry is not None:
        key, checked, record = entry
        if key is not None and key in seen:
            # a copy of a profile read before in this run, as _load gives it
            first, first_p = seen[key]
            return [(label, _copy_of(first, label), first_p if profiles else None)]
        if cache is not None and _answers(entry, validate, profiles):
            assert record is not None
            cached = cache.get(record, label) if models else None
            p = cache.host(record) if profiles else None
            if (cached is not None or not models) and (p is not None or not profiles):
                if key is not None:
                    seen[key] = (cached, p)
                return [(label, cached, p)]
    if ahead is not None and ahead[0] == "copy" and ahead[1] in seen:
        # read elsewhere: its identity part checked, as _load checks a copy's
        first, first_p = seen[ahead[1]]
        if cache is not None and before is not None:
            cache.store(path, before, ahead[2], ahead[1], False, None)
        return [(label, _copy_of(first, label), first_p if profiles else None)]
    if ahead is not None and ahead[0] == "full" and (ahead[1] is None or ahead[1] not in seen):
        _, key, model, p, size = ahead
        if key is not None:
            seen[key] = (model, p)
        if cache is not None and before is not None:
            cache.store(path, before, size, key, validate, model, p)
        return [(label, model, p if profiles else None)]
    data = read_input(path)
    if other is not None and kind_of(data) not in (HOST_PROFILE, REGISTER_DUMP):
        return other(data, path, label, kb, seen, validate)     # type: ignore[arg-type]
    model, p, key, copy = _load(data, path, label, kb, seen, validate)
    if cache is not None and before is not None and (copy or p is not None):
        cache.store(path, before, len(data), key, validate and not copy,
                    None if copy else model, None if copy else p)
    return [(label, model, p if profiles else None)]


def _renamed(m: CpuModel, label: str) -> CpuModel:
    """dataclasses.replace(m, hosts=(label,)), at a third of its cost (a
    fleet's copies are thousands)."""
    return CpuModel(m.values, m.writable, m.imp_id_writable, (label,), m.implementations,
                    m.name, m.vcpu_off, m.vcpu_effects, m.firmware, m.reg_list, m.platform,
                    m.host_fields)


def _copy_of(m: CpuModel | None, label: str) -> CpuModel | None:
    """The model of a copy of a profile read before: *m* renamed, or None
    (_read_all without models: the first one's was not rebuilt)."""
    return None if m is None else _renamed(m, label)


def load_input(data: bytes, path: str, label: str, kb: registers.KnowledgeBase,
               seen: dict[bytes, tuple[CpuModel, HostProfile]] | None = None,
               validate: bool = True) -> tuple[CpuModel, HostProfile | None]:
    """One input already read: a host profile (validated, checked against
    the knowledge base; one already in *seen* only has its identity
    checked) or a saved model (profile None)."""
    model, p, _, _ = _load(data, path, label, kb, seen, validate)   # type: ignore[arg-type]
    assert model is not None        # (*seen* holds models: they are rebuilt)
    return model, p


def _load(data: bytes, path: str, label: str, kb: registers.KnowledgeBase,
          seen: dict[bytes, tuple[CpuModel | None, HostProfile | None]] | None, validate: bool
          ) -> tuple[CpuModel | None, HostProfile | None, bytes | None, bool]:
    """:func:`load_input`, and the profile's content key and whether it was
    a copy of one in *seen*."""
    if b"<hostprofile" not in data[:400]:
        if kind_of(data) == REGISTER_DUMP:
            raise wrong_kind(path, REGISTER_DUMP, f"{HOST_PROFILE} or {CPU_MODEL}")
        return model_from_xml(data, path, kb_load.features()), None, None, False
    key = profile_key(data)
    if seen is not None and key is not None and key in seen:
        check_identity(data, path)
        model, p = seen[key]
        # the same model under this host's name: every part shared (baseline
        # groups inputs by identity first), none dropped
        return _copy_of(model, label), p, key, True
    if validate:
        validate_profile(data, path)
    p = profile_from_xml(data, path)
    if p.machine not in ("aarch64", "arm64"):
        raise ParseError(path, None, f"profile of a {p.machine} machine, not aarch64")
    check_against_kb(p, kb, path)
    model = CpuModel.from_profile(p, kb, label)
    if seen is not None and key is not None:
        seen[key] = (model, p)
    return model, p, key, False


def check_against_kb(p: HostProfile, kb: registers.KnowledgeBase, path: str) -> None:
    """A profile must agree with the knowledge base: known names at their
    encodings, and no RES1 bit clear (a garbled or foreign file otherwise).

    :raise ParseError: naming the file and register.
    """
    for r in p.registers:
        reg = kb.by_encoding(*r.encoding)
        expected = reg.name if reg else registers.generic_name(*r.encoding)
        if r.name != expected:
            raise ParseError(path, None, f"register {r.name} at encoding "
                             f"{registers.generic_name(*r.encoding)} is {expected} in the "
                             f"knowledge base")
        if reg is not None and r.value is not None:
            clear = reg.res1_mask & ~r.value
            if clear:
                raise ParseError(path, None, f"{r.name} = {r.value:#x} has RES1 bits {clear:#x} "
                                 f"clear: not a value a CPU reports")


def resolve_model(spec: str) -> tuple[str, CpuModel]:
    """A model file, or the name of a saved model (libvirt_arm_cpu.modelstore)."""
    if os.path.exists(spec) or spec == "-":
        return spec, model_from_xml(read_input(spec), spec, kb_load.features())
    if os.sep in spec or spec.endswith(".xml"):
        raise UsageError(f"{spec}: no such file (and a saved CPU model is named without a "
                         f"path)")
    return spec, modelstore.find(spec)


def resolve_cpu(spec: str, kb: registers.KnowledgeBase
                ) -> tuple[str, CpuModel, HostProfile | None]:
    """A model file, a saved model's name, or a host profile (which stands
    for a host-passthrough guest of that host): (label, model, profile)."""
    if os.path.exists(spec) or spec == "-":
        data = read_input(spec)
        if b"<hostprofile" in data[:400]:
            model, profile = load_input(data, spec, input_label(spec), kb)
            return spec, model, profile
        if kind_of(data) == REGISTER_DUMP:
            raise wrong_kind(spec, REGISTER_DUMP, f"{CPU_MODEL} or {HOST_PROFILE}")
        return spec, model_from_xml(data, spec, kb_load.features()), None
    source, model = resolve_model(spec)
    return source, model, None


def model_features(model: CpuModel, all_names: bool) -> list[str]:
    present = kb_load.features().present(model.values)
    return [f.key for f in present if all_names or f.kind == "hwcap"]


# -- domains -------------------------------------------------------------------

def precheck_defined(conn, dom) -> str | None:
    """The libvirt hook's check of a start of *dom*, just defined through
    *conn*, made now where the hook will make it: this host (a local qemu
    connection), with the hook's settings (host.startcheck.precheck).  Its
    first start is then answered from the hook's memory.  Returns the
    refusal the start will get; None when allowed or not checked here (a
    remote connection, no hook profile on this host).

    :raise Error: the hook's settings do not read (the hook checks with its
        defaults then), or the domain's XML as libvirt gives it does not.
    """
    import libvirt
    try:
        uri = conn.getURI()
        local = uri.startswith("qemu") and uri.partition("://")[2].startswith("/")
        xml = dom.XMLDesc(0) if local else ""
    except libvirt.libvirtError:
        return None         # the connection's trouble, not the domain's: the hook checks
    if not local:
        return None
    from libvirt_arm_cpu.host.startcheck import precheck
    return precheck(dom.name(), xml.encode(), settings_mod.load())


def parse_domain(data: bytes, source: str) -> Domain:
    """A domain XML; a host profile, CPU model or register dump given
    instead is named as what it is.

    :raise WrongKind: for those; :raise ParseError: when it is not a domain.
    """
    from libvirt_arm_cpu.formats.domain import Domain
    try:
        return Domain.parse(data, source)
    except ParseError:
        found = kind_of(data)
        if found is None:
            raise
        raise WrongKind(source, found, "a domain XML",
                        "give a libvirt domain's XML ('virsh dumpxml NAME' prints one)") from None


def translate_domain(data: bytes, source: str, host: HostProfile,
                     method: str = "auto") -> tuple[Domain, Resolution]:
    from libvirt_arm_cpu.engine.translate import resolve
    from libvirt_arm_cpu.engine.validate import CpuMismatch
    from libvirt_arm_cpu.formats.domain import LOADER_ENV
    dom = parse_domain(data, source)
    where = path_label(source)
    base = dom.original()
    cpu = base.cpu
    if cpu is None:
        raise UsageError(f"{where}: the domain has no <cpu>: nothing to translate")
    if dom.arch and dom.arch != "aarch64":
        raise UsageError(f"{where}: the domain is for {dom.arch}, not aarch64")
    taken = sorted(set(base.qemu_env()) & set(LOADER_ENV))
    if taken:
        raise UsageError(f"{where}: the domain already sets {taken[0]} in <qemu:commandline>: "
                         f"the loader method needs it (remove it, or keep the domain "
                         f"untranslated)")
    r = resolve(cpu, host, kb_load.registers(), kb_load.features(), kb_load.dependencies(), find_model,
                method)
    if base.pmu_off and "pmu" not in r.vcpu_off:
        raise CpuMismatch(f"{where}: the domain switches the PMU off (<features><pmu "
                          f"state='off'/>), but CPU model '{r.model}' has it: use a model "
                          f"with the PMU off, or remove <pmu state='off'/>")
    t = Translation("", r.values, r.properties, host.hostname, host.fingerprint.digest, r.model,
                    method=r.method, vcpu_off=r.vcpu_off,
                    firmware=r.firmware, reg_list=r.reg_list, platform=r.platform)
    return base.translated(t, r.env), r


def validate_translated(dom: Domain, host: HostProfile) -> Validation:
    """The hook's check of a translated domain against *host*."""
    from libvirt_arm_cpu.engine.validate import validate_translation
    t = dom.translation
    assert t is not None
    return validate_translation(t, dom.cpu_arguments(), dom.loader_env(), host,
                                kb_load.registers(), dom.gic_version, dom.sve_lengths)


