"""libvirt on real arm64 KVM: the test bed's libvirt image (libvirt 11.3,
QEMU 10.0, python3-libvirt from Debian 13) booted on an emulated
Neoverse-N1 with Linux 7.3.

One boot runs the whole story as an operator would: `libvirt-arm-cpu host`
probes this host into the cache, `hook install` installs the hook (SIGHUP to
libvirtd), `cpu-baseline --save` makes a model of this host, `define`
translates and defines domains, and virsh and libvirt-python start them.
QEMU 10.0 does not take SYSREG_* properties (the series is not merged), so a
CPU that differs from the host's reaches the guest through the ID-register
loader, and the guest (the ID-register payload) reads it.
"""

from __future__ import annotations

import json
import re

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, compare_features
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.formats.hostcpu import from_xml as host_cpu_from_xml
from libvirt_arm_cpu.formats.profile import from_xml as profile_from_xml

from .domains import custom_cpu
from .idregs import PAYLOAD, parse_idregs
from .libvirtd import kvm_domain_xml, operator_job
from .testbed import run_in_guest

pytestmark = pytest.mark.kvm

CLI = "python3 -m libvirt_arm_cpu.cli"

GUEST_PY = r'''
import dataclasses, json, subprocess, sys, time
import libvirt
from libvirt_arm_cpu import api
from libvirt_arm_cpu.formats import profile

def sh(*argv, stdin=None):
    p = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=300)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}

CLI = ["python3", "-m", "libvirt_arm_cpu.cli"]
out = {}
base = sh(*CLI, "cpu-baseline", "/var/cache/libvirt-arm-cpu/host.xml", "--save", "--json")
out["baseline"] = base
model = json.loads(base["out"])["name"]
open("/out/model.txt", "w").write(model)
templates = json.load(open("/tmp/templates.json"))

def domain_file(key):
    path = f"/tmp/{key}.xml"
    open(path, "w").write(templates[key].replace("__MODEL__", model))
    return path

conn = libvirt.open("qemu:///system")
libvirt.registerErrorHandler(lambda *a: None, None)

def serial_of(name):
    """What the ID-register payload of domain *name* printed (it is done
    once the IDREGS END line is whole: a line without its end is taken as
    still being written)."""
    serial = f"/tmp/{name}.serial"
    for _ in range(600):
        try:
            if "IDREGS END\n" in open(serial, errors="replace").read().replace("\r", ""):
                break
        except OSError:
            pass
        time.sleep(0.1)
    try:
        return open(serial, errors="replace").read()
    except OSError as e:
        return f"(no serial output: {e})"

from libvirt_arm_cpu import settings
from libvirt_arm_cpu.host import verdicts

def memory():
    """The keys of the starts the hook remembers allowing."""
    return sorted(verdicts._load(settings.load()))

# A: the host's own CPU as a saved model: define, start, dumpxml, destroy.
# define makes the hook's check of the start and remembers it: the start
# is answered from the hook's memory (it remembers nothing new)
before = memory()
out["define_a"] = sh(*CLI, "define", domain_file("same"))
defined = memory()
out["start_a"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-same")
out["a_memory"] = [len(before), len(defined), memory() == defined]
dom = conn.lookupByName("lac-test-same")
out["a_active"] = dom.isActive()
out["a_live_xml"] = dom.XMLDesc()
out["dumpxml_a"] = sh(*CLI, "dumpxml", "lac-test-same")
out["validate_a"] = sh(*CLI, "validate", "lac-test-same", "--json")
if dom.isActive():
    dom.destroy()

# B: a CPU lower than the host's (asimddp off).  QEMU 10.0 takes no SYSREG_*,
# so translate gives it to the loader (<qemu:env>); virsh starts it and the
# ID-register payload, the domain's kernel, prints what the guest reads
out["translate_b"] = sh(*CLI, "translate", domain_file("lowered"), "-o", "/tmp/lowered-loader.xml")
out["translated_b"] = open("/tmp/lowered-loader.xml").read() if out["translate_b"]["rc"] == 0 else ""
out["define_b"] = sh("virsh", "-c", "qemu:///system", "define", "/tmp/lowered-loader.xml")
out["start_b"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-lowered")
out["b_memory"] = len(memory())     # virsh define checks nothing: the start was remembered
out["b_serial"] = serial_of("lac-test-lowered")
b = conn.lookupByName("lac-test-lowered")
out["b_active"] = b.isActive()
if b.isActive():
    b.destroy()
b.undefine()

# C: the same domain translated for a QEMU with SYSREG (as another host
# would), defined here: the hook refuses the start, through virsh and
# libvirt-python, and says to translate it again on this host
p = profile.read_profile("/var/cache/libvirt-arm-cpu/host.xml")
q = dataclasses.replace(p.qemu, sysreg="yes", version="10.2.50 (SYSREG series)")
profile.write_profile(dataclasses.replace(p, qemu=q, hostname="sysreg-host"), "/tmp/sysreg.xml")
out["translate_c"] = sh(*CLI, "translate", domain_file("lowered"), "--host", "/tmp/sysreg.xml",
                        "-o", "/tmp/lowered-arm.xml")
out["define_c"] = sh("virsh", "-c", "qemu:///system", "define", "/tmp/lowered-arm.xml")
out["start_c_virsh"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-lowered")
try:
    conn.lookupByName("lac-test-lowered").create()
    out["start_c_python"] = {"ok": True}
except libvirt.libvirtError as e:
    out["start_c_python"] = {"ok": False, "code": e.get_error_code(),
                             "domain": e.get_error_domain(), "message": e.get_error_message()}

# D: host-model, which libvirt refuses on aarch64, through define
out["define_d"] = sh(*CLI, "define", domain_file("hostmodel"))
out["start_d"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-hostmodel")
d = conn.lookupByName("lac-test-hostmodel")
out["d_active"] = d.isActive()
if d.isActive():
    d.destroy()

# E: the Python API with libvirt 11.3's python3-libvirt
model_xml = open(f"/var/lib/libvirt-arm-cpu/models/{model}.xml").read()
out["api_compare"] = api.compare_hypervisor_cpu(conn, None, "aarch64", "virt", "kvm", model_xml)
out["api_baseline"] = api.baseline_hypervisor_cpu(
    conn, None, "aarch64", "virt", "kvm", [open("/var/cache/libvirt-arm-cpu/host.xml").read()])
out["libvirt_version"] = conn.getLibVersion()
try:
    conn.compareHypervisorCPU(None, "aarch64", "virt", "kvm", model_xml, 0)
    out["libvirt_own_compare"] = "worked"
except libvirt.libvirtError as e:
    out["libvirt_own_compare"] = e.get_error_message()

# H: a named architecture level: define translates armv8.0-a on this host,
# virsh starts it through the loader, the payload prints what the guest reads
out["define_h"] = sh(*CLI, "define", domain_file("level"))
out["start_h"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-level")
out["h_serial"] = serial_of("lac-test-level")
h = conn.lookupByName("lac-test-level")
if h.isActive():
    h.destroy()

# I: the resident checker (hook serve, with the settings the hook reads):
# the hook, remembering nothing, asks it to check the start of B's domain
# again, and it checks as the hook would (try-apply included, on this KVM)
import os, signal
try:
    os.unlink("/var/cache/libvirt-arm-cpu/host.xml.verdicts")
except FileNotFoundError:
    pass
checker = subprocess.Popen([*CLI, "hook", "serve"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=open("/tmp/checker.log", "wb"))
for _ in range(600):
    if "checker ready on" in open("/tmp/checker.log").read() or checker.poll() is not None:
        break
    time.sleep(0.1)
sh("virsh", "-c", "qemu:///system", "undefine", "lac-test-lowered")     # C's, refused
out["define_i"] = sh("virsh", "-c", "qemu:///system", "define", "/tmp/lowered-loader.xml")
out["start_i"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-lowered")
i = conn.lookupByName("lac-test-lowered")
out["i_active"] = i.isActive()
if i.isActive():
    i.destroy()
out["i_memory"] = len(memory())
if checker.poll() is None:
    checker.send_signal(signal.SIGTERM)
out["i_checker_rc"] = checker.wait(timeout=60)
out["i_checker_log"] = open("/tmp/checker.log").read()

# F, G: the hook's last line of defence, KVM itself (try-apply).  The cached
# profile is edited as a host with a SYSREG-capable QEMU would have it, so
# compare lets the domain through and the hook asks KVM.
CACHE = "/var/cache/libvirt-arm-cpu/host.xml"
p = profile.read_profile(CACHE)
profile.write_profile(dataclasses.replace(p, qemu=dataclasses.replace(
    p.qemu, sysreg="yes", version="10.2.50 (SYSREG series)")), CACHE)
# F: a lowering KVM accepts: the hook lets it start, and QEMU 10.0 itself
# then fails on the SYSREG property it does not know
out["define_f"] = sh(*CLI, "define", domain_file("lowered_f"))
out["start_f"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-lowered-f")
# G: the profile also claims ID_AA64PFR0_EL1 is writable everywhere (it is
# not): compare agrees to FP = 0xf, KVM refuses it, and so does the hook
p = profile.read_profile(CACHE)
regs = [dataclasses.replace(r, writable=(1 << 64) - 1) if r.name == "ID_AA64PFR0_EL1" else r
        for r in p.registers]
profile.write_profile(dataclasses.replace(p, registers=regs), CACHE)
out["translate_g"] = sh(*CLI, "translate", domain_file("nofp"), "-o", "/tmp/nofp-arm.xml")
out["define_g"] = sh("virsh", "-c", "qemu:///system", "define", "/tmp/nofp-arm.xml")
out["start_g"] = sh("virsh", "-c", "qemu:///system", "start", "lac-test-nofp")
json.dump(out, open("/out/result.json", "w"), indent=1)
'''


