"""The compact copy of the host profile and the knowledge base the hook
reads on every domain start (formats/compact.py, host/hostcache.hook_inputs):
it must read back as exactly what the XML says, and never be believed once
either file changed."""

from __future__ import annotations

import os
import time

from libvirt_arm_cpu.formats import compact
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.host.hostcache import COMPACT_SUFFIX, hook_inputs
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.paths import kb_dir
from libvirt_arm_cpu.settings import Settings

from .domains import FIXTURES, MAX73, N1_73, custom_cpu, with_sysreg
from .test_hook import bed  # noqa: F401 - the installed hook

KB_PATH = os.path.join(kb_dir(), "registers.xml")


def test_a_copy_reads_back_as_the_xml_for_every_bundled_host():
    kb = kb_load.registers()
    ks = compact.stamp(KB_PATH)
    for path in sorted(FIXTURES.glob("*.xml")):
        p = read_profile(str(path), validate_schema=False)
        ps = compact.stamp(str(path))
        back = compact.loads(compact.dumps(p, kb, ps, ks), ps, ks)
        assert back is not None, path
        assert back[0] == p, path
        assert back[1].registers == kb.registers and back[1].sources == kb.sources
        assert back[1].register("ID_AA64ISAR0_EL1").field("DP") == kb.field("ID_AA64ISAR0_EL1",
                                                                           "DP")


def test_a_copy_of_other_files_or_a_damaged_one_is_not_believed():
    kb = kb_load.registers()
    p = read_profile(str(MAX73), validate_schema=False)
    ps, ks = compact.stamp(str(MAX73)), compact.stamp(KB_PATH)
    data = compact.dumps(p, kb, ps, ks)
    assert compact.loads(data, ps, ks) is not None
    assert compact.loads(data, (ps[0], ps[1], ps[2] + 1), ks) is None      # profile touched
    assert compact.loads(data, ps, (ks[0], ks[1] + 1, ks[2])) is None      # KB replaced
    assert compact.loads(data[:len(data) // 2], ps, ks) is None            # truncated
    assert compact.loads(b"not a copy" + data, ps, ks) is None
    broken = compact._MAGIC + __import__("marshal").dumps(
        ((compact.FORMAT, __import__("libvirt_arm_cpu").__version__, ps, ks), (1, 2), ([], [], "")))
    assert compact.loads(broken, ps, ks) is None                              # wrong shape


def test_hook_inputs_writes_a_copy_and_reads_it_while_the_files_stay(tmp_path):
    profile = with_sysreg(MAX73, tmp_path / "host.xml", "host-c")
    conf = Settings(profile=str(profile), refresh=False)
    p1, kb1 = hook_inputs(conf)
    copy = tmp_path / ("host.xml" + COMPACT_SUFFIX)
    assert copy.exists() and (copy.stat().st_mode & 0o777) == 0o644
    assert p1 == read_profile(str(profile), validate_schema=False)
    p2, kb2 = hook_inputs(conf)
    assert p2 == p1 and kb2.registers == kb1.registers
    # a copy writable by others is not trusted (read from the XML again)
    copy.chmod(0o666)
    before = copy.stat().st_mtime_ns
    time.sleep(0.01)
    assert hook_inputs(conf)[0] == p1
    assert copy.stat().st_mtime_ns != before          # replaced by a new copy
    assert (copy.stat().st_mode & 0o777) == 0o644


def test_a_process_decodes_the_same_copy_once(tmp_path):
    """The resident checker reads the copy for every domain it checks: the
    same copy of the same files gives the same (frozen) values again; a
    replaced profile gives its own."""
    profile = with_sysreg(MAX73, tmp_path / "host.xml", "host-c")
    conf = Settings(profile=str(profile), refresh=False)
    hook_inputs(conf)                               # writes the copy
    first, kb = hook_inputs(conf)
    again = hook_inputs(conf)
    assert again[0] is first and again[1] is kb
    with_sysreg(N1_73, profile, "host-n1")          # replaced: read, and copied, again
    other = hook_inputs(conf)[0]
    assert other.hostname == "host-n1" and hook_inputs(conf)[0] is not first


def test_the_hook_never_believes_a_copy_of_an_older_profile(bed):  # noqa: F811
    """A domain the first profile runs is checked again, and refused, once
    the profile file is replaced by one of a host that cannot run it: the
    copy beside the old file must not answer for the new one."""
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    p = bed.call("g", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 0, p.stderr
    copy = bed.host_a.with_name(bed.host_a.name + COMPACT_SUFFIX)
    assert copy.exists()                            # the hook left one
    p = bed.call("g", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 0, p.stderr              # and read it
    with_sysreg(N1_73, bed.host_a, "host-a")       # same path, another host's profile
    p = bed.call("g", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 1, p.stderr
    assert b"cannot start on host host-a" in p.stderr

