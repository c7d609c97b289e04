"""cpu-compare over a fleet (issue 15): several profiles and directories,
one verdict a host, read through the profile cache
(formats/modelcache.py, service.load_hosts) and judged by compare_many:
the same answers as comparing each host alone, with and without the cache."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from libvirt_arm_cpu import service
from libvirt_arm_cpu.engine.compare import compare, compare_many
from libvirt_arm_cpu.formats import modelcache

from .conftest import assert_one_line_error

HOSTS = Path(__file__).resolve().parent / "data" / "hosts"
FIXTURES = sorted(HOSTS.glob("*.xml"))
N1 = HOSTS / "neoverse-n1-qemu7.2-linux6.12.xml"
N1_73 = HOSTS / "neoverse-n1-qemu7.2-linux7.3.xml"
V1 = HOSTS / "neoverse-v1-qemu10.0-linux6.12.xml"


@pytest.fixture
def not_racy(monkeypatch):
    """Files written by a test are seconds old at most: store them anyway."""
    monkeypatch.setattr(modelcache, "RACY_SECONDS", 0.0)


@pytest.fixture
def models(run, tmp_path) -> list[str]:
    """CPUs to compare: the N1 baseline, V1's own model, a profile (its
    host-passthrough guest)."""
    out = []
    for name, inputs in (("n1", [N1, N1_73]), ("v1", [V1])):
        path = tmp_path / f"{name}.xml"
        assert run("cpu-baseline", *map(str, inputs), "-o", str(path)).code == 0
        out.append(str(path))
    return out + [str(N1_73)]


_ISAR0 = re.compile(r'(<register name="ID_AA64ISAR0_EL1"[^>]*?value=")(0x[0-9a-f]{16})"')


def variant(text: str, i: int) -> str:
    """Host i: its own name, and ID_AA64ISAR0_EL1's non-zero nibbles lowered
    by the bits of i (same size: every variant distinct for i < 2**k)."""
    m = _ISAR0.search(text)
    assert m
    v = int(m.group(2), 16)
    nibbles = [k for k in range(16) if (v >> (4 * k)) & 0xf]
    for bit, k in enumerate(nibbles):
        if (i >> bit) & 1:
            v -= 1 << (4 * k)
    text = text[:m.start(2)] + f"0x{v:016x}" + text[m.end(2):]
    return text.replace('hostname="', f'hostname="v{i:03d}-', 1)


def fleet(tmp: Path, sources, n: int, distinct: bool = False, name: str = "fleet") -> Path:
    d = tmp / name
    d.mkdir()
    for i in range(n):
        text = Path(sources[i % len(sources)]).read_text()
        text = variant(text, i // len(sources) if distinct else 0)
        (d / f"h{i:03d}.xml").write_text(text)
    return d


def hosts(paths, kb, cache_dir=None):
    cache = modelcache.open_cache(str(cache_dir), kb.path) if cache_dir else None
    return service.load_hosts([str(p) for p in paths], kb, cache=cache), cache


# -- the library: compare_many is compare, host by host ---------------------------

def same_as_one_by_one(model, profiles, kb, check_qemu=True):
    many = compare_many(model, profiles, kb, check_qemu)
    one = [compare(model, p, kb, check_qemu) for p in profiles]
    assert [c.as_dict() for c in many] == [c.as_dict() for c in one]
    return many


@pytest.mark.parametrize("check_qemu", [True, False])
def test_compare_many_every_fixture_and_model(kb, check_qemu):
    profiles = [p for _, _, p in service.load_inputs([str(HOSTS)], kb)]
    for model in [m for _, m, _ in service.load_inputs([str(HOSTS)], kb)]:
        same_as_one_by_one(model, profiles, kb, check_qemu)
        # with vCPU features switched off (judged per host), where it can be
        for off in (("sve",), ("pmu",), ("pmu", "ptrauth")):
            if all(model.can_switch_off(f) for f in off):
                same_as_one_by_one(model.switched_off(off), profiles, kb, check_qemu)


def test_compare_many_cached_distinct_profiles(kb, tmp_path, not_racy):
    """Distinct profiles read back from the cache share their register
    objects: judged once each, the same verdicts."""
    d = fleet(tmp_path, [N1, N1_73, V1], 60, distinct=True)
    plain = [p for _, p in hosts([d], kb)[0]]
    hosts([d], kb, tmp_path / "c")
    got, cache = hosts([d], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 60
    cached = [p for _, p in got]
    assert cached == plain
    assert cached[0].registers[0] is cached[3].registers[0]      # shared
    for _, model, _ in service.load_inputs([str(N1), str(V1), str(d / "h005.xml")], kb):
        assert [c.as_dict() for c in same_as_one_by_one(model, cached, kb)] == \
            [c.as_dict() for c in compare_many(model, plain, kb)]


def test_compare_many_odd_hosts(kb):
    """Hosts off the fast path: a register twice, one missing, one the
    kernel does not know, a whole-register rule (CLIDR_EL1) that differs."""
    (_, model, p), = service.load_inputs([str(N1)], kb)
    regs = p.registers
    clidr = next(i for i, r in enumerate(regs) if r.name == "CLIDR_EL1")
    odd = [
        dataclasses.replace(p, registers=regs + [dataclasses.replace(regs[3], value=0)]),
        dataclasses.replace(p, registers=[dataclasses.replace(regs[3], value=0)] + regs),
        dataclasses.replace(p, registers=regs[:3] + regs[4:]),
        dataclasses.replace(p, registers=regs[:3] + [regs[4]] + regs[4:]),   # dup, one missing
        dataclasses.replace(p, registers=regs[:3] + [dataclasses.replace(regs[3], value=None)]
                            + regs[4:]),
        dataclasses.replace(p, registers=regs[:clidr] + [dataclasses.replace(
            regs[clidr], value=(regs[clidr].value or 0) ^ 0x7)] + regs[clidr + 1:]),
    ]
    same_as_one_by_one(model, [p, *odd, p, *odd], kb)


def test_copies_are_one_profile_with_and_without_cache(kb, tmp_path, not_racy):
    d = fleet(tmp_path, [N1, N1_73], 10)
    for cache_dir in (None, tmp_path / "c", tmp_path / "c"):
        got, _ = hosts([d], kb, cache_dir)
        ps = [p for _, p in got]
        assert ps[0] is ps[2] is ps[8] and ps[1] is ps[9] and ps[0] is not ps[1]


# -- the cache holds the profile ----------------------------------------------------

def test_every_fixture_profile_from_cache(kb, tmp_path, not_racy):
    plain, _ = hosts([HOSTS], kb)
    _, cache = hosts([HOSTS], kb, tmp_path / "c")
    assert cache is not None and cache.stored == len(FIXTURES)
    warm, cache = hosts([HOSTS], kb, tmp_path / "c")
    assert cache is not None and cache.hits == len(FIXTURES) and cache.stored == 0
    assert warm == plain
    # the models are still there for cpu-baseline, and the same
    got = service.load_inputs([str(HOSTS)], kb, cache=modelcache.open_cache(
        str(tmp_path / "c"), kb.path), profiles=False)
    assert [m for _, m, _ in got] == [m for _, m, _ in service.load_inputs([str(HOSTS)], kb)]


def test_profile_fields_all_encoded(kb):
    """A new HostProfile field must be added to the cache's encoding."""
    from libvirt_arm_cpu.model import HostProfile
    assert [f.name for f in dataclasses.fields(HostProfile)] == [
        "hostname", "machine", "kernel_release", "kernel_version", "probed_at", "tool_version",
        "qemu", "vcpu_features", "capabilities", "cpus", "registers", "masks_known",
        "fingerprint", "vcpu_off", "loader", "firmware", "reg_list", "platform"]


