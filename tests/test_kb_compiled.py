"""The compiled copy of the knowledge base (kb/compiled.py, kb/load.py):
the values the XML gives, never a stale or foreign copy."""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from libvirt_arm_cpu.kb import compiled
from libvirt_arm_cpu.kb import load
from libvirt_arm_cpu.paths import kb_dir

ROOT = Path(__file__).resolve().parent.parent


def forget() -> None:
    """As a new process: nothing read yet."""
    for f in (load.registers, load.features, load.dependencies, load._copy):
        f.cache_clear()


@pytest.fixture
def kbdir(tmp_path, monkeypatch) -> Path:
    """A copy of the installed knowledge base, its caches in tmp_path."""
    d = tmp_path / "xml"
    d.mkdir()
    for name in compiled.FILES:
        shutil.copyfile(Path(kb_dir()) / name, d / name)
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CACHE_DIR", str(tmp_path / "cache"))
    forget()
    yield d
    forget()


def everything(d: Path):
    return load.registers(str(d)), load.features(str(d)), load.dependencies(str(d))


def the_copy(tmp_path: Path, d: Path) -> Path:
    return Path(compiled.path_for(str(d), str(tmp_path / "cache")))


def assert_same(got, want) -> None:
    (kb, catalog, rules), (kb2, catalog2, rules2) = got, want
    assert kb.registers == kb2.registers and kb.sources == kb2.sources and kb.path == kb2.path
    assert catalog.features == catalog2.features
    assert rules.rules == rules2.rules and rules.path == rules2.path
    # a condition's field is the registers' own object, as the XML reader gives it
    test = next(t for r in rules.rules for t in [r.when] if getattr(t, "field", None))
    assert test.field is kb.field(test.field.register, test.field.name)


def test_written_once_read_after(kbdir, tmp_path, monkeypatch):
    plain = everything(kbdir)
    copy = the_copy(tmp_path, kbdir)
    assert copy.is_file() and copy.stat().st_mode & 0o777 == 0o600
    forget()

    def no_xml(*args):
        raise AssertionError("the XML was read although the copy answers")

    for name in ("load_registers", "load_features", "load_rules"):
        monkeypatch.setattr(load, name, no_xml)
    assert_same(everything(kbdir), plain)


def test_every_part_equal_to_the_xml(kbdir, tmp_path):
    """Each register, field, feature condition and rule of the bundled
    knowledge base read back equal to what the XML gives."""
    plain = everything(kbdir)
    forget()
    data = the_copy(tmp_path, kbdir).read_bytes()
    forget()
    got = everything(kbdir)
    assert_same(got, plain)
    assert the_copy(tmp_path, kbdir).read_bytes() == data        # not written again
    assert len(got[0].registers) > 50 and len(got[1].features) > 100 and len(got[2]) > 400


@pytest.mark.parametrize("change", ["registers.xml", "features.xml", "dependencies.xml"])
def test_changed_file_is_read(kbdir, tmp_path, change):
    """A knowledge-base file edited after the copy was made: the XML is read
    (and its change seen), and the copy made again."""
    everything(kbdir)
    forget()
    f = kbdir / change
    text = f.read_text()
    if change == "registers.xml":
        edited = text.replace('origin="', 'origin="edited: ', 1)
    elif change == "features.xml":
        edited = text.replace('name="asimddp"', 'name="asimd-dp"', 1)
    else:
        edited = text.replace('enforced="true"', 'enforced="false"', 1)
    assert edited != text
    f.write_text(edited)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    got = everything(kbdir)
    forget()
    from libvirt_arm_cpu.kb.load import load_features, load_registers, load_rules
    kb = load_registers(str(kbdir / "registers.xml"))
    catalog = load_features(str(kbdir / "features.xml"), kb)
    want = (kb, catalog, load_rules(str(kbdir / "dependencies.xml"), kb, catalog))
    assert_same(got, want)
    forget()
    assert_same(everything(kbdir), want)                          # the new copy


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "version", "parts"])
def test_broken_copy_is_not_used(kbdir, tmp_path, damage):
    plain = everything(kbdir)
    copy = the_copy(tmp_path, kbdir)
    data = copy.read_bytes()
    magic = compiled._MAGIC
    if damage == "flip":
        i = len(data) // 2
        data = data[:i] + bytes([data[i] ^ 0x04]) + data[i + 1:]
    elif damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "empty":
        data = b""
    else:
        header, parts = marshal.loads(data[len(magic) + 4:])
        if damage == "version":
            header = (header[0], "0.0.0-other", *header[2:])
        else:           # a rule naming a field the registers lack, CRC right
            regs, feats, (rules, path) = parts
            rule = list(rules[0])
            rule[7] = ("test", "ID_AA64ISAR0_EL1", ("ID_AA64ISAR0_EL1", "NOSUCH"), "ge", 1,
                       None, False)
            parts = (regs, feats, ((tuple(rule), *rules[1:]), path))
        body = marshal.dumps((header, parts))
        data = magic + zlib.crc32(body).to_bytes(4, "big") + body
    copy.write_bytes(data)
    forget()
    assert_same(everything(kbdir), plain)


def test_copy_others_could_write_is_not_used(kbdir, tmp_path, monkeypatch):
    everything(kbdir)
    copy = the_copy(tmp_path, kbdir)
    copy.chmod(0o620)
    forget()
    calls = []
    real = load.load_registers
    monkeypatch.setattr(load, "load_registers", lambda p: calls.append(p) or real(p))
    everything(kbdir)
    assert calls == [str(kbdir / "registers.xml")]


def test_no_cache_no_copy(kbdir, tmp_path, monkeypatch):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CACHE_DIR", "none")
    everything(kbdir)
    assert not (tmp_path / "cache").exists()


def test_unwritable_cache_is_no_error(kbdir, tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the directory would be")
    plain = everything(kbdir)
    assert len(plain[2]) > 400


def test_settings_that_do_not_read_mean_no_copy(kbdir, tmp_path, monkeypatch):
    """The cache's place comes from the settings; settings that do not read
    are the command's to report (the knowledge base still loads)."""
    monkeypatch.delenv("LIBVIRT_ARM_CPU_CACHE_DIR")
    bad = tmp_path / "bad.conf"
    bad.write_text("[hook\n")
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(bad))
    assert len(everything(kbdir)[2]) > 400


def test_a_command_in_two_processes_same_output(tmp_path):
    """cpu-baseline run twice (XML, then the copy): the same output."""
    hosts = [ROOT / "tests" / "data" / "hosts" / "neoverse-n1-qemu7.2-linux6.12.xml"] * 2
    env = {**os.environ, "LIBVIRT_ARM_CPU_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-m", "libvirt_arm_cpu.cli", "cpu-baseline",
                            *map(str, hosts)], capture_output=True, env=env, timeout=60)
            for _ in range(2)]
    assert list((tmp_path / "cache").glob("kb-*" + compiled.SUFFIX))
    assert runs[0].returncode == 0 and runs[0].stdout
    assert (runs[1].returncode, runs[1].stdout, runs[1].stderr) == \
        (runs[0].returncode, runs[0].stdout, runs[0].stderr)