@pytest.fixture(scope="module")
def guest():
    templates = {
        "same": kvm_domain_xml("lac-test-same", cpu=custom_cpu("__MODEL__")),
        "lowered": kvm_domain_xml("lac-test-lowered", kernel=PAYLOAD,
                                  cpu=custom_cpu("__MODEL__", ("disable", "asimddp"))),
        "hostmodel": kvm_domain_xml("lac-test-hostmodel", cpu="<cpu mode='host-model'/>"),
        "level": kvm_domain_xml("lac-test-level", kernel=PAYLOAD, cpu=custom_cpu("armv8.0-a")),
        "lowered_f": kvm_domain_xml("lac-test-lowered-f",
                                    cpu=custom_cpu("__MODEL__", ("disable", "asimddp"))),
        "nofp": kvm_domain_xml("lac-test-nofp", cpu=custom_cpu(
            "__MODEL__", ("require", "SYSREG_ID_AA64PFR0_EL1_FP", "0xf"))),
    }
    job = operator_job(
        templates, GUEST_PY,
        between="virsh -c qemu:///system capabilities > /out/caps.xml 2>/out/caps.err",
        after="tail -n 60 /var/log/libvirt/libvirtd.log > /out/libvirtd.log 2>/dev/null")
    res = run_in_guest(kernel="7.3", qemu="10.0", cpu="neoverse-n1", image="libvirt",
                       script=job, timeout=600)
    assert res.files.get("job.rc") == b"0\n", (res.files.get("job.err", b"").decode()[-3000:],
                                               res.files.get("libvirtd.log", b"").decode())
    return res, json.loads(res.files["result.json"])


