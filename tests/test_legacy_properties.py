"""QEMU's legacy -cpu properties as libvirt <feature> names (issue 11):
``sve``, ``pauth``, ``pmu`` switch the vCPU feature off; ``sveNNN`` limit the
SVE vector lengths; ``mte`` says whether the guest may have MTE.  Against
real probed hosts (tests/data/hosts); that the lengths reach a guest is shown
on the test bed (tests/test_platform_kvm.py)."""

from __future__ import annotations

import pytest

from libvirt_arm_cpu.engine.translate import resolve
from libvirt_arm_cpu.engine.validate import CpuMismatch
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.model import CpuFeature, DomainCpu

from .kvm_hosts import FIXTURES

MAX = read_profile(str(FIXTURES / "max-qemu10.0-linux7.3.xml"))
N1 = read_profile(str(FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml"))


def translate(host, *features: tuple[str, str]):
    cpu = DomainCpu("host-model", None, None, None, [CpuFeature(p, n) for p, n in features])

    def no_saved_model(name):
        raise AssertionError(name)

    return resolve(cpu, host, kb_load.registers(), kb_load.features(), kb_load.dependencies(),
                   no_saved_model, "loader")


def test_disabling_a_length_keeps_the_shorter_ones():
    r = translate(MAX, ("disable", "sve512"))
    assert r.platform.sve_vls == {128, 256, 384}
    assert "SVE vector lengths up to 384 bits" in " ".join(r.notes)
    # the verdict against the host names the limit as a change
    assert any("SVE vector lengths up to 384 bits (this host: 2048)" in c
               for c in r.comparison.changes)


def test_requiring_a_length_makes_it_the_largest():
    assert translate(MAX, ("require", "sve1024")).platform.sve_max == 1024
    with pytest.raises(CpuMismatch, match="do not include 2048"):
        translate(MAX, ("require", "sve2048"), ("disable", "sve1024"))
    with pytest.raises(CpuMismatch, match="leave the guest no SVE vector length"):
        translate(MAX, ("disable", "sve128"))


@pytest.mark.parametrize("name,feature", [("sve", "sve"), ("pauth", "ptrauth"), ("pmu", "pmu")])
def test_disabling_a_vcpu_property_switches_the_vcpu_feature_off(name, feature):
    r = translate(MAX, ("disable", name))
    assert feature in r.vcpu_off
    # the values are what the probe measured with it off, not lowered fields
    measured, default = MAX.values((feature,)), MAX.values()
    changed = {n for n, v in measured.items() if v != default.get(n)}
    assert changed and all(r.values[n] == measured[n] for n in changed), changed
    if name == "sve":
        assert r.platform.sve_vls == frozenset()


def test_what_the_host_cannot_give_is_refused_by_name():
    with pytest.raises(CpuMismatch, match="feature sve: policy 'require', but host "
                                          "neoverse-n1-qemu7.2-linux7.3's KVM does not offer it"):
        translate(N1, ("require", "sve"))
    with pytest.raises(CpuMismatch, match="feature sve256: the guest runs without SVE"):
        translate(MAX, ("disable", "sve"), ("require", "sve256"))
    with pytest.raises(CpuMismatch, match="feature pauth: policy 'forbid', but the host CPU "
                                          "has it"):
        translate(MAX, ("forbid", "pauth"))
    with pytest.raises(CpuMismatch, match="feature mte: policy 'require'"):
        translate(MAX, ("require", "mte"))
    # disabling what the host lacks anyway is no error
    assert "sve" in translate(N1, ("disable", "sve")).vcpu_off


def test_mte_disabled_lets_the_guest_go_where_mte_is_not():
    assert translate(MAX, ("disable", "mte")).platform.mte is False
