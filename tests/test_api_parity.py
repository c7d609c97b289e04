"""libvirt_arm_cpu.api against libvirt-python's virConnect.baselineHypervisorCPU
and compareHypervisorCPU (issue 13, API): the inputs libvirt takes, arch=None,
flags, virttype/machine/emulator, remote connections, and every error a
libvirt.libvirtError with libvirt's code and domain.

Connections are real: ``test:///default`` (libvirt's test driver, an i686
host) and this machine's libvirtd (the ``libvirt_conn`` fixture).  Hosts
are the captured profiles of tests/data/hosts; libvirt's own schema is the
oracle of VIR_CONNECT_COMPARE_CPU_VALIDATE_XML (virt-xml-validate).
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from libvirt_arm_cpu import api
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.model import CpuModel

from .domains import parity_lab, MAX73, N1_73, V1_73, custom_cpu, domain_xml, with_sysreg
from .libvirtd import libvirt_conn_fixture  # noqa: F401  (the libvirt_conn fixture)

AARCH64 = "aarch64"
EXPAND = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
MIGRATABLE = libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE
FAIL = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
VALIDATE = libvirt.VIR_CONNECT_COMPARE_CPU_VALIDATE_XML


@pytest.fixture(scope="module")
def conn():
    c = libvirt.open("test:///default")
    yield c
    c.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return parity_lab(tmp_path_factory.mktemp("parity"))


@pytest.fixture(autouse=True)
def _models(lab, monkeypatch):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(lab.models))
    # no settings file: "this machine" is this machine, whatever /etc holds
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(lab.tmp / "no-such.conf"))


def hwcaps(profile: Path) -> list[str]:
    m = CpuModel.from_profile(read_profile(str(profile)), kb_load.registers())
    return [f.key for f in kb_load.features().present(m.values) if f.kind == "hwcap"]


def capabilities(features: list[str], arch: str = AARCH64) -> str:
    """`virsh capabilities` of an aarch64 host as libvirt 9-11 writes it."""
    feats = "".join(f"\n      <feature name='{f}'/>" for f in features)
    return (f"<capabilities>\n  <host>\n    <uuid>5a2c1fd1-0000-0000-0000-000000000001</uuid>\n"
            f"    <cpu>\n      <arch>{arch}</arch>\n      <model>Neoverse-N1</model>\n"
            f"      <vendor>ARM</vendor>\n      <topology sockets='1' dies='1' cores='4' "
            f"threads='1'/>{feats}\n      <pages unit='KiB' size='4'/>\n    </cpu>\n"
            f"  </host>\n</capabilities>\n")


def host_cpu(caps: str) -> str:
    """The host <cpu> of a capabilities document, as virsh extracts it."""
    return ET.tostring(ET.fromstring(caps).find("host/cpu"), encoding="unicode")


def compare(conn, xml: str, flags: int = 0, host=None, **kw) -> tuple[int, list[str]]:
    """compare_hypervisor_cpu's answer and the FeatureLevelWarnings it gave."""
    args = {"emulator": None, "arch": AARCH64, "machine": "virt", "virttype": "kvm", **kw}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = api.compare_hypervisor_cpu(conn, args["emulator"], args["arch"], args["machine"],
                                       args["virttype"], xml, flags, host=host)
    return r, [str(w.message) for w in caught if issubclass(w.category, api.FeatureLevelWarning)]


def registers(cpu: ET.Element) -> dict[str, str | None]:
    regs = cpu.find("{urn:x-libvirt-arm-cpu:cpu:1}registers")
    return {r.get("name"): r.get("value")
            for r in regs.findall("{urn:x-libvirt-arm-cpu:cpu:1}register")}


def baseline(conn, xmls: list[str], flags: int = 0, **kw) -> str:
    args = {"emulator": None, "arch": AARCH64, "machine": "virt", "virttype": "kvm", **kw}
    return api.baseline_hypervisor_cpu(conn, args["emulator"], args["arch"], args["machine"],
                                       args["virttype"], xmls, flags)


def raised(fn, *args, **kw) -> libvirt.libvirtError:
    """The libvirtError *fn* raises; it must be one of ours, with one line."""
    with pytest.raises(libvirt.libvirtError) as err:
        fn(*args, **kw)
    e = err.value
    assert isinstance(e, api.ArmCpuError), (type(e), str(e))
    msg = e.get_error_message()
    assert msg == str(e) and "\n" not in msg and msg.strip() == msg
    assert e.get_error_level() == libvirt.VIR_ERR_ERROR
    return e