def test_operator_setup_in_the_guest(guest):
    res, out = guest
    assert res.files["host.rc"] == b"0\n", res.files.get("host.err")
    # the probe leaves the hook's compact copy beside the profile, so the
    # hook's first check reads no XML
    hostname = profile_from_xml(res.files["host.xml"]).hostname
    assert res.files["compact.txt"].decode() == f"compact copy: {hostname}\n", \
        res.files["compact.txt"]
    assert b"hook installed: /etc/libvirt/hooks/qemu.d/50-libvirt-arm-cpu" in \
        res.files["install.txt"]
    assert b"sent SIGHUP to libvirtd" in res.files["install.txt"]
    assert out["baseline"]["rc"] == 0
    assert out["libvirt_version"] >= 11_000_000


def test_a_translated_domain_equal_to_the_host_starts_on_real_kvm(guest):
    _, out = guest
    assert out["define_a"]["rc"] == 0, out["define_a"]["err"]
    assert out["start_a"]["rc"] == 0, out["start_a"]["err"]
    assert out["a_active"]
    assert "host-passthrough" in out["a_live_xml"] and "urn:x-libvirt-arm-cpu:domain:1" in \
        out["a_live_xml"]
    assert out["dumpxml_a"]["rc"] == 0 and "<model fallback=\"forbid\">arm64-" in \
        out["dumpxml_a"]["out"]
    assert json.loads(out["validate_a"]["out"])["result"] == "identical"
    # define made the hook's check of the start: the start found it in the
    # hook's memory (a start of B, defined by virsh, added its own)
    assert out["a_memory"] == [0, 1, True], out["a_memory"]
    assert out["b_memory"] == 2