def test_model_only_entry_reads_the_profile(kb, tmp_path, not_racy):
    """An entry without the profile (stored by forked readers of a
    cpu-baseline run) answers for the model; compare reads the file."""
    d = fleet(tmp_path, [N1], 2)
    _, cache = hosts([d], kb, tmp_path / "c")
    assert cache is not None
    for shard in cache.shards.values():
        for name, (ident, (key, checked, record)) in list(shard.entries.items()):
            if record is not None:
                shard.entries[name] = (ident, (key, checked, (record[0], None)))
                shard.dirty = True
    cache.save()
    got, cache = hosts([d], kb, tmp_path / "c")
    assert cache is not None and cache.stored == 1
    assert [p for _, p in got] == [p for _, p in hosts([d], kb)[0]]
    inputs = service.load_inputs([str(d)], kb, cache=modelcache.open_cache(
        str(tmp_path / "c"), kb.path), profiles=False)
    assert [m for _, m, _ in inputs] == [m for _, m, _ in service.load_inputs([str(d)], kb)]


def test_stale_replaced_and_corrupt_cache(kb, tmp_path, not_racy):
    d = fleet(tmp_path, [N1], 3, distinct=True)
    hosts([d], kb, tmp_path / "c")
    f = d / "h001.xml"
    # replaced by a rename, times copied: a new inode
    st = f.stat()
    new = tmp_path / "new.tmp"
    new.write_text(variant(N1.read_text(), 5))
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(new, f)
    got, cache = hosts([d], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 2
    assert got == hosts([d], kb)[0]
    shard, = (tmp_path / "c").glob("*" + modelcache.SHARD_SUFFIX)
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    got, cache = hosts([d], kb, tmp_path / "c")
    assert cache is not None and cache.hits == 0 and got == hosts([d], kb)[0]


def test_valid_but_wrong_profile_records_are_refused(kb, tmp_path, not_racy):
    import marshal
    import zlib
    hosts([N1], kb, tmp_path / "c")
    shard, = (tmp_path / "c").glob("*" + modelcache.SHARD_SUFFIX)
    header, directory, entries = marshal.loads(shard.read_bytes()[len(modelcache._MAGIC) + 4:])
    for bad in [("x",), (("h", "t", ((), ()), ("r",)), ()),
                (("h", "t", ((), ()), (("R", 3, 0, 0, 4, 0, 1, None, True, 0),)), ())]:
        for name, (ident, (key, checked, record)) in entries.items():
            entries[name] = (ident, (key, checked, (record[0], bad)))
        raw = marshal.dumps((header, directory, entries))
        shard.write_bytes(modelcache._MAGIC + zlib.crc32(raw).to_bytes(4, "big") + raw)
        got, _ = hosts([N1], kb, tmp_path / "c")
        assert got == hosts([N1], kb)[0]


# -- the command ------------------------------------------------------------------

def test_cli_fleet_same_with_and_without_cache(run, tmp_path, models, not_racy):
    d = fleet(tmp_path, [N1, N1_73, V1, FIXTURES[0]], 24, distinct=True)
    for cpu in models:
        for opts in ([], ["--json"], ["--kvm-only", "--json"]):
            argv = ["cpu-compare", cpu, str(d), str(HOSTS), *opts]
            plain = run(*argv, "--no-cache")
            assert plain.code in (0, 1) and plain.err == ""
            for _ in range(2):          # storing, then answering
                r = run(*argv, "--cache-dir", str(tmp_path / "c"))
                assert (r.code, r.out, r.err) == (plain.code, plain.out, plain.err)


def test_cli_fleet_verdicts_are_each_hosts(run, tmp_path, models, not_racy):
    """Each host's verdict in the fleet's --json is cpu-compare's of that
    host alone; the plain form counts them and lists each host."""
    files = [str(p) for p in FIXTURES]
    for cpu in models:
        r = run("cpu-compare", cpu, *files, "--json", "--cache-dir", str(tmp_path / "c"))
        data = json.loads(r.out)
        assert data["hosts"] == len(files) and sum(data["results"].values()) == len(files)
        for f, v in zip(files, data["verdicts"]):
            alone = run("cpu-compare", cpu, f, "--json")
            assert v == {"host": Path(f).stem, **json.loads(alone.out)}
        bad = data["results"]["incompatible"]
        assert r.code == (1 if bad else 0)
        plain = run("cpu-compare", cpu, *files)
        lines = plain.out.splitlines()
        assert lines[0].startswith(f"{len(files) - bad} of {len(files)} hosts can run the CPU "
                                   f"described in {cpu} (")
        assert [line.split()[0] for line in lines[1:] if not line.startswith(" ")
                and not line.startswith("(")] == [Path(f).stem for f in files]


def test_cli_fleet_exit_codes(run, tmp_path, models, not_racy):
    d = fleet(tmp_path, [N1], 4)
    n1_model = models[0]
    r = run("cpu-compare", n1_model, str(d))
    assert r.code == 0 and r.out.startswith("4 of 4 hosts can run")
    r = run("cpu-compare", n1_model, str(d), str(V1))
    assert r.code == 1 and "4 of 5 hosts" in r.out
    r = run("cpu-compare", n1_model, str(d), str(V1), "--error")
    assert_one_line_error(r, 1, "incompatible with 1 of 5 hosts, first neoverse-v1")
    assert r.out == ""


def test_cli_fleet_errors(run, tmp_path, models, not_racy):
    d = fleet(tmp_path, [N1], 3)
    r = run("cpu-compare", models[0], str(d), models[1])
    assert_one_line_error(r, 2, "is a CPU model, not a host profile")
    caps = tmp_path / "caps.xml"
    caps.write_text("<capabilities><host><cpu><arch>aarch64</arch><model>x</model>"
                    "</cpu></host></capabilities>")
    r = run("cpu-compare", models[0], str(d), str(caps))
    assert_one_line_error(r, 2, "is not a host profile")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("cpu-compare", models[0], str(empty)), 2, "no *.xml")
    run("cpu-compare", models[0], str(d), "--cache-dir", str(tmp_path / "c"))
    (d / "h001.xml").write_text("<hostprofile xmlns='urn:x-libvirt-arm-cpu:host:1'>")
    plain = run("cpu-compare", models[0], str(d), "--no-cache")
    cached = run("cpu-compare", models[0], str(d), "--cache-dir", str(tmp_path / "c"))
    assert plain.code == 1 and (cached.code, cached.out, cached.err) == \
        (plain.code, plain.out, plain.err)


def test_cli_one_host_unchanged(run, models):
    """One PROFILE (a file): virsh's output, not the fleet's."""
    r = run("cpu-compare", models[0], str(N1))
    assert r.code == 0 and r.out == \
        f"CPU described in {models[0]} is identical to the CPU provided by the host\n"


def test_gc_left_as_found(run, tmp_path, models):
    import gc
    d = fleet(tmp_path, [N1], 2)
    assert gc.isenabled()
    run("cpu-compare", models[0], str(d))
    assert gc.isenabled()
    shutil.rmtree(d)