# -- inputs: what libvirt takes ------------------------------------------------------

def test_a_libvirt_host_cpu_is_compared_at_feature_level_and_says_so(conn, lab):
    n1 = lab.hosts["n1"]
    hw = hwcaps(n1)
    assert "asimddp" in hw and "sve" not in hw
    caps = capabilities(hw)
    for xml in (caps, host_cpu(caps)):        # whole `virsh capabilities`, or its <cpu>
        r, warned = compare(conn, xml, host=str(n1))
        assert r == libvirt.VIR_CPU_COMPARE_IDENTICAL
        assert len(warned) == 1 and "feature level" in warned[0]
    # a host with more (Neoverse-V1): superset; a CPU asking for SVE on N1: incompatible
    r, warned = compare(conn, caps, host=str(lab.hosts["v1"]))
    assert r == libvirt.VIR_CPU_COMPARE_SUPERSET and warned
    more = capabilities(hw + ["sve"])
    assert compare(conn, more, host=str(n1))[0] == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
    e = raised(compare, conn, more, FAIL, host=str(n1))
    assert isinstance(e, api.CpuIncompatibleError)
    assert e.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE
    assert e.get_error_domain() == libvirt.VIR_FROM_CPU
    assert "(feature level)" in str(e) and "feature sve (ID_AA64PFR0_EL1.SVE)" in str(e)
    assert [r.kind for r in e.reasons] == ["missing-feature"]


def test_a_domain_xml_and_its_cpu_are_taken_as_libvirt_takes_the_cpu(conn, lab):
    host = str(lab.hosts["max"])
    cpu = custom_cpu(lab.model, ("disable", "sve2"), topology=False)
    dom = domain_xml("lac-test-parity", cpu=cpu)
    # a guest <cpu> naming a saved model, resolved as translate does (register level)
    assert compare(conn, cpu, host=host) == (libvirt.VIR_CPU_COMPARE_SUPERSET, [])
    assert compare(conn, dom, host=host) == (libvirt.VIR_CPU_COMPARE_SUPERSET, [])
    # a domain translated by libvirt-arm-cpu: its original <cpu>, not host-passthrough
    translated = api.translate_domain_xml(dom, host)
    assert "host-passthrough" in translated
    assert compare(conn, translated, host=host) == (libvirt.VIR_CPU_COMPARE_SUPERSET, [])
    # the model itself, exactly
    plain = custom_cpu(lab.model, topology=False)
    assert compare(conn, plain, host=host)[0] == libvirt.VIR_CPU_COMPARE_IDENTICAL
    assert compare(conn, plain, host=str(lab.hosts["n1"]))[0] == \
        libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
    # host-passthrough: the host's own CPU
    passthrough = domain_xml("lac-test-parity", cpu="<cpu mode='host-passthrough'/>")
    assert compare(conn, passthrough, host=host)[0] == libvirt.VIR_CPU_COMPARE_IDENTICAL
    # a domain of another architecture is refused, naming it
    x86 = dom.replace("arch='aarch64'", "arch='x86_64'")
    e = raised(compare, conn, x86, host=host)
    assert e.get_error_code() == libvirt.VIR_ERR_XML_ERROR and "x86_64" in str(e)


def test_domcapabilities_host_model_is_taken_as_virsh_takes_it(conn, lab):
    hw = hwcaps(lab.hosts["n1"])
    feats = "".join(f"<feature policy='require' name='{f}'/>" for f in hw)
    domcaps = (f"<domainCapabilities><path>/usr/bin/qemu-system-aarch64</path>"
               f"<domain>kvm</domain><machine>virt-9.2</machine><arch>aarch64</arch><cpu>"
               f"<mode name='host-passthrough' supported='yes'/>"
               f"<mode name='host-model' supported='yes'><model fallback='forbid'>Neoverse-N1"
               f"</model><vendor>ARM</vendor>{feats}<feature policy='disable' name='sve'/>"
               f"</mode></cpu></domainCapabilities>")
    r, warned = compare(conn, domcaps, host=str(lab.hosts["n1"]))
    assert r == libvirt.VIR_CPU_COMPARE_IDENTICAL and warned
    assert "Neoverse-N1" in warned[0]          # libvirt's model name is not judged: said
    unsupported = domcaps.replace("name='host-model' supported='yes'",
                                  "name='host-model' supported='no'")
    e = raised(compare, conn, unsupported, host=str(lab.hosts["n1"]))
    assert e.get_error_code() == libvirt.VIR_ERR_XML_ERROR and "host-model" in str(e)


