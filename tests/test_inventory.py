"""The inventory: current profiles and their history, the comparisons that
say what changed, the saved models' versions, and the inventory command,
on captured profiles (no SSH here: tests/test_collect.py collects)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from libvirt_arm_cpu import inventory as inv
from libvirt_arm_cpu.errors import ParseError, UsageError
from libvirt_arm_cpu.formats.profile import from_xml, to_xml

from .conftest import ROOT

HOSTS = ROOT / "tests" / "data" / "hosts"
N1_612 = HOSTS / "neoverse-n1-qemu7.2-linux6.12.xml"
N1_73 = HOSTS / "neoverse-n1-qemu7.2-linux7.3.xml"
A72 = HOSTS / "cortex-a72-qemu7.2-linux6.12.xml"


def _record(store: inv.Inventory, host: str, path: Path, kb, data: bytes | None = None):
    data = data if data is not None else path.read_bytes()
    profile = inv.parse_collected(data, str(path), kb)
    with store.locked():
        return store.record_profile(host, data, profile, host, kb)


def test_the_same_profile_again_adds_no_version(tmp_path, kb):
    store = inv.Inventory(str(tmp_path))
    assert _record(store, "kvm1", N1_612, kb).status == "new"
    assert _record(store, "kvm1", N1_612, kb).status == "unchanged"
    # probed again, nothing else changed: still the same content
    p = from_xml(N1_612.read_bytes())
    again = to_xml(dataclasses.replace(p, probed_at="2027-01-01T00:00:00Z"))
    assert _record(store, "kvm1", N1_612, kb, again).status == "unchanged"
    assert [e.stamp for e in store.history("kvm1")] == [re.sub(r"[-:]", "", p.probed_at)]
    assert inv.same_profile(p, from_xml(again))
    assert os.listdir(tmp_path / "profiles") == ["kvm1.xml"]


def test_a_new_kernel_is_a_new_version_that_says_what_changed(tmp_path, kb):
    store = inv.Inventory(str(tmp_path))
    _record(store, "kvm1", N1_612, kb)
    out = _record(store, "kvm1", N1_73, kb)
    assert out.status == "changed"
    assert any(re.match(r"kernel: 6\.12\S* -> 7\.3", c) for c in out.changes), out.changes
    assert [e.kind for e in store.history("kvm1")] == ["profile", "profile"]
    assert store.current_profile("kvm1").kernel_release.startswith("7.3")
    ok, why = inv.passthrough_after(from_xml(N1_612.read_bytes()),
                                    from_xml(N1_73.read_bytes()), kb)
    assert not ok and why


def test_changes_field_by_field(kb):
    old = from_xml(N1_612.read_bytes())
    regs = [dataclasses.replace(r, value=r.value & ~(0xF << 44))
            if r.name == "ID_AA64ISAR0_EL1" else r for r in old.registers]
    new = dataclasses.replace(old, registers=regs)
    changes = inv.profile_changes(old, new, kb)
    assert any(c.startswith("ID_AA64ISAR0_EL1.DP: 1") and c.endswith("-> 0") for c in changes), \
        changes
    assert inv.profile_changes(old, old, kb) == []


def test_the_inventory_command(run, tmp_path, kb):
    store = inv.Inventory(str(tmp_path))
    _record(store, "kvm1", N1_612, kb)
    _record(store, "kvm1", N1_73, kb)
    _record(store, "kvm2", A72, kb)
    d = str(tmp_path)
    r = run("inventory", "list", "--inventory", d)
    assert r.code == 0, r.err
    assert re.search(r"^kvm1 +Neoverse-N1, Linux 7\.3\S*, QEMU missing, probed \S+; 2 version",
                     r.out, re.M), r.out
    assert re.search(r"^kvm2 +Cortex-A72, Linux 6\.12", r.out, re.M), r.out
    r = run("inventory", "show", "kvm2", "--inventory", d)
    assert r.code == 0 and "ID_AA64ISAR0_EL1" in r.out
    r = run("inventory", "history", "kvm1", "--inventory", d, "--json")
    versions = json.loads(r.out)["versions"]
    assert len(versions) == 2 and "changes" not in versions[0]
    assert versions[1]["passthrough_guests_from_before"]["can_run"] is False
    # LIBVIRT_ARM_CPU_INVENTORY names the folder too
    os.environ[inv.ENV_DIR] = d
    try:
        assert run("inventory").out == run("inventory", "list", "--inventory", d).out
    finally:
        del os.environ[inv.ENV_DIR]


@pytest.mark.parametrize("argv, message", [
    (["show", "kvm3"], "unknown host 'kvm3' (did you mean kvm1?)"),
    (["show", "../profiles"], "is not a host"),
    (["show"], "inventory show needs a HOST"),
    (["list", "kvm1"], "inventory list takes no HOST"),
    (["show", "kvm1", "--model", "x"], "--model goes with 'inventory history'"),
    (["history", "--model", "../x"], "is not a CPU model name"),
])
def test_inventory_usage_errors(run, tmp_path, kb, argv, message):
    _record(inv.Inventory(str(tmp_path)), "kvm1", N1_612, kb)
    r = run("inventory", *argv, "--inventory", str(tmp_path))
    assert r.code == 2
    assert message in r.err


def test_saved_models_are_recorded_with_their_versions(run, tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(models))
    d = str(tmp_path / "inv")
    assert run("inventory", "record-models", "--inventory", d).out.startswith("no saved")
    r = run("cpu-baseline", str(N1_612), str(N1_73), "--save")
    assert r.code == 0, r.err
    (name,) = [p.stem for p in models.glob("*.xml")]
    r = run("inventory", "record-models", "--inventory", d)
    assert re.match(rf"{name} +new", r.out), r.out
    r = run("inventory", "record-models", "--inventory", d)
    assert re.match(rf"{name} +unchanged", r.out), r.out
    # the model is replaced by another under its name (made from one host only)
    run("cpu-baseline", str(N1_612), "-o", str(models / f"{name}.xml"))
    r = run("inventory", "record-models", "--inventory", d, "--json")
    (out,) = json.loads(r.out)
    assert out["status"] == "changed" and out["changes"], out
    r = run("inventory", "history", "--model", name, "--inventory", d)
    assert r.code == 0, r.err
    assert r.out.count(": recorded ") == 2
    assert "inventory record-models" in run("inventory", "history", "--model", "nope",
                                            "--inventory", d).err


def test_hostile_names_and_times(tmp_path, kb):
    with pytest.raises(UsageError):
        inv.host_name("-oProxyCommand=x")
    with pytest.raises(UsageError):
        inv.Inventory(str(tmp_path)).profile_path("../../etc/passwd")
    assert inv.host_name("root@kvm-1.example.org") == "kvm-1.example.org"
    # a probe time is a remote host's text, and part of a file name: the schema holds it
    p = from_xml(N1_612.read_bytes())
    data = to_xml(dataclasses.replace(p, probed_at="../../x"))
    with pytest.raises(inv.CollectFailed, match="probed='../../x'"):
        _record(inv.Inventory(str(tmp_path)), "kvm1", N1_612, kb, data)
    _record(inv.Inventory(str(tmp_path)), "kvm1", N1_612, kb)
    (entry,) = os.listdir(tmp_path / "hosts" / "kvm1" / "history")
    assert re.fullmatch(r"0001-\d{8}T\d{6}Z-[0-9a-f]{12}\.xml", entry)
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("kvm1 # a comment\nroot@kvm2\nqemu+ssh://kvm3/system\n")
    assert inv.read_hosts_file(str(hosts)) == (["kvm1", "root@kvm2"], ["qemu+ssh://kvm3/system"])
    hosts.write_text("kvm1\nkvm 2\n")
    with pytest.raises(ParseError, match=r"hosts.txt:2: "):
        inv.read_hosts_file(str(hosts))
