"""The helper on real arm64 KVM: one test-bed boot per emulated host.

Each boot probes the host and runs try-apply scenarios built from what it
found (tests/kvm_guest_scenarios.py); the tests read the results.  The probe
must still match the committed fixture (tests/data/hosts/), so a change in
the helper, the kernels or QEMU that alters a profile is caught; refresh the
fixtures on purpose with contrib/testbed/capture-fixtures.py.
"""

from __future__ import annotations

import json

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.formats.profile import from_xml, read_profile
from libvirt_arm_cpu.model import HostProfile

from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, compare
from libvirt_arm_cpu.model import CpuModel

from .kvm_hosts import Host, fidelity_requests, guest_job, hosts
from .testbed import run_in_guest

pytestmark = pytest.mark.kvm

HOSTS = hosts()


def boot(host: Host):
    res = run_in_guest(kernel=host.kernel, qemu=host.qemu, cpu=host.cpu,
                       script=guest_job(host=host), timeout=420)
    assert "probe.rc" in res.files, f"the guest job did not run: {res.stderr[-2000:]}"
    return res


def scenarios(host: Host) -> dict:
    res = boot(host)
    assert res.files.get("scenarios.rc") == b"0\n", res.files.get("scenarios.stderr", b"").decode()
    return json.loads(res.files["scenarios.json"])


def comparable(p: HostProfile) -> dict:
    """What must not drift between the fixture and a live probe."""
    return {
        "hostname": p.hostname,             # guest_job names the guest after the host
        "kernel": ".".join(p.kernel_release.split(".")[:2]),
        "machine": p.machine,
        "vcpu_features": p.vcpu_features,
        "capabilities": p.capabilities,
        "midrs": [c.midr for c in p.cpus],
        "masks_known": p.masks_known,
        "registers": [(r.name, r.value, r.writable) for r in p.registers],
        "qemu": p.qemu.status,
    }


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_probe_matches_fixture(host):
    res = boot(host)
    assert res.files["probe.rc"] == b"0\n", res.files.get("probe.stderr", b"").decode()
    live = from_xml(res.files["host.xml"], "live")
    assert host.fixture.exists(), (f"no fixture {host.fixture.name}: run "
                                   f"contrib/testbed/capture-fixtures.py")
    fixture = read_profile(str(host.fixture))
    assert comparable(live) == comparable(fixture)


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_probe_sees_the_emulated_cpu(host):
    p = read_profile(str(host.fixture))
    assert p.machine == "aarch64" and p.kernel_release.startswith(host.kernel)
    assert p.masks_known
    midr = p.values()["MIDR_EL1"]
    assert all(c.midr == midr for c in p.cpus) and not p.heterogeneous
    assert p.capability("KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES") & 1
    isar0 = p.register("ID_AA64ISAR0_EL1")
    assert isar0.value and isar0.writable
    # the guest has no QEMU: recorded, not fatal
    assert p.qemu.status == "missing"
    # KVM shows the feature-ID registers whose values QEMU's model sets
    assert p.register("ID_AA64PFR0_EL1").value


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_lowering_dp_is_accepted(host):
    s = scenarios(host)
    if "lower_dp" not in s:     # a core without DotProd: nothing to lower
        isar0 = read_profile(str(host.fixture)).values()["ID_AA64ISAR0_EL1"]
        assert kb_load.registers().field("ID_AA64ISAR0_EL1", "DP").get(isar0) == 0
        assert host.name in ("cortex-a57", "cortex-a72", "a64fx")
        return
    r = s["lower_dp"]
    assert r["rc"] == 0, r["stderr"]
    (v,) = r["result"]["registers"]
    assert v["status"] == "accepted" and v["readback"] == v["wanted"]
    assert any(f.startswith("DP 1 -> 0 (lower; lower-safe)") for f in v["fields"])


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_raising_a_field_is_rejected(host):
    r = scenarios(host)["raise_field"]
    assert r["rc"] == 1
    (v,) = r["result"]["registers"]
    assert v["status"] == "rejected" and v["errno"] == "EINVAL"
    assert any(f.startswith(r["field"]) and "(higher;" in f for f in v["fields"])


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_bit_outside_the_mask_is_rejected(host):
    r = scenarios(host)["outside_mask"]
    assert r["rc"] == 1
    (v,) = r["result"]["registers"]
    assert v["status"] == "rejected" and v["errno"] == "EINVAL"