def test_libvirt_11_3_cpu_baseline_output_interoperates(conn, lab):
    """libvirt 11.3's virsh cpu-baseline answers a <model> of its own on aarch64."""
    n1 = str(lab.hosts["n1"])
    bare = ("<cpu mode='custom' match='exact'>\n  <model fallback='forbid'>Neoverse-N1</model>"
            "\n  <vendor>ARM</vendor>\n</cpu>\n")
    e = raised(compare, conn, bare, host=n1)
    assert isinstance(e, api.ArmCpuUnsupportedError)
    assert e.get_error_code() == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
    assert "'Neoverse-N1'" in str(e) and "no features" in str(e)
    e = raised(baseline, conn, [bare])
    assert isinstance(e, api.ArmCpuUnsupportedError) and "xmlCPUs[0]" in str(e)
    feats = "".join(f"<feature policy='require' name='{f}'/>" for f in hwcaps(lab.hosts["n1"]))
    with_features = bare.replace("</cpu>", feats + "</cpu>")
    r, warned = compare(conn, with_features, host=n1)
    assert r == libvirt.VIR_CPU_COMPARE_IDENTICAL and warned
    # a feature name this project does not know cannot be shown on the host
    sve128 = bare.replace("</cpu>", "<feature policy='require' name='sve128'/></cpu>")
    assert compare(conn, sve128, host=n1)[0] == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
    e = raised(compare, conn, sve128, FAIL, host=n1)
    assert "sve128" in str(e) and e.reasons[0].kind == "unknown-feature"


def test_a_host_profile_as_the_cpu_is_a_passthrough_guest_of_that_host(conn, lab):
    n1, v1 = lab.hosts["n1"], lab.hosts["v1"]
    assert compare(conn, n1.read_text(), host=str(n1))[0] == libvirt.VIR_CPU_COMPARE_IDENTICAL
    # N1 and V1 differ in fields KVM does not let change: no migration either way
    assert compare(conn, n1.read_text(), host=str(v1))[0] == \
        libvirt.VIR_CPU_COMPARE_INCOMPATIBLE


# -- baseline ----------------------------------------------------------------------

def test_baseline_takes_models_documents_and_several_cpus(conn, lab):
    profiles = [Path(MAX73).read_text(), lab.hosts["max"].read_text()]
    plain = baseline(conn, profiles)
    model_xml = (lab.models / f"{lab.model}.xml").read_text()
    # a saved model, named by a domain's <cpu> without policies, is that model
    dom = domain_xml("lac-test-parity", cpu=custom_cpu(lab.model, topology=False))
    assert baseline(conn, [dom]) == baseline(conn, [model_xml])
    assert ET.fromstring(baseline(conn, [dom])).findtext("model") == lab.model
    # several <cpu> in one string, as virsh cpu-baseline reads a file
    one, two = ET.fromstring(baseline(conn, [plain])), ET.fromstring(baseline(conn, [plain + plain]))
    assert two.findtext("model") == one.findtext("model") == ET.fromstring(plain).findtext("model")
    assert registers(two) == registers(one)
    # policies need a host to be resolved against; a libvirt host <cpu> has no values
    policies = domain_xml("lac-test-parity",
                          cpu=custom_cpu(lab.model, ("disable", "sve2"), topology=False))
    e = raised(baseline, conn, [model_xml, policies])
    assert isinstance(e, api.ArmCpuUnsupportedError) and "xmlCPUs[1]" in str(e)
    caps = capabilities(hwcaps(lab.hosts["n1"]))
    e = raised(baseline, conn, [profiles[0], caps])
    assert e.get_error_code() == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
    assert "xmlCPUs[1] is a libvirt host CPU" in str(e)


