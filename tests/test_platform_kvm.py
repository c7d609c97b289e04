"""SVE vector lengths reach a guest (issue 13), on real arm64 KVM: the test
bed's libvirt image (libvirt 11.3, QEMU 10.0) on QEMU's ``max`` CPU with
Linux 7.3, which offers SVE up to 2048 bits.

A CPU model baselined with a host whose SVE stops at 256 bits (the captured
``max-sve256`` profile) is translated and defined here by
``libvirt-arm-cpu define``; virsh starts it; the guest (the ID-register
payload, which reads RDVL after asking ZCR_EL1 for 2048 bits) has 256-bit
vectors.  The model of this host alone gives the guest 2048 bits.  The
guest also reads the timer frequency and PMU counters the host's profile
recorded.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from libvirt_arm_cpu.formats.profile import from_xml as profile_from_xml

from .domains import custom_cpu
from .idregs import PAYLOAD, platform_values
from .kvm_hosts import FIXTURES
from .libvirtd import kvm_domain_xml, operator_job
from .testbed import run_in_guest

pytestmark = pytest.mark.kvm

CLI = "python3 -m libvirt_arm_cpu.cli"
SVE256 = FIXTURES / "max-sve256-qemu10.0-linux7.3.xml"

GUEST_PY = r'''
import json, subprocess, time
CLI = ["python3", "-m", "libvirt_arm_cpu.cli"]
out = {}
def sh(*argv):
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=300)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
templates = json.load(open("/tmp/templates.json"))
HOST = "/var/cache/libvirt-arm-cpu/host.xml"
for key, inputs in (("pair", [HOST, "/in/sve256.xml"]), ("own", [HOST]), ("trim", None)):
    model = ""
    if inputs:
        base = sh(*CLI, "cpu-baseline", *inputs, "--save", "--json")
        out[f"baseline_{key}"] = base
        if base["rc"] != 0:
            continue
        model = json.loads(base["out"])["name"]
    name = f"lac-test-sve-{key}"
    template = templates["trim" if key == "trim" else "model"]
    open(f"/tmp/{name}.xml", "w").write(template.replace("__MODEL__", model)
                                        .replace("lac-test-sve", name))
    out[f"define_{key}"] = sh(*CLI, "define", f"/tmp/{name}.xml")
    out[f"xml_{key}"] = sh("virsh", "-c", "qemu:///system", "dumpxml", name)["out"]
    out[f"start_{key}"] = sh("virsh", "-c", "qemu:///system", "start", name)
    serial = f"/tmp/{name}.serial"
    text = ""
    for _ in range(600):
        try:
            text = open(serial, errors="replace").read()
        except OSError:
            text = ""
        if "PLATFORM END" in text:
            break
        time.sleep(0.1)
    out[f"serial_{key}"] = text
    sh("virsh", "-c", "qemu:///system", "destroy", name)
json.dump(out, open("/out/result.json", "w"), indent=1)
'''


@pytest.fixture(scope="module")
def guest():
    templates = {
        "model": kvm_domain_xml("lac-test-sve", kernel=PAYLOAD, cpu=custom_cpu("__MODEL__")),
        # QEMU's legacy property as libvirt passes it: no length from 512 bits up
        "trim": kvm_domain_xml("lac-test-sve", kernel=PAYLOAD, cpu=(
            "<cpu mode='host-model'><feature policy='disable' name='sve512'/></cpu>")),
    }
    job = operator_job(templates, GUEST_PY)
    res = run_in_guest(kernel="7.3", qemu="10.0", cpu="max", image="libvirt", script=job,
                       files={"sve256.xml": SVE256.read_bytes()}, timeout=400)
    assert res.files.get("job.rc") == b"0\n", res.files.get("job.err", b"").decode()[-3000:]
    return res, json.loads(res.files["result.json"])


def test_the_host_offers_2048_bits(guest):
    res, _ = guest
    assert res.files["host.rc"] == b"0\n", res.files.get("host.err")
    host = profile_from_xml(res.files["host.xml"])
    assert host.platform.sve_max == 2048
    # the fixture is the same emulated CPU with SVE up to 256 bits
    assert profile_from_xml(SVE256.read_bytes()).platform.sve_vls == {128, 256}


def test_a_model_shared_with_a_256_bit_host_gives_the_guest_256_bits(guest):
    res, out = guest
    assert out["baseline_pair"]["rc"] == 0, out["baseline_pair"]["err"]
    assert out["define_pair"]["rc"] == 0, out["define_pair"]["err"]
    # libvirt's own sveNNN features name the model's lengths
    xml = out["xml_pair"]
    assert "<feature policy='require' name='sve128'/>" in xml, xml
    assert "<feature policy='require' name='sve256'/>" in xml and "sve512" not in xml
    assert out["start_pair"]["rc"] == 0, out["start_pair"]["err"]
    seen = platform_values(out["serial_pair"])
    assert seen["SVE_VL_BYTES"] == 256 // 8, out["serial_pair"][-400:]


def test_the_model_of_this_host_alone_keeps_2048_bits(guest):
    """The control: the same guest with this host's own model (and the
    timer and PMU counters the profile recorded are what the guest reads)."""
    res, out = guest
    assert out["define_own"]["rc"] == 0, out["define_own"]["err"]
    assert out["start_own"]["rc"] == 0, out["start_own"]["err"]
    seen = platform_values(out["serial_own"])
    assert seen["SVE_VL_BYTES"] == 2048 // 8, out["serial_own"][-400:]
    host = profile_from_xml(res.files["host.xml"])
    assert seen["CNTFRQ_EL0"] == host.platform.cntfrq
    assert seen["PMCR_EL0"] is not None and seen["PMCR_EL0"] >> 11 & 0x1F == \
        host.platform.pmu_counters


def test_disabling_a_length_as_libvirt_writes_it_reaches_the_guest(guest):
    """<feature policy='disable' name='sve512'/> (host-model): the guest's
    largest vector length is 384 bits."""
    _, out = guest
    assert out["define_trim"]["rc"] == 0, out["define_trim"]["err"]
    assert out["start_trim"]["rc"] == 0, out["start_trim"]["err"]
    names = [f.get("name") for f in ET.fromstring(out["xml_trim"]).findall("cpu/feature")]
    # (libvirt adds 'sve' itself: the lengths need it)
    assert [n for n in names if n != "sve"] == ["sve128", "sve256", "sve384"], names
    assert platform_values(out["serial_trim"])["SVE_VL_BYTES"] == 384 // 8
