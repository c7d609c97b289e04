"""What a guest is given beyond the ID registers (issue 13): SVE vector
lengths, IPA size, MTE, PMU counters, GIC and ITS, EL2, AArch32 EL1 and the
timer's frequency.  The profiles are the test bed's real probes
(tests/data/hosts); ``max-sve256`` is QEMU's ``max`` with SVE up to 256 bits,
``max`` offers up to 2048 bits.  That the limits reach a guest is shown on
the test bed (tests/test_guest_visible.py)."""

from __future__ import annotations

import dataclasses

import pytest

from libvirt_arm_cpu.engine.baseline import baseline
from libvirt_arm_cpu.engine.compare import IDENTICAL, INCOMPATIBLE, SUPERSET, compare
from libvirt_arm_cpu.engine.platform import judge, meet, sve_common
from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.formats import cpumodel, domain, profile
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.model import CpuModel, Platform, Translation, qemu_cpu_argument

from .kvm_hosts import FIXTURES

MAX = FIXTURES / "max-qemu10.0-linux7.3.xml"
SVE256 = FIXTURES / "max-sve256-qemu10.0-linux7.3.xml"
A72 = FIXTURES / "cortex-a72-qemu7.2-linux7.3.xml"
N1 = FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml"
ALL_SVE = frozenset(range(128, 2049, 128))


def read(path):
    return profile.read_profile(str(path))


def model(path):
    return CpuModel.from_profile(read(path), kb_load.registers())


def test_every_fixture_records_what_the_probe_measured():
    for path in sorted(FIXTURES.glob("*.xml")):
        p = read(path).platform
        assert p.known(), path.name
        assert p.ipa_bits in range(32, 53) and p.gic and p.cntfrq, path.name
        assert p.pmu_counters is not None and p.pmu_counters_settable is not None, path.name
        # SVE lengths exactly where the vCPU feature is offered
        assert bool(p.sve_vls) == ("sve" in read(path).vcpu_features), path.name


def test_the_probed_values_are_the_emulated_hosts():
    assert read(MAX).platform.sve_vls == ALL_SVE
    assert read(SVE256).platform.sve_vls == {128, 256}
    # QEMU 7.2's cortex-a72: 44-bit PARange, the timer at 62.5 MHz; QEMU 10.0's max: 1 GHz
    assert read(A72).platform.ipa_bits == 44 and read(A72).platform.cntfrq == 62_500_000
    assert read(MAX).platform.ipa_bits == 52 and read(MAX).platform.cntfrq == 1_000_000_000


def test_sve_lengths_common_prefix():
    assert sve_common([ALL_SVE, frozenset({128, 256})]) == {128, 256}
    # KVM needs the host's set up to the guest's largest: a gap ends it
    assert sve_common([frozenset({128, 256, 512}), frozenset({128, 512})]) == {128}
    assert sve_common([frozenset(), ALL_SVE]) == frozenset()


def test_baseline_takes_the_lengths_every_host_offers():
    r = baseline([model(MAX), model(SVE256)], kb_load.registers(), None)
    assert r.ok and r.model.platform.sve_vls == {128, 256}
    assert r.model.platform.sve_max == 256


def test_different_sve_lengths_are_not_compatible():
    """Two hosts whose largest vector length differs must not look alike."""
    kb = kb_load.registers()
    c = compare(model(MAX), read(SVE256), kb)
    assert c.result == INCOMPATIBLE
    assert [r.register for r in c.reasons if r.kind == "platform"] == ["SVE vector lengths"]
    assert "128, 256 bits up to 2048 bits" in str(c.reasons[0]) or any(
        "this host offers 128, 256 bits" in str(r) for r in c.reasons)
    # the baseline runs on the larger host: its lengths become a change
    base = baseline([model(MAX), model(SVE256)], kb, None).model
    on_max = compare(base, read(MAX), kb, check_qemu=False)
    assert on_max.result == SUPERSET
    assert "SVE vector lengths up to 256 bits (this host: 2048)" in on_max.changes
    assert compare(base, read(SVE256), kb, check_qemu=False).result in (IDENTICAL, SUPERSET)