def test_baseline_flags(conn, lab):
    profiles = [lab.hosts["max"].read_text()]
    plain = ET.fromstring(baseline(conn, profiles))
    # MIGRATABLE: accepted, every model is migratable already
    assert baseline(conn, profiles, MIGRATABLE) == baseline(conn, profiles)
    # EXPAND_FEATURES: every feature, FEAT_* too
    expanded = ET.fromstring(baseline(conn, profiles, EXPAND | MIGRATABLE))
    names = {f.get("name") for f in expanded.findall("feature")}
    assert {f.get("name") for f in plain.findall("feature")} < names
    assert any(n.startswith("FEAT_") for n in names)
    e = raised(baseline, conn, profiles, 1 << 10)
    assert e.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert str(e) == "unsupported flags (0x400) in function baseline_hypervisor_cpu"
    e = raised(baseline, conn, profiles, EXPAND | 4)
    assert str(e) == "unsupported flags (0x4) in function baseline_hypervisor_cpu"


def test_baseline_names_hosts_by_hostname_or_by_index(conn, lab):
    tmp = lab.tmp
    nameless = [with_sysreg(N1_73, tmp / "n1-none.xml", "(none)").read_text(),
                with_sysreg(V1_73, tmp / "v1-none.xml", "(none)").read_text()]
    e = raised(baseline, conn, nameless)
    assert isinstance(e, api.CpuIncompatibleError)
    assert "(none)" not in str(e)
    assert "xmlCPUs[0]=" in str(e) and "xmlCPUs[1]=" in str(e)
    assert all("(none)" not in r.message for r in e.reasons) and len(e.reasons) >= 3
    named = [lab.hosts["n1"].read_text(), lab.hosts["v1"].read_text()]
    e = raised(baseline, conn, named)
    assert "host-n1=" in str(e) and "host-v1=" in str(e)
    # a model's hosts are its inputs' names
    ok = baseline(conn, [nameless[0]])
    regs = ET.fromstring(ok).find("{urn:x-libvirt-arm-cpu:cpu:1}registers")
    assert [h.get("name") for h in regs.findall("{urn:x-libvirt-arm-cpu:cpu:1}host")] == \
        ["xmlCPUs[0]"]


# -- arch, virttype, machine, emulator -----------------------------------------------

def test_arch_none_is_the_connections_arch(conn, lab, monkeypatch):
    model = baseline(conn, [lab.hosts["max"].read_text()])
    host = str(lab.hosts["max"])
    caps = conn.getCapabilities()
    arch = ET.fromstring(caps).findtext("host/cpu/arch")
    assert arch != AARCH64           # the test driver's host is i686
    # arch=None with an aarch64 CPU on a host that is not: an error naming its arch
    e = raised(compare, conn, model, host=host, arch=None)
    assert e.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert f", {arch}: libvirt_arm_cpu answers for aarch64 only" in str(e)
    assert "test:///default" in str(e)
    e = raised(baseline, conn, [model], arch=None)
    assert arch in str(e)
    e = raised(compare, conn, model, host=host, arch="x86_64")
    assert "arch 'x86_64'" in str(e)
    # another architecture's own CPU: the connection's own answer, as before
    x86 = "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>"
    with pytest.raises(libvirt.libvirtError) as own:
        conn.compareHypervisorCPU(None, None, None, None, x86, 0)
    with pytest.raises(libvirt.libvirtError) as ours:
        api.compare_hypervisor_cpu(conn, None, None, None, None, x86)
    assert not isinstance(ours.value, api.ArmCpuError)
    assert ours.value.get_error_code() == own.value.get_error_code()
    # a connection to an aarch64 host: arch=None is answered here
    monkeypatch.setattr(conn, "getCapabilities",
                        lambda: caps.replace(f"<arch>{arch}</arch>", "<arch>aarch64</arch>", 1))
    assert compare(conn, model, host=host, arch=None)[0] == libvirt.VIR_CPU_COMPARE_IDENTICAL
    assert baseline(conn, [model], arch=None) == baseline(conn, [model])