def test_the_resident_checker_answers_the_hooks_check_on_real_kvm(guest):
    """With `hook serve` running, a start the hook does not remember is
    checked by the checker (try-apply on this KVM included), the domain
    starts, and the hook remembers the allowance as its own."""
    _, out = guest
    log = out["i_checker_log"]
    assert "checker ready on /run/libvirt-arm-cpu/checker.sock" in log, log
    assert out["define_i"]["rc"] == 0, out["define_i"]["err"]
    assert out["start_i"]["rc"] == 0, (out["start_i"]["err"], log)
    assert out["i_active"]
    assert "checker: domain 'lac-test-lowered' (prepare): ok" in log, log
    assert out["i_memory"] == 1
    assert out["i_checker_rc"] == 0, log


def test_a_lowered_cpu_reaches_the_guest_through_the_loader_and_virsh_start(guest):
    """QEMU 10.0 takes no SYSREG_* properties: translate chooses the loader,
    virsh starts the domain, and what the guest reads with MRS is the model
    (asimddp off: ID_AA64ISAR0_EL1.DP = 0), the host's elsewhere."""
    res, out = guest
    b = out["translate_b"]
    assert b["rc"] == 0, b["err"]
    assert "LIBVIRT_ARM_CPU_ID_REGS" in out["translated_b"] and "LD_PRELOAD" in \
        out["translated_b"] and "SYSREG_" not in out["translated_b"]
    assert out["define_b"]["rc"] == 0, out["define_b"]["err"]
    assert out["start_b"]["rc"] == 0, out["start_b"]["err"]
    assert out["b_active"]
    seen = parse_idregs(out["b_serial"])
    host = profile_from_xml(res.files["host.xml"]).values()
    kb = kb_load.registers()
    dp = kb.field("ID_AA64ISAR0_EL1", "DP")
    assert dp.get(host["ID_AA64ISAR0_EL1"]) == 1 and dp.get(seen["ID_AA64ISAR0_EL1"]) == 0
    assert seen["ID_AA64ISAR0_EL1"] == dp.put(host["ID_AA64ISAR0_EL1"], 0)
    same = [n for n in ("ID_AA64PFR0_EL1", "ID_AA64MMFR0_EL1", "ID_AA64ISAR1_EL1", "MIDR_EL1")
            if seen.get(n) is not None]
    assert len(same) == 4 and all(seen[n] == host[n] for n in same), \
        {n: (hex(seen[n]), hex(host[n])) for n in same}


def test_a_named_architecture_level_reaches_the_guest(guest):
    """<model>armv8.0-a</model> on the emulated Neoverse-N1: what the level
    fixes, the guest reads (no LSE, no DotProd, AArch64-only EL0); what it
    takes from its host (FP16 in FP/AdvSIMD, RAS), the host's values."""
    res, out = guest
    assert out["define_h"]["rc"] == 0, out["define_h"]["err"]
    assert out["start_h"]["rc"] == 0, out["start_h"]["err"]
    seen = parse_idregs(out["h_serial"])
    host = profile_from_xml(res.files["host.xml"]).values()
    kb = kb_load.registers()
    level = kb_load.named_models().find("armv8.0-a")
    atomic = kb.field("ID_AA64ISAR0_EL1", "ATOMIC")
    assert atomic.get(host["ID_AA64ISAR0_EL1"]) == 2 and atomic.get(seen["ID_AA64ISAR0_EL1"]) == 0
    checked = 0
    for name, value in level.values.items():
        if name not in seen:
            continue
        taken = level.host_fields.get(name, ())
        for f in kb.register(name).fields:
            want = f.get(host[name]) if f.name in taken else f.get(value)
            assert f.get(seen[name]) == want, (f"{name}.{f.name}", hex(seen[name]))
            checked += 1
    assert checked > 100
    fp = kb.field("ID_AA64PFR0_EL1", "FP")
    assert fp.get(seen["ID_AA64PFR0_EL1"]) == fp.get(host["ID_AA64PFR0_EL1"]) == 1