@pytest.mark.parametrize("host", [h for h in HOSTS if h.name == "neoverse-n1"],
                         ids=lambda h: h.id)
def test_writing_after_the_vcpu_ran_is_busy(host):
    r = scenarios(host)["lower_dp_after_run"]
    assert r["rc"] == 1
    (v,) = r["result"]["registers"]
    assert v["status"] == "rejected" and v["errno"] == "EBUSY"
    assert r["result"]["ran_first"] is True


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_midr_change_needs_capability_239(host):
    r = scenarios(host)["midr_change"]
    (v,) = r["result"]["registers"]
    if host.kernel == "6.12":
        assert r["result"]["imp_id_regs_enabled"] is False
        assert (r["rc"], v["status"], v["errno"]) == (1, "rejected", "EINVAL")
    else:   # 7.3 offers KVM_CAP_ARM_WRITABLE_IMP_ID_REGS; try-apply enables it
        assert r["result"]["imp_id_regs_enabled"] is True
        assert (r["rc"], v["status"]) == (0, "accepted"), v


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_the_host_accepts_its_own_profile(host):
    r = scenarios(host)["whole_profile"]
    assert r["rc"] == 0, r["stderr"]
    assert {v["status"] for v in r["result"]["registers"]} == {"unchanged"}


@pytest.mark.parametrize("host", [h for h in HOSTS if h.id == "neoverse-n1-qemu7.2-linux6.12"],
                         ids=lambda h: h.id)
def test_permission_denied_names_the_group(host):
    r = scenarios(host)["as_nobody"]
    assert r["rc"] == 5
    assert r["stderr"].count("\n") == 1 and "Traceback" not in r["stderr"]
    assert "permission denied opening /dev/kvm" in r["stderr"] and "join the group" in r["stderr"]


def test_kvm_disabled_kernel():
    """kvm-arm.mode=none: the kernel boots at EL2 but brings up no KVM."""
    res = run_in_guest(kernel="6.12", qemu="7.2", cpu="neoverse-n1", append="kvm-arm.mode=none",
                       script=guest_job(scenarios=False), timeout=240)
    assert res.files["probe.rc"] == b"4\n"
    err = res.files["probe.stderr"].decode()
    assert err.count("\n") == 1 and "/dev/kvm does not exist" in err
    assert "host.xml" not in res.files


# `libvirt-arm-cpu host` twice on a fresh cache: the first run probes, the second serves it.
HOST_TWICE = """
for n in 1 2; do
  python3 -m libvirt_arm_cpu.cli host --cache /out/cache.xml >/out/host$n.out 2>/out/host$n.err
  echo $? > /out/host$n.rc
done
"""


def test_old_kernel_without_writable_masks():
    """Debian bookworm's 6.1: ID registers readable, no capability 230."""
    res = run_in_guest(kernel="6.1", qemu="7.2", cpu="neoverse-n1",
                       script=guest_job(scenarios=False, extra=HOST_TWICE), timeout=300)
    assert res.files["probe.rc"] == b"6\n"
    err = res.files["probe.stderr"].decode()
    assert err.count("\n") == 1 and "capability 230" in err
    p = from_xml(res.files["host.xml"])
    assert p.kernel_release.startswith("6.1.") and not p.masks_known
    assert all(r.writable is None for r in p.registers)
    assert p.values()["MIDR_EL1"] == 0x414FD0C1
    assert p.values()["ID_AA64ISAR0_EL1"] == 0x0000100010211120