@pytest.mark.parametrize("kw, code, needle", [
    ({"virttype": "qemu"}, libvirt.VIR_ERR_CONFIG_UNSUPPORTED, "TCG"),
    ({"virttype": "xen"}, libvirt.VIR_ERR_INVALID_ARG, "virttype 'xen'"),
    ({"machine": "pc-q35-7.2"}, libvirt.VIR_ERR_INVALID_ARG, "machine 'pc-q35-7.2'"),
    ({"machine": "raspi3b"}, libvirt.VIR_ERR_INVALID_ARG, "expected 'virt'"),
    ({"emulator": "/nonexistent/qemu-system-aarch64"}, libvirt.VIR_ERR_INVALID_ARG,
     "no such executable on this machine"),
    ({"emulator": "/usr/bin/qemu-system-x86_64"}, libvirt.VIR_ERR_INVALID_ARG,
     "not an aarch64 QEMU"),
])
def test_hypervisor_arguments_are_checked(conn, lab, kw, code, needle):
    model = baseline(conn, [lab.hosts["max"].read_text()])
    for call in (lambda: compare(conn, model, host=str(lab.hosts["max"]), **kw),
                 lambda: baseline(conn, [model], **kw)):
        e = raised(call)
        assert e.get_error_code() == code and needle in str(e), str(e)


def test_accepted_hypervisor_arguments(conn, lab):
    model = baseline(conn, [lab.hosts["max"].read_text()])
    host = str(lab.hosts["max"])
    emulator = shutil.which("qemu-system-aarch64")
    assert emulator, "Debian 12's qemu-system-arm is installed for the libvirt tests"
    for kw in ({"virttype": None, "machine": None}, {"machine": "virt-7.2"},
               {"emulator": emulator, "machine": "virt-10.0", "virttype": "kvm"}):
        assert compare(conn, model, host=host, **kw)[0] == libvirt.VIR_CPU_COMPARE_IDENTICAL
        assert baseline(conn, [model], **kw) == baseline(conn, [model])


# -- the host of a connection ----------------------------------------------------------

def test_a_remote_connection_needs_its_hosts_profile(conn, lab, monkeypatch):
    model = baseline(conn, [lab.hosts["max"].read_text()])
    monkeypatch.setattr(conn, "getURI", lambda: "qemu+ssh://far.example/system")
    e = raised(compare, conn, model)
    assert e.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert "qemu+ssh://far.example/system" in str(e) and "host=" in str(e)
    e = raised(api.validate_domain, conn, "<domain/>")
    assert "far.example" in str(e)
    # with the profile: answered; the emulator is a path there, not checked here
    r, _ = compare(conn, model, host=str(lab.hosts["max"]),
                   emulator="/opt/far/bin/qemu-system-aarch64")
    assert r == libvirt.VIR_CPU_COMPARE_IDENTICAL


def test_a_local_connection_without_a_host_is_this_machine(conn, lab):
    """This x86 machine has no profile to give: the error says so, and how."""
    model = baseline(conn, [lab.hosts["max"].read_text()])
    e = raised(compare, conn, model)
    assert isinstance(e, api.ArmCpuHostError)
    assert e.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED
    assert "x86_64" in str(e) and "pass host=" in str(e)


def test_the_real_daemon(libvirt_conn, lab):
    """qemu:///system on this machine: an x86_64 host, local."""
    model = baseline(libvirt_conn, [lab.hosts["max"].read_text()])
    e = raised(compare, libvirt_conn, model, host=str(lab.hosts["max"]), arch=None)
    assert "x86_64" in str(e) and "qemu:///system" in str(e)
    r, _ = compare(libvirt_conn, model, host=str(lab.hosts["max"]),
                   emulator="/usr/bin/qemu-system-aarch64")
    assert r == libvirt.VIR_CPU_COMPARE_IDENTICAL


# -- flags and errors ------------------------------------------------------------------

def test_fail_incompatible_raises_with_every_field(conn, lab):
    model = baseline(conn, [lab.hosts["v1"].read_text()])
    n1 = str(lab.hosts["n1"])
    assert compare(conn, model, host=n1)[0] == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
    e = raised(compare, conn, model, FAIL | VALIDATE, host=n1)
    assert isinstance(e, api.CpuIncompatibleError)
    assert (e.get_error_code(), e.get_error_domain()) == (libvirt.VIR_ERR_CPU_INCOMPATIBLE,
                                                          libvirt.VIR_FROM_CPU)
    assert str(e).startswith("the CPU is incompatible with host CPU: ")
    assert len(e.reasons) > 4 and all(r.register for r in e.reasons)
    assert f"(and {len(e.reasons) - 4} more)" in str(e)
    e = raised(compare, conn, model, 1 << 7, host=n1)
    assert str(e) == "unsupported flags (0x80) in function compare_hypervisor_cpu"
    e = raised(compare, conn, model, FAIL | 4, host=n1)
    assert str(e) == "unsupported flags (0x4) in function compare_hypervisor_cpu"


