"""The hook's memory of allowed starts (host/verdicts.py): a start exactly
like an allowed one is answered from it; any change of what the check
reads is a new question; refusals are never remembered."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.formats.domain import Domain
from libvirt_arm_cpu.host import verdicts
from libvirt_arm_cpu.settings import Settings
from libvirt_arm_cpu import xmlsafe
from libvirt_arm_cpu.xmlsafe import parse_untrusted

from .domains import MAX73, N1_73, custom_cpu, with_loader, with_sysreg
from .test_hook import bed  # noqa: F401 - the installed hook


def _as_before(p) -> bool:
    return b"(as before)" in p.stderr


def test_a_second_identical_start_is_answered_from_memory(bed):  # noqa: F811
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    first = bed.call("g", "prepare", "begin", "-", stdin=xml)
    assert first.returncode == 0 and not _as_before(first), first.stderr
    again = bed.call("g", "prepare", "begin", "-", stdin=xml)
    assert again.returncode == 0 and _as_before(again), again.stderr
    assert b"CPU checked on host host-a: superset (as before)" in again.stderr
    # another domain with this CPU (a new guest of the same model): answered
    # as that one, under its own name
    other = bed.call("h", "prepare", "begin", "-",
                     stdin=xml.replace(b"<name>lac-test-g1<", b"<name>h<"))
    assert other.returncode == 0 and _as_before(other), other.stderr
    assert b"domain 'h': CPU checked on host host-a: superset (as before)" in other.stderr
    # another operation: a new question
    restore = bed.call("g", "restore", "begin", "-", stdin=xml)
    assert restore.returncode == 0 and not _as_before(restore)


def test_a_refusal_is_never_remembered(bed):  # noqa: F811
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    n1 = with_sysreg(N1_73, bed.tmp / "n1.xml", "host-n1")
    bed.settings(n1)
    for _ in range(2):
        p = bed.call("g", "prepare", "begin", "-", stdin=xml)
        assert p.returncode == 1 and b"cannot start on host host-n1" in p.stderr
    assert not Path(str(n1) + verdicts.SUFFIX).exists()


def test_an_edited_domain_or_profile_is_checked_again(bed):  # noqa: F811
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    assert bed.call("g", "prepare", "begin", "-", stdin=xml).returncode == 0
    assert _as_before(bed.call("g", "prepare", "begin", "-", stdin=xml))
    # the domain's metadata says another value: the check runs (and refuses:
    # a value the host cannot present)
    edited = xml.replace(b'name="ID_AA64ISAR0_EL1" value="0x', b'name="ID_AA64ISAR0_EL1" value="0xf', 1)
    assert edited != xml
    p = bed.call("g", "prepare", "begin", "-", stdin=edited)
    assert not _as_before(p) and p.returncode == 1, p.stderr
    # the profile is replaced by another host's: checked, refused
    time.sleep(0.01)
    with_sysreg(N1_73, bed.host_a, "host-a")
    p = bed.call("g", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 1 and not _as_before(p), p.stderr


def test_a_remembered_loader_start_needs_the_loader_still_there(bed):  # noqa: F811
    lib = bed.tmp / "lib" / "libvirt-arm-cpu-loader.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")
    host = with_loader(MAX73, bed.tmp / "l.xml", "host-l", lib)
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")), host=host)
    bed.settings(host)
    assert bed.call("g", "prepare", "begin", "-", stdin=xml).returncode == 0
    assert _as_before(bed.call("g", "prepare", "begin", "-", stdin=xml))
    lib.unlink()
    p = bed.call("g", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 1 and b"it needs the ID register loader" in p.stderr


def test_a_memory_others_can_write_is_not_believed(bed):  # noqa: F811
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    assert bed.call("g", "prepare", "begin", "-", stdin=xml).returncode == 0
    memo = Path(str(bed.host_a) + verdicts.SUFFIX)
    assert memo.exists() and (memo.stat().st_mode & 0o777) == 0o644
    memo.chmod(0o664)
    assert not _as_before(bed.call("g", "prepare", "begin", "-", stdin=xml))


def _conf(tmp_path: Path, **kw) -> Settings:
    profile = tmp_path / "host.xml"
    if not profile.exists():
        shutil.copy(MAX73, profile)
    return Settings(**{"profile": str(profile), "refresh": False, "try_apply": False, **kw})


def _key(op: str, xml: bytes, conf: Settings) -> bytes | None:
    """The key as the hook makes it: of the domain XML libvirt gave it, read
    by parse_light (none for XML that does not read: the check says why)."""
    try:
        root = xmlsafe.parse_light(xml, "d.xml")
    except ParseError:
        return None
    return verdicts.key(op, root, conf)


def test_the_key_changes_with_every_input(tmp_path, monkeypatch):
    xml = (Path(__file__).parent / "data" / "translate" /
           "custom-two-kernels-loader-out.xml").read_bytes()
    conf = _conf(tmp_path)
    base = _key("prepare", xml, conf)
    assert base is not None and base == _key("prepare", xml, conf)
    assert _key("migrate", xml, conf) != base
    # not the domain's name (in libvirt's arguments, and its <name>): the
    # check reads it for its messages alone
    assert b"<name>golden-two-kernels</name>" in xml
    assert _key("prepare", xml.replace(b"<name>golden-two-kernels<", b"<name>o<"), conf) == base
    assert _key("prepare", xml, _conf(tmp_path, try_apply=True)) != base
    # the QEMU input (<qemu:commandline>) and the metadata are read
    assert _key("prepare", xml.replace(b"LD_PRELOAD", b"LD_PRELOAX"), conf) != base
    assert _key("prepare", xml.replace(b"<arm:register ", b"<arm:register x='1' ", 1),
                        conf) != base
    # ... and the <cpu> (its SVE lengths: what QEMU gets) and the GIC
    sve = (Path(__file__).parent / "data" / "translate" /
           "custom-disable-sve2-loader-out.xml").read_bytes()
    assert b'name="sve256"' in sve
    assert _key("prepare", sve.replace(b'name="sve256"', b'name="sve2560"', 1),
                conf) != _key("prepare", sve, conf)
    gic3 = xml.replace(b"</os>", b"</os><features><gic version='3'/></features>", 1)
    assert _key("prepare", gic3, conf) != base
    assert _key("prepare", gic3.replace(b"version='3'", b"version='2'"), conf) != \
        _key("prepare", gic3, conf)
    # what the check does not read is not in the key: the id libvirt gives
    # each start, a comment
    assert b' type="kvm">' in xml
    assert _key("prepare", xml.replace(b' type="kvm">', b' type="kvm" id="7">', 1),
                        conf) == base
    assert _key("prepare", xml.replace(b"<name>", b"<!-- x --><name>", 1),
                        conf) == base
    # the profile touched, the knowledge base replaced
    os.utime(conf.profile, ns=(1, 1))
    assert _key("prepare", xml, conf) != base
    kb = tmp_path / "kb"
    shutil.copytree(Path(__file__).parent.parent / "xml", kb)
    monkeypatch.setenv("LIBVIRT_ARM_CPU_XML_DIR", str(kb))
    touched = _key("prepare", xml, conf)
    os.utime(kb / "registers.xml", ns=(2, 2))
    assert _key("prepare", xml, conf) != touched
    # not a translated domain, or XML the check refuses: no key (the check says why)
    assert _key("prepare", b"<domain><name>x</name></domain>", conf) is None
    assert _key("prepare", b"<domain", conf) is None
    doctype = b'<!DOCTYPE d [<!ENTITY e "x">]>' + xml[xml.index(b"<domain"):]
    assert _key("prepare", doctype, conf) is None
    with pytest.raises(ParseError):
        parse_untrusted(doctype, "domain")


def _same_tree(ours, theirs, where: str = "") -> None:
    where = f"{where}/{theirs.tag}"
    assert (ours.tag, ours.attrib, ours.text, ours.tail) == \
        (theirs.tag, theirs.attrib, theirs.text, theirs.tail), where
    assert len(ours) == len(theirs), where
    for a, b in zip(ours, theirs):
        _same_tree(a, b, where)


TRANSLATED = sorted(p.name for p in (Path(__file__).parent / "data" / "translate").glob("*.xml"))


def _with_tricky_text(xml: bytes) -> bytes:
    return xml.replace(b"<name>", b"<!-- a -->x<![CDATA[<y>]]>z<?pi v?><name q:a='1' "
                       b"xmlns:q='urn:q'>", 1)


@pytest.mark.parametrize("name", TRANSLATED)
def test_the_light_tree_is_elementtrees(name):
    """The hook reads the domain with expat alone (xmlsafe.parse_light: no
    ElementTree on its path): tags, attributes, text and tails as xmlsafe's
    ElementTree tree has them, for every translated domain of the tests and
    for text around comments, CDATA and namespaced attributes; and what
    find, findall, findtext and iter give for every path of the document
    (namespaces with slashes in them too)."""
    xml = (Path(__file__).parent / "data" / "translate" / name).read_bytes()
    for doc in (xml, _with_tricky_text(xml)):
        ours, theirs = xmlsafe.parse_light(doc, name), parse_untrusted(doc, name)
        _same_tree(ours, theirs)
        paths, tags = set(), set()

        def walk(e, prefix: str) -> None:
            for c in e:
                paths.add(prefix + c.tag)
                tags.add(c.tag)
                walk(c, prefix + c.tag + "/")
        walk(theirs, "")
        if b"<qemu:commandline" in doc:
            assert any("/" in t for t in tags), "a namespace with '/' in it"
        for path in sorted(paths) + ["nothing", "devices/nothing"]:
            assert [e.attrib for e in ours.findall(path)] == \
                [e.attrib for e in theirs.findall(path)], path
            assert (ours.find(path) is None) == (theirs.find(path) is None), path
            assert ours.findtext(path) == theirs.findtext(path), path
            assert ours.findtext(path, "d") == theirs.findtext(path, "d"), path
        for tag in sorted(tags) + [None]:
            assert [e.attrib for e in ours.iter(tag)] == [e.attrib for e in theirs.iter(tag)]
        for bad in ("./name", "*", "devices//disk", "disk[@type]", ""):
            with pytest.raises(ValueError):
                ours.findall(bad)


@pytest.mark.parametrize("name", TRANSLATED)
def test_a_domain_read_lightly_reads_as_one_parsed(name):
    """Domain.read (the hook's: the light tree) gives every property
    Domain.parse gives, and its edits work on the ElementTree tree, with
    the same output."""
    xml = (Path(__file__).parent / "data" / "translate" / name).read_bytes()
    for doc in (xml, _with_tricky_text(xml)):
        light, full = Domain.read(doc, name), Domain.parse(doc, name)
        assert isinstance(light.root, xmlsafe.LightElement)
        for prop in ("name", "virt_type", "arch", "cpu", "sve_lengths", "gic_version",
                     "pmu_off", "translation"):
            assert getattr(light, prop) == getattr(full, prop), prop
        assert light.cpu_arguments() == full.cpu_arguments()
        assert light.qemu_env() == full.qemu_env()
        assert light.loader_env() == full.loader_env()
        assert light.original().tostring() == full.original().tostring()
        assert light.tostring() == full.tostring()


def test_the_memory_is_bounded(tmp_path):
    conf = _conf(tmp_path)
    for i in range(verdicts.MAX_ENTRIES + 20):
        verdicts.remember(conf, i.to_bytes(32, "big"), f"m{i}")
    assert verdicts.recall(conf, (0).to_bytes(32, "big")) is None           # the oldest went
    last = verdicts.MAX_ENTRIES + 19
    assert verdicts.recall(conf, last.to_bytes(32, "big")) == (f"m{last}", "")