def test_host_command_probes_once_then_serves_the_cache():
    res = run_in_guest(kernel="6.1", qemu="7.2", cpu="neoverse-n1",
                       script=guest_job(scenarios=False, extra=HOST_TWICE), timeout=300)
    assert res.files["host1.rc"] == b"0\n" and res.files["host2.rc"] == b"0\n"
    assert b"probe: " in res.files["host1.err"]          # stale (no cache): probed
    assert res.files["host2.err"] == b""                  # fresh: served from the cache
    assert res.files["host1.out"] == res.files["host2.out"]
    out = res.files["host1.out"].decode()
    assert "Arm Neoverse-N1 r4p1" in out and "writable masks: unknown" in out
    assert from_xml(res.files["cache.xml"]).kernel_release.startswith("6.1.")



@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_compare_agrees_with_the_kernel(host):
    """For every model tried on this host's real KVM (pair baselines, the
    baseline of its kernel's hosts, every other host's own CPU), compare's
    verdict (KVM alone, without the QEMU requirement) must be what KVM says."""
    res = boot(host)
    assert res.files.get("fidelity.rc") == b"0\n", res.files.get("fidelity.stderr", b"").decode()
    seen = json.loads(res.files["fidelity.json"])
    kb = kb_load.registers()
    profile = read_profile(str(host.fixture))
    requests = fidelity_requests(host)
    disagreements, stricter = [], []
    for name, req in requests.items():
        off = tuple(req["off"])
        mine = CpuModel.from_profile(profile, kb, off=off)
        model = CpuModel({**mine.values, **{k: int(v, 16) for k, v in req["regs"].items()}},
                         mine.writable, vcpu_off=off)
        predicted = compare(model, profile, kb, check_qemu=False)
        kernel_ok = seen[name]["ok"]
        if kernel_ok and predicted.result == INCOMPATIBLE and host.kernel == "6.12" and all(
                r.kind == "rule" and r.field and kb.field(r.register, r.field).kvm_min
                and r.wanted is not None and r.wanted < kb.field(r.register, r.field).kvm_min
                for r in predicted.reasons):
            # Below a minimum Linux 7.3 enforces and 6.12 does not (kbgen's
            # KVM_FIELD_LIMITS, applied to every kernel on purpose): stricter
            # than this kernel, never more lenient.
            stricter.append(name)
            continue
        if (predicted.result != INCOMPATIBLE) != kernel_ok:
            disagreements.append(f"{name}: compare says {predicted.result} "
                                 f"({'; '.join(map(str, predicted.reasons[:3]))}), KVM says "
                                 f"{'accepted' if kernel_ok else seen[name]['not_accepted']}")
    print(f"{host.id}: compare agrees with KVM on {len(requests) - len(disagreements)} of "
          f"{len(requests)} models" + (f" ({len(stricter)} refused below a 7.3 minimum that "
                                       f"6.12 does not enforce: {stricter})" if stricter else ""))
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_every_baseline_with_this_host_is_accepted_by_its_kvm(host):
    seen = json.loads(boot(host).files["fidelity.json"])
    pairs = {k: v for k, v in seen.items()
             if k.startswith(("pair:", "all-on-kernel", "repaired:"))}
    refused = {k: v["not_accepted"] for k, v in pairs.items() if not v["ok"]}
    print(f"{host.id}: {len(pairs) - len(refused)} of {len(pairs)} baselines and "
          f"dependency-repaired models accepted")
    assert not refused


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.id)
def test_every_conflict_a_baseline_reports_is_refused_by_the_kernel(host):
    """For each other host without a common model, the first conflict that
    blames this host (a field its kernel cannot change, or not to the value
    needed) is tried on this host's KVM: it must be refused."""
    seen = json.loads(boot(host).files["fidelity.json"])
    refused = {k: v for k, v in seen.items() if k.startswith("refused:")}
    accepted = [k for k, v in refused.items() if v["ok"]]
    print(f"{host.id}: {len(refused) - len(accepted)} of {len(refused)} reported conflicts "
          f"refused by KVM")
    assert refused or host.kernel == "7.3", "some pair on 6.12 has no common model"
    assert not accepted
