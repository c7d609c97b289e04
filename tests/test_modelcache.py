"""The profile cache of cpu-baseline (formats/modelcache.py, service.load_inputs):
the same answer as reading every file, never a stale or wrong one."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from libvirt_arm_cpu import service, settings
from libvirt_arm_cpu.cpuinputs import baseline_inputs
from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.formats import modelcache

HOSTS = Path(__file__).resolve().parent / "data" / "hosts"
FIXTURES = sorted(HOSTS.glob("*.xml"))
N1 = HOSTS / "neoverse-n1-qemu7.2-linux6.12.xml"


@pytest.fixture
def not_racy(monkeypatch):
    """Files written by a test are seconds old at most: store them anyway
    (the racy-file rule has its own test)."""
    monkeypatch.setattr(modelcache, "RACY_SECONDS", 0.0)


def load(paths, kb, cache_dir=None, validate=False):
    cache = modelcache.open_cache(str(cache_dir), kb.path) if cache_dir else None
    out = service.load_inputs([str(p) for p in paths], kb, validate, cache,
                              other=baseline_inputs, profiles=False)
    return out, cache


def models(inputs):
    return [(label, m) for label, m, _ in inputs]


def shards(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*" + modelcache.SHARD_SUFFIX))


def fleet(tmp: Path, sources, n: int) -> Path:
    """*n* hosts cycling over *sources*, each with its own host name."""
    d = tmp / "fleet"
    d.mkdir()
    for i in range(n):
        text = Path(sources[i % len(sources)]).read_text()
        text = text.replace('hostname="', f'hostname="h{i:03d}-', 1)
        (d / f"h{i:03d}.xml").write_text(text)
    return d


# -- the same answer --------------------------------------------------------------

def test_every_fixture_same_models_cold_and_warm(kb, tmp_path, not_racy):
    """Every bundled profile, the directory and each file alone: the models
    read through the cache (storing, then answering) equal a plain read."""
    plain, _ = load([HOSTS], kb)
    cold, cache = load([HOSTS], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 0 and cache.stored == len(FIXTURES)
    warm, cache = load([HOSTS], kb, tmp_path / "c")
    assert cache is not None and cache.hits == len(FIXTURES) and cache.stored == 0
    assert models(plain) == models(cold) == models(warm)
    assert [m.hosts for _, m in models(warm)] == [m.hosts for _, m in models(plain)]
    for path in FIXTURES:
        alone, cache = load([path], kb, tmp_path / "c")
        assert cache is not None and cache.hits == 1
        assert models(alone) == models(load([path], kb)[0])


def test_copies_share_as_a_plain_read(kb, tmp_path, not_racy):
    """Copies of one content: the first's model object parts shared by the
    rest, as the plain read gives them (baseline groups by identity)."""
    d = fleet(tmp_path, FIXTURES[:3], 12)
    plain, _ = load([d], kb)
    load([d], kb, tmp_path / "c")
    warm, cache = load([d], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 12
    assert models(warm) == models(plain)
    for run in (plain, warm):
        ms = [m for _, m, _ in run]
        assert ms[0].values is ms[3].values and ms[0].writable is ms[9].writable
        assert ms[0].values is not ms[1].values


def test_a_copy_read_alone_is_parsed(kb, tmp_path, not_racy):
    """A file stored as a copy (only its identity part was checked) is
    read in full when no file of its content comes first."""
    d = fleet(tmp_path, [N1], 3)
    load([d], kb, tmp_path / "c")
    alone, cache = load([d / "h002.xml"], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 1 and cache.stored == 1    # parsed, now whole
    assert models(alone) == models(load([d / "h002.xml"], kb)[0])
    again, cache = load([d / "h002.xml"], kb, tmp_path / "c")
    assert cache is not None and cache.stored == 0 and models(again) == models(alone)


@pytest.mark.parametrize("option", [[], ["--pools"], ["--exclude-incompatible"]])
def test_cli_same_output(run, tmp_path, option, not_racy):
    d = fleet(tmp_path, FIXTURES, 40)
    argv = ["cpu-baseline", *option, "--json", str(d), str(N1)]
    plain = run(*argv, "--no-cache")
    assert plain.code == (1 if not option else 0), plain.err[:200]   # 18 kinds: no common model
    assert not (tmp_path / "c").exists()
    for _ in range(2):          # storing, then answering
        r = run(*argv, "--cache-dir", str(tmp_path / "c"))
        assert (r.code, r.out, r.err) == (plain.code, plain.out, plain.err)
    assert shards(tmp_path / "c")


def test_validate_needs_a_validated_entry(kb, tmp_path, not_racy):
    load([N1], kb, tmp_path / "c")
    _, cache = load([N1], kb, tmp_path / "c", validate=True)
    assert cache is not None and cache.stored == 1         # read and validated this time
    _, cache = load([N1], kb, tmp_path / "c", validate=True)
    assert cache is not None and cache.stored == 0 and cache.hits == 1


def test_renamed_is_replace(kb):
    (_, m, _), = load([N1], kb)[0]
    m = dataclasses.replace(m, vcpu_off=("sve",), firmware={"x": 1},
                            host_fields={"ID_AA64ISAR0_EL1": ("DP",)})
    assert service._renamed(m, "other") == dataclasses.replace(m, hosts=("other",))
    assert [f.name for f in dataclasses.fields(m)] == [
        "values", "writable", "imp_id_writable", "hosts", "implementations", "name",
        "vcpu_off", "vcpu_effects", "firmware", "reg_list", "platform", "host_fields"]


def test_errors_as_a_plain_read(kb, tmp_path, not_racy):
    d = fleet(tmp_path, [N1], 3)
    load([d], kb, tmp_path / "c")
    (d / "h001.xml").write_text("<hostprofile xmlns='urn:x-libvirt-arm-cpu:host:1'>")
    with pytest.raises(ParseError) as plain:
        load([d], kb)
    with pytest.raises(ParseError) as cached:
        load([d], kb, tmp_path / "c")
    assert str(cached.value) == str(plain.value)


# -- never stale ------------------------------------------------------------------

def lowered(text: str) -> str:
    """The same size, one register value lower (DP of ISAR0: 1 -> 0)."""
    old = 'name="ID_AA64ISAR0_EL1"'
    start = text.index(old)
    value = text.index('value="', start) + len('value="')
    v = int(text[value:value + 18], 16)
    new = f"0x{v & ~(0xf << 44):016x}"
    assert new != text[value:value + 18]
    return text[:value] + new + text[value + 18:]


def test_changed_file_same_size_and_mtime_misses(kb, tmp_path, not_racy):
    f = tmp_path / "h.xml"
    shutil.copyfile(N1, f)
    load([f], kb, tmp_path / "c")
    st = f.stat()
    time.sleep(0.05)                 # past the file system's timestamp tick
    with open(f, "r+") as fh:        # in place: same inode
        fh.write(lowered(f.read_text()))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))     # as cp -p / rsync -t would
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    got, cache = load([f], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 0
    assert models(got) == models(load([f], kb)[0])
    assert models(got)[0][1].values != models(load([N1], kb)[0])[0][1].values


def test_replaced_file_misses(kb, tmp_path, not_racy):
    """A new file renamed over the old one (a new inode), times copied."""
    f = tmp_path / "h.xml"
    shutil.copyfile(N1, f)
    load([f], kb, tmp_path / "c")
    st = f.stat()
    new = tmp_path / "new.tmp"
    new.write_text(lowered(N1.read_text()))
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(new, f)
    got, cache = load([f], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 0
    assert models(got) == models(load([f], kb)[0])
    assert models(got)[0][1].values != models(load([N1], kb)[0])[0][1].values


def test_recent_file_not_stored(kb, tmp_path):
    f = tmp_path / "h.xml"
    shutil.copyfile(N1, f)
    _, cache = load([f], kb, tmp_path / "c")
    assert cache is not None and cache.stored == 0


def test_other_knowledge_base_or_version_misses(kb, tmp_path, not_racy, monkeypatch):
    load([N1], kb, tmp_path / "c")
    monkeypatch.setattr(modelcache, "__version__", "0.0.0-other")
    _, cache = load([N1], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 0
    monkeypatch.undo()
    monkeypatch.setattr(modelcache, "RACY_SECONDS", 0.0)
    other_kb = tmp_path / "registers.xml"
    shutil.copyfile(kb.path, other_kb)
    cache = modelcache.open_cache(str(tmp_path / "c"), str(other_kb))
    assert cache is not None and cache.lookup(str(N1))[0] is None


def stored(cache_dir: Path) -> dict:
    """The entries of the one shard in *cache_dir*, as marshal reads them."""
    import marshal
    shard, = shards(cache_dir)
    return marshal.loads(shard.read_bytes()[len(modelcache._MAGIC) + 4:])[2]


def rewrite(cache_dir: Path, entries: dict) -> None:
    import marshal
    import zlib
    shard, = shards(cache_dir)
    header, directory, _ = marshal.loads(shard.read_bytes()[len(modelcache._MAGIC) + 4:])
    raw = marshal.dumps((header, directory, entries))
    shard.write_bytes(modelcache._MAGIC + zlib.crc32(raw).to_bytes(4, "big") + raw)


def distinct_pair(tmp: Path) -> Path:
    """Two hosts of one CPU, one register apart (a fleet's distinct hosts)."""
    d = tmp / "pair"
    d.mkdir()
    shutil.copyfile(N1, d / "a.xml")
    (d / "b.xml").write_text(lowered(N1.read_text()).replace('hostname="', 'hostname="b-', 1))
    return d


def test_distinct_hosts_stored_as_a_base_and_changes(kb, tmp_path, not_racy):
    """The second host's values and registers are kept as the first's and
    what differs; read back, models and profiles equal a plain read."""
    d = distinct_pair(tmp_path)
    plain = service.load_inputs([str(d)], kb)
    load([d], kb, tmp_path / "c")                         # store the models ...
    service.load_inputs([str(d)], kb, False,              # ... and the profiles
                        modelcache.open_cache(str(tmp_path / "c"), kb.path))
    entries = stored(tmp_path / "c")
    (a_model, a_host), (b_model, b_host) = (entries[n][1][2] for n in ("a.xml", "b.xml"))
    assert len(a_model[0]) == 2 and len(b_model[0]) == 4       # (keys, base, changed, values)
    assert b_model[0][1] is a_model[0][1] and b_model[0][2] == ("ID_AA64ISAR0_EL1",)
    assert a_host[0][4] is None and b_host[0][3] is a_host[0][3]
    assert len(b_host[0][4][0]) == 1                            # one register's place
    assert b_model[6] is a_model[6] and len(a_model[6]) > 0     # one vCPU-effects table
    for _ in range(2):
        cache = modelcache.open_cache(str(tmp_path / "c"), kb.path)
        warm = service.load_inputs([str(d)], kb, False, cache)
        assert cache is not None and cache.hits == 2 and warm == plain
        assert warm[0][1].vcpu_effects is warm[1][1].vcpu_effects      # read back as one
        assert [m.values for _, m, _ in warm] == [m.values for _, m, _ in plain]
        assert [p.registers for _, _, p in warm] == [p.registers for _, _, p in plain]


@pytest.mark.parametrize("damage", ["unknown register", "changes not matching", "place beyond",
                                    "negative place"])
def test_bad_changes_are_refused(kb, tmp_path, not_racy, damage):
    """A base-and-changes record that does not rebuild what was stored:
    the file is read instead, never a model with a register too many or a
    profile with a register in the wrong place."""
    d = distinct_pair(tmp_path)
    plain = service.load_inputs([str(d)], kb)
    service.load_inputs([str(d)], kb, False, modelcache.open_cache(str(tmp_path / "c"), kb.path))
    entries = stored(tmp_path / "c")
    ident, (key, checked, (model, host)) = entries["b.xml"]
    keys, base, changed, values = model[0]
    own, shared = host
    places, regs = own[4]
    if damage == "unknown register":
        model = ((keys, base, ("ID_AA64XXX_EL1",), values),) + model[1:]
    elif damage == "changes not matching":
        model = ((keys, base, changed, values + values),) + model[1:]
    elif damage == "place beyond":
        host = (own[:4] + (((len(own[3]),), regs),), shared)
    else:
        host = (own[:4] + (((-1,), regs),), shared)
    entries["b.xml"] = (ident, (key, checked, (model, host)))
    rewrite(tmp_path / "c", entries)
    cache = modelcache.open_cache(str(tmp_path / "c"), kb.path)
    got = service.load_inputs([str(d)], kb, False, cache)
    assert got == plain
    assert [p.registers for _, _, p in got] == [p.registers for _, _, p in plain]


# -- a broken or unwritable cache -------------------------------------------------

@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty", "header"])
def test_corrupt_cache_ignored_and_rewritten(kb, tmp_path, not_racy, damage):
    d = fleet(tmp_path, FIXTURES[:2], 4)
    plain, _ = load([d], kb)
    load([d], kb, tmp_path / "c")
    shard, = shards(tmp_path / "c")
    data = shard.read_bytes()
    if damage == "flip":
        i = len(data) // 2
        data = data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]
    elif damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "garbage":
        data = os.urandom(len(data))
    elif damage == "empty":
        data = b""
    else:                           # a valid file of another format
        data = data.replace(b"LACMODELS", b"LACMODELX")
    shard.write_bytes(data)
    got, cache = load([d], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 0
    assert models(got) == models(plain)
    assert shard.read_bytes() != data                      # rewritten ...
    got, cache = load([d], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 4            # ... and good again
    assert models(got) == models(plain)
    assert not [p for p in (tmp_path / "c").iterdir() if p != shard]   # no temporary left


def test_valid_but_wrong_records_are_refused(kb, tmp_path, not_racy):
    """A shard that reads back but whose records do not rebuild a model:
    the files are read instead."""
    import marshal
    import zlib
    load([N1], kb, tmp_path / "c")
    shard, = shards(tmp_path / "c")
    body = marshal.loads(shard.read_bytes()[len(modelcache._MAGIC) + 4:])
    header, directory, entries = body
    for name, (ident, (key, checked, _record)) in entries.items():
        entries[name] = (ident, (key, checked, (("x",),)))
    raw = marshal.dumps((header, directory, entries))
    shard.write_bytes(modelcache._MAGIC + zlib.crc32(raw).to_bytes(4, "big") + raw)
    got, cache = load([N1], kb, tmp_path / "c")
    assert models(got) == models(load([N1], kb)[0])


def test_shard_writable_by_others_is_ignored(kb, tmp_path, not_racy):
    load([N1], kb, tmp_path / "c")
    shard, = shards(tmp_path / "c")
    shard.chmod(0o666)
    _, cache = load([N1], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 0


def test_unwritable_cache_dir_is_no_cache(kb, tmp_path, not_racy, run):
    blocker = tmp_path / "file"
    blocker.write_text("")
    plain, _ = load([HOSTS], kb)
    got, cache = load([HOSTS], kb, blocker / "cache")       # cannot be made
    assert models(got) == models(plain)
    r = run("cpu-baseline", "--json", "--cache-dir", str(blocker / "cache"), str(N1))
    assert r.code == 0 and r.err == ""


def test_unwritable_shard_is_no_cache(kb, tmp_path, not_racy, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only")
    monkeypatch.setattr(modelcache, "write_cache", refuse)
    got, cache = load([HOSTS], kb, tmp_path / "c")
    assert models(got) == models(load([HOSTS], kb)[0]) and not shards(tmp_path / "c")


def test_read_only_cache_dir(kb, tmp_path, not_racy, run):
    """A cache directory this user cannot write: the same output, no error
    (as root: the command run as nobody, over a directory root owns)."""
    plain = run("cpu-baseline", "--json", "--no-cache", str(N1), str(FIXTURES[0]))
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o755)
    if os.geteuid() != 0:
        ro.chmod(0o555)
        for cache_dir in (ro, ro / "c"):
            r = run("cpu-baseline", "--json", "--cache-dir", str(cache_dir), str(N1),
                    str(FIXTURES[0]))
            assert (r.code, r.out, r.err) == (plain.code, plain.out, plain.err)
        return
    tmp_path.chmod(0o755)
    for cache_dir in (ro, ro / "c"):
        r = subprocess.run([sys.executable, "-m", "libvirt_arm_cpu.cli", "cpu-baseline",
                            "--json", "--cache-dir", str(cache_dir), str(N1), str(FIXTURES[0])],
                           user=65534, capture_output=True, text=True, timeout=60,
                           cwd="/", env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                                         "PYTHONPATH": str(HOSTS.parents[2])})
        assert (r.returncode, r.stdout, r.stderr) == (plain.code, plain.out, plain.err)
    assert list(ro.iterdir()) == []


def test_where_it_lives(monkeypatch, tmp_path, kb):
    monkeypatch.setenv(settings.CACHE_ENV, str(tmp_path / "x"))
    assert settings.cache_dir("/var/cache/libvirt-arm-cpu/host.xml") == str(tmp_path / "x")
    for off in ("", "none"):
        monkeypatch.setenv(settings.CACHE_ENV, off)
        assert settings.cache_dir("/var/cache/libvirt-arm-cpu/host.xml") == ""
        assert service.model_cache(kb) is None
    monkeypatch.delenv(settings.CACHE_ENV)
    assert settings.cache_dir("/var/cache/libvirt-arm-cpu/host.xml") == \
        "/var/cache/libvirt-arm-cpu/profiles"
    assert service.model_cache(kb, enabled=False) is None
    bad = tmp_path / "bad.conf"
    bad.write_text("[hook\n")
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(bad))
    assert service.model_cache(kb) is None               # no cache, not an error


def test_directory_listing_drops_gone_files(kb, tmp_path, not_racy):
    d = fleet(tmp_path, [N1], 3)
    load([d], kb, tmp_path / "c")
    (d / "h001.xml").unlink()
    _, cache = load([d], kb, tmp_path / "c")
    assert cache is not None
    shard = cache.shards[str(d)]
    assert sorted(shard.entries) == ["h000.xml", "h002.xml"]
    json.dumps(sorted(shard.entries))


# -- reading in other processes ------------------------------------------------------

@pytest.fixture
def parallel(monkeypatch):
    monkeypatch.setattr(service, "PARALLEL_MIN", 1)


def test_parallel_read_same_models(kb, tmp_path, not_racy, parallel):
    """Forked readers (copies across and within their chunks, every
    fixture, with and without a cache): what reading one by one gives,
    sharing included."""
    d = fleet(tmp_path, FIXTURES + [N1, N1], 70)
    plain = service.load_inputs([str(d), str(HOSTS)], kb, profiles=False)
    for cache_dir in (None, tmp_path / "c", tmp_path / "c"):
        cache = modelcache.open_cache(str(cache_dir), kb.path) if cache_dir else None
        got = service.load_inputs([str(d), str(HOSTS)], kb, False, cache, profiles=False,
                                  jobs=2)
        assert models(got) == models(plain)
        ids = [(id(m.values), id(m.writable)) for _, m, _ in got]
        assert [ids.index(x) for x in ids] == \
            [[(id(m.values), id(m.writable)) for _, m, _ in plain].index(x)
             for x in [(id(m.values), id(m.writable)) for _, m, _ in plain]]
    with_profiles = service.load_inputs([str(d)], kb, jobs=2)
    assert with_profiles == service.load_inputs([str(d)], kb)


@pytest.mark.parametrize("bad", ["h005.xml", "h040.xml"])
def test_parallel_read_same_first_error(kb, tmp_path, parallel, bad):
    d = fleet(tmp_path, [N1, FIXTURES[0]], 60)
    (d / bad).write_text((d / bad).read_text().replace("<registers", "<registers bad='1", 1))
    (d / "h050.xml").write_text("not xml")
    with pytest.raises(ParseError) as plain:
        service.load_inputs([str(d)], kb, profiles=False)
    with pytest.raises(ParseError) as forked:
        service.load_inputs([str(d)], kb, profiles=False, jobs=2)
    assert str(forked.value) == str(plain.value)