def test_a_different_timer_frequency_is_a_conflict_no_baseline_resolves():
    kb = kb_load.registers()
    r = baseline([model(A72), model(MAX)], kb, None)
    assert not r.ok
    timer = [c for c in r.conflicts if c.register == "CNTFRQ_EL0"]
    assert len(timer) == 1 and "=62500000" in str(timer[0]) and "=1000000000" in str(timer[0])
    c = compare(model(A72), read(MAX), kb)
    assert any(r.register == "CNTFRQ_EL0" and "62.5 MHz" in r.message and "run fast" in r.message
               for r in c.reasons)


def test_each_platform_limit_is_judged():
    host = Platform(sve_vls=frozenset({128, 256}), ipa_bits=40, mte=False, pmu_counters=4,
                    pmu_counters_settable=False, gic=frozenset({3}), its=False, el2=False,
                    aarch32_el1=False, cntfrq=25_000_000)
    guest = Platform(sve_vls=frozenset({128, 256, 512}), ipa_bits=48, mte=True, pmu_counters=6,
                     gic=frozenset({2}), its=True, el2=True, aarch32_el1=True,
                     cntfrq=1_000_000_000)
    issues, _ = judge(guest, host)
    assert sorted(i.what for i in issues) == sorted(
        ["sve", "ipa", "mte", "pmu", "gic", "its", "el2", "aarch32-el1", "timer"])
    # the domain's own GIC version decides where it is known
    assert not [i for i in judge(Platform(gic=frozenset({2, 3})), host, gic_version=3)[0]]
    assert [i.what for i in judge(Platform(gic=frozenset({2, 3})), host, gic_version=2)[0]] \
        == ["gic"]
    # more counters than the guest's on a kernel that cannot lower N: a note
    issues, notes = judge(Platform(pmu_counters=2), host)
    assert not issues and "cannot lower PMCR_EL0.N" in notes[0]


def test_unknown_is_never_a_refusal():
    """A profile probed before these were measured: nothing is refused."""
    old = Platform()
    issues, notes = judge(read(MAX).platform, old)
    assert not issues and any("not checked" in n for n in notes)
    merged, conflicts = meet([read(MAX).platform, old], ["a", "b"])
    assert not conflicts and merged.sve_vls is None and merged.cntfrq is None


def test_the_xml_forms_round_trip_and_validate():
    p = read(SVE256)
    again = profile.from_xml(profile.to_xml(p))
    assert again.platform == p.platform
    profile.validate(profile.to_xml(p), "profile")
    m = baseline([model(MAX), model(SVE256)], kb_load.registers(), None).model
    assert cpumodel.from_xml(cpumodel.to_xml(m, [])).platform == m.platform
    t = Translation("", {"MIDR_EL1": 1}, [], "h", "f", "m", method="loader",
                    platform=m.platform)
    back = domain.translation_from_element(domain.translation_element(t), "meta")
    assert back.platform == m.platform


@pytest.mark.parametrize("attr,value,message", [
    ("lengths", "128 200", "multiples of 128"),
    ("lengths", "4096", "multiples of 128"),
])
def test_bad_sve_lengths_name_the_element(attr, value, message):
    data = profile.to_xml(read(SVE256)).replace(b'lengths="128 256"',
                                                 f'{attr}="{value}"'.encode())
    with pytest.raises(ParseError, match=f"<platform><sve lengths='{value}'>.*{message}"):
        profile.from_xml(data, "bad.xml")


def test_a_domain_gets_exactly_the_models_sve_lengths():
    """libvirt's sveNNN features (and the SYSREG method's second -cpu, which
    replaces libvirt's) name the model's lengths: QEMU switches the host's
    others off."""
    lengths = frozenset({128, 256})
    cpu = domain.PassthroughCpu((), lengths).element(None)
    assert [(f.get("policy"), f.get("name")) for f in cpu.findall("feature")] == [
        ("require", "sve128"), ("require", "sve256")]
    # without SVE there is nothing to name
    assert domain.PassthroughCpu(("sve",), lengths).element(None).findall("feature")[0].get(
        "name") == "sve"
    assert qemu_cpu_argument([("SYSREG_X", 1)], (), lengths) == \
        "host,sve128=on,sve256=on,SYSREG_X=0x1"
    assert qemu_cpu_argument([], ("pmu",), lengths) == "host,pmu=off,sve128=on,sve256=on"


def test_the_model_name_depends_on_the_platform():
    m = model(MAX)
    other = dataclasses.replace(m, platform=dataclasses.replace(m.platform, ipa_bits=40),
                                name="")
    assert m.name != other.name