def test_a_domain_translated_for_another_method_is_refused_saying_what_to_do(guest):
    _, out = guest
    assert out["translate_c"]["rc"] == 0 and out["define_c"]["rc"] == 0
    virsh = out["start_c_virsh"]
    assert virsh["rc"] == 1 and "Hook script execution failed" in virsh["err"]
    assert "its QEMU input (sysreg) was made for host 'sysreg-host'" in virsh["err"]
    assert "translate it again here" in virsh["err"]
    py = out["start_c_python"]
    assert py["ok"] is False and py["code"] == 70 and py["domain"] == 34   # HOOK_SCRIPT_FAILED
    assert "was made for host 'sysreg-host'" in py["message"]


def test_host_model_works_on_aarch64_through_define(guest):
    _, out = guest
    assert out["define_d"]["rc"] == 0, out["define_d"]["err"]
    assert out["start_d"]["rc"] == 0, out["start_d"]["err"]
    assert out["d_active"]


def test_python_api_with_libvirt_11(guest):
    _, out = guest
    assert out["api_compare"] == 1                      # VIR_CPU_COMPARE_IDENTICAL
    assert "<arm:registers" in out["api_baseline"]
    # libvirt itself cannot answer this on aarch64
    assert out["libvirt_own_compare"] != "worked"


def test_feature_level_compare_reads_real_libvirt_capabilities(guest):
    """libvirt's host <cpu> (virsh capabilities on this arm64 KVM host)
    against the model of what KVM gives guests on the same host.  Both
    describe one CPU, so most hwcaps agree; where they do not, the verdict
    names each feature, and is marked as feature level.  (Seen here: KVM
    shows the guest ID_AA64PFR1_EL1.SSBS, libvirt's list has no ssbs: one
    reason the feature level is less precise than a host profile.)"""
    res, _ = guest
    kb = kb_load.registers()
    model = CpuModel.from_profile(profile_from_xml(res.files["host.xml"]), kb)
    host_cpu = host_cpu_from_xml(res.files["caps.xml"], "caps.xml")
    assert host_cpu.arch == "aarch64" and host_cpu.vendor == "ARM"
    assert host_cpu.model == "Neoverse-N1"
    catalog = kb_load.features()
    mine = {f.key for f in catalog.present(model.values) if f.kind == "hwcap"}
    shared = mine & host_cpu.features
    print(f"feature level: {len(shared)} of {len(mine)} hwcaps in libvirt's list; "
          f"only in the KVM view: {sorted(mine - host_cpu.features)}")
    assert {"fp", "asimd", "aes", "atomics", "asimddp"} <= shared
    assert len(shared) >= 0.8 * len(mine)
    verdict = compare_features(model, host_cpu, catalog)
    assert verdict.precision == "features"
    named = {r.message.split()[1] for r in verdict.reasons}
    assert named == mine - host_cpu.features
    assert (verdict.result == INCOMPATIBLE) == bool(named)


def test_the_hook_asks_kvm_itself_before_a_start(guest):
    """With a SYSREG-capable QEMU (as the cached profile is edited to say),
    compare passes and the hook runs try-apply on this host's real KVM:
    a lowering KVM accepts goes through (and QEMU 10.0 itself then rejects
    the property it does not know); one KVM refuses is stopped by the hook."""
    _, out = guest
    assert out["define_f"]["rc"] == 0, out["define_f"]["err"]
    f = out["start_f"]
    assert f["rc"] == 1 and "Hook script execution failed" not in f["err"]
    assert re.search(r"SYSREG_ID_\w+_DP", f["err"]), f["err"]   # QEMU's own complaint
    assert out["translate_g"]["rc"] == 0, out["translate_g"]["err"]
    g = out["start_g"]
    assert g["rc"] == 1 and "Hook script execution failed" in g["err"]
    assert "KVM refuses ID_AA64PFR0_EL1" in g["err"] and "EINVAL" in g["err"]