def _libvirt_validates(tmp: Path, xml: str) -> bool:
    exe = shutil.which("virt-xml-validate")
    assert exe, "virt-xml-validate (libvirt-clients) is installed with libvirt"
    f = tmp / "cpu.xml"
    f.write_text(xml)
    return subprocess.run([exe, str(f), "cpu"], capture_output=True, timeout=60).returncode == 0


SCHEMA_CASES = [
    "<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>{m}</model>"
    "<feature policy='disable' name='sve2'/><topology sockets='1' dies='1' cores='2' "
    "threads='1'/></cpu>",
    "<cpu mode='host-passthrough' check='none' migratable='on'/>",
    "<cpu mode='host-model'/>",
    "<cpu mode='bogus'><model>{m}</model></cpu>",
    "<cpu mode='custom' match='loose'><model>{m}</model></cpu>",
    "<cpu mode='custom'><model fallback='maybe'>{m}</model></cpu>",
    "<cpu mode='custom'><model>{m}</model><feature name='aes'/></cpu>",
    "<cpu mode='custom'><model>{m}</model><feature policy='want' name='aes'/></cpu>",
    "<cpu mode='custom'><model>{m}</model><feature policy='require' name='a b'/></cpu>",
    "<cpu mode='custom'><model>{m}</model><topology sockets='0' cores='1' threads='1'/></cpu>",
    "<cpu mode='custom'><model>{m}</model><topology sockets='1' cores='1'/></cpu>",
    "<cpu mode='custom'><model>{m}</model><model>{m}</model></cpu>",
    "<cpu mode='custom'><model>{m}</model><flavour/></cpu>",
    "<cpu mode='custom' speed='fast'><model>{m}</model></cpu>",
    "<cpu mode='custom'><model>{m}</model><cache mode='emulate' level='2'/></cpu>",
    "<cpu mode='custom'><model>{m}</model><cache mode='fast'/></cpu>",
    "<cpu mode='custom'><model>{m}</model><maxphysaddr mode='passthrough' bits='48'/></cpu>",
    "<cpu><arch>aarch64</arch><model>Neoverse-N1</model><vendor>ARM</vendor>"
    "<topology sockets='1' dies='1' cores='4' threads='1'/><feature name='aes'/>"
    "<pages unit='KiB' size='4'/></cpu>",
    "<cpu><arch>aarch64</arch><feature name='aes' policy='require'/></cpu>",
]


@pytest.mark.parametrize("case", range(len(SCHEMA_CASES)))
def test_validate_xml_agrees_with_libvirts_own_schema(conn, lab, tmp_path, case):
    xml = SCHEMA_CASES[case].format(m=lab.model)
    valid = _libvirt_validates(tmp_path, xml)
    try:
        compare(conn, xml, VALIDATE, host=str(lab.hosts["max"]))
    except api.ArmCpuSchemaError as e:
        assert not valid, f"libvirt's schema takes {xml}, ours refused it: {e}"
        assert (e.get_error_code(), e.get_error_domain()) == (
            libvirt.VIR_ERR_XML_INVALID_SCHEMA, libvirt.VIR_FROM_XML)
        assert "XML document failed to validate against schema: " in str(e)
    except libvirt.libvirtError as e:       # valid, but no answer for other reasons
        assert valid, f"libvirt's schema refuses {xml}, ours took it ({e})"
    else:
        assert valid, f"libvirt's schema refuses {xml}, ours took it"


def test_validate_xml_takes_this_projects_own_elements(conn, lab, tmp_path):
    """A CPU model's <arm:registers> and SYSREG_* features with a value are
    this project's additions: libvirt's schema refuses them, ours takes them."""
    host = str(lab.hosts["max"])
    model = baseline(conn, [lab.hosts["max"].read_text()])
    assert not _libvirt_validates(tmp_path, model)
    assert compare(conn, model, VALIDATE, host=host)[0] == libvirt.VIR_CPU_COMPARE_IDENTICAL
    sysreg = custom_cpu(lab.model, ("require", "SYSREG_ID_AA64ISAR0_EL1_DP", "0x0"),
                        topology=False)
    assert compare(conn, sysreg, VALIDATE, host=host)[0] == libvirt.VIR_CPU_COMPARE_SUPERSET
    e = raised(compare, conn, sysreg.replace("SYSREG_ID_AA64ISAR0_EL1_DP", "asimddp"),
               VALIDATE, host=host)
    assert isinstance(e, api.ArmCpuSchemaError) and "'value'" in str(e)
    # without the flag nothing is checked against the schema
    no_policy = f"<cpu mode='custom'><model>{lab.model}</model><feature name='sve2'/></cpu>"
    assert compare(conn, no_policy, host=host)[0] == libvirt.VIR_CPU_COMPARE_IDENTICAL
    assert isinstance(raised(compare, conn, no_policy, VALIDATE, host=host),
                      api.ArmCpuSchemaError)


BAD_INPUTS = [
    ("<cpu", libvirt.VIR_ERR_XML_ERROR, "xmlCPU:1: not well-formed"),
    ("", libvirt.VIR_ERR_XML_ERROR, "xmlCPU"),
    ("<foo/>", libvirt.VIR_ERR_XML_ERROR, "root element is <foo>"),
    ("<?xml version='1.0'?><!DOCTYPE cpu [<!ENTITY a 'b'>]><cpu/>", libvirt.VIR_ERR_XML_ERROR,
     "refused: a DOCTYPE"),
    ("ID_AA64ISAR0_EL1=0x1\nMIDR_EL1=0x410fd0c0\n", libvirt.VIR_ERR_XML_ERROR,
     "is a register dump"),
    ("<cpu mode='bogus'><model>x</model></cpu>", libvirt.VIR_ERR_XML_ERROR,
     "<cpu mode='bogus'>: not a mode libvirt knows"),
    ("<domain><os><type arch='aarch64'>hvm</type></os></domain>", libvirt.VIR_ERR_XML_ERROR,
     "the domain has no <cpu>"),
    ("<cpu mode='custom'><model>arm64-000000000000</model></cpu>", libvirt.VIR_ERR_INVALID_ARG,
     "unknown CPU model 'arm64-000000000000'"),
    ("<cpu mode='custom' match='exact'><model>{m}</model><feature policy='require' "
     "name='nosuch'/></cpu>", libvirt.VIR_ERR_INVALID_ARG, "unknown feature 'nosuch'"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_is_a_libvirt_error(conn, lab, case):
    xml, code, needle = BAD_INPUTS[case]
    xml = xml.format(m=lab.model)
    e = raised(compare, conn, xml, host=str(lab.hosts["max"]))
    assert e.get_error_code() == code, str(e)
    assert needle in str(e), str(e)
    if code != libvirt.VIR_ERR_INVALID_ARG:
        e = raised(baseline, conn, [lab.hosts["max"].read_text(), xml])
        assert e.get_error_code() in (code, libvirt.VIR_ERR_CONFIG_UNSUPPORTED), str(e)
        assert "xmlCPUs[1]" in str(e)


def test_bad_arguments_are_libvirt_errors(conn, lab):
    host = str(lab.hosts["max"])
    for call in (lambda: baseline(conn, []), lambda: baseline(conn, "<cpu/>"),
                 lambda: baseline(conn, [b"<cpu/>"]), lambda: compare(conn, b"<cpu/>"),
                 lambda: compare(conn, "<cpu/>", -1, host=host)):
        assert raised(call).get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    # a host profile that is not one
    e = raised(compare, conn, "<cpu mode='host-model'/>", host=str(lab.hosts["max"]) + ".nope")
    assert e.get_error_code() == libvirt.VIR_ERR_XML_ERROR and "cannot read" in str(e)
    # translate and validate raise libvirt errors too
    e = raised(api.translate_domain_xml, "<domain", host)
    assert e.get_error_code() == libvirt.VIR_ERR_XML_ERROR
    e = raised(api.validate_domain, host, domain_xml("lac-test-parity"))
    assert e.get_error_code() == libvirt.VIR_ERR_INVALID_ARG and "metadata" in str(e)
