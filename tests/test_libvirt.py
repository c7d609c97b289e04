"""The hook, the commands and the Python API with this machine's real
libvirtd (Debian 12: libvirt 9.0, QEMU 7.2), aarch64 domains under TCG.

The hook is installed the way users install it (`libvirt-arm-cpu hook
install`, into /etc/libvirt/hooks/qemu.d, SIGHUP to libvirtd), with a
settings file naming a captured test-bed host profile (this x86 machine has
no arm64 KVM to probe).  What the hook checks is the guest CPU in the
domain's metadata against that profile.  TCG cannot run `host-passthrough`
or `-cpu host`, so the translated domains started here get a cortex-a57
<cpu> back after translation, or QEMU's max with the same SVE lengths
(``for_tcg``); their metadata is untouched.
Real KVM domains run in the arm64 test bed (test_libvirt_kvm.py).
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from libvirt_arm_cpu import api, settings
from libvirt_arm_cpu.host import verdicts
from libvirt_arm_cpu.formats.domain import Domain
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.model import sve_length_feature
from libvirt_arm_cpu.xmlsafe import parse_light

from .domains import FIXTURES, MAX73, N1_73, V1_73, custom_cpu, save_model, with_sysreg
from .libvirtd import domain, domain_name, tcg_domain_xml, virsh, wait_state
from .libvirtd import libvirt_conn_fixture  # noqa: F401  (the libvirt_conn fixture)
from .test_hook import _host_with_one_more_feature

PAUTH = FIXTURES / "max-pauth-impdef-qemu7.2-linux6.12.xml"
NO_PAUTH = FIXTURES / "max-pauth-off-qemu7.2-linux6.12.xml"

HOOK = "50-lac-test-libvirt-arm-cpu"
TCG_CPU = "<cpu mode='custom' match='exact'><model fallback='forbid'>cortex-a57</model></cpu>"


def for_tcg(xml: str) -> str:
    """The translated domain with a CPU TCG can run (see the module doc).
    Its SVE lengths stay (the hook checks them against the model's): on
    QEMU's max, which has them all."""
    root = Domain.parse(xml.encode(), "translated").root
    assert root.find("cpu").get("mode") == "host-passthrough"
    lengths = "".join(f"<feature policy='require' name='{f.get('name')}'/>"
                      for f in root.findall("cpu/feature")
                      if sve_length_feature(f.get("name", "")))
    cpu = f"<cpu mode='maximum' check='none'>{lengths}</cpu>" if lengths else TCG_CPU
    text = Domain(root, "").tostring().decode()
    return re.sub(r"<cpu mode=\"host-passthrough\"[^>]*?(/>|>.*?</cpu>)", cpu, text,
                  count=1, flags=re.S)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, libvirt_conn):
    tmp = tmp_path_factory.mktemp("libvirt")
    models = tmp / "models"
    model = save_model(models, MAX73)
    hosts = {"a": with_sysreg(MAX73, tmp / "host-a.xml", "host-a"),
             "n1": with_sysreg(N1_73, tmp / "host-n1.xml", "host-n1"),
             # a copy: the hook leaves its compact copy beside the profile
             "v1": Path(shutil.copy(V1_73, tmp / "host-v1.xml"))}
    conf = tmp / "lac.conf"

    def use(host: str) -> None:
        conf.write_text(f"[hook]\nmode = enforce\nprofile = {hosts[host]}\nrefresh = never\n"
                        f"try_apply = no\nlog = stderr\n[models]\ndir = {models}\n")

    use("a")
    from libvirt_arm_cpu.cli import main as cli
    assert cli.main(["hook", "install", "--name", HOOK, "--config", str(conf)]) == 0
    yield type("Lab", (), {"tmp": tmp, "model": model, "hosts": hosts, "use": staticmethod(use),
                           "models": models})
    assert cli.main(["hook", "uninstall", "--name", HOOK]) == 0


def translated(lab, name: str, cpu: str, host: str = "a") -> str:
    src = tcg_domain_xml(name, cpu=cpu)
    return api.translate_domain_xml(src, read_profile(str(lab.hosts[host])))


def _models_env(lab, monkeypatch):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(lab.models))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(lab.tmp / "lac.conf"))


def test_compatible_domain_starts_and_keeps_its_metadata(lab, libvirt_conn, monkeypatch):
    _models_env(lab, monkeypatch)
    lab.use("a")
    name = domain_name("ok")
    xml = for_tcg(translated(lab, name, custom_cpu(lab.model)))
    with domain(libvirt_conn, xml) as dom:
        assert wait_state(dom, libvirt.VIR_DOMAIN_RUNNING, 30) == libvirt.VIR_DOMAIN_RUNNING_BOOTED
        live = Domain.parse(dom.XMLDesc().encode(), name)
        assert live.translation is not None and live.translation.model == lab.model
        # libvirt keeps our metadata as we wrote it: dumpxml gives the original
        r = virsh("dumpxml", name)
        original = Domain.parse(r.stdout.encode(), name).original()
        assert original.root.find("cpu/model").text == lab.model


def test_incompatible_domain_is_refused_through_virsh_and_libvirt_python(lab, libvirt_conn,
                                                                          monkeypatch):
    _models_env(lab, monkeypatch)
    name = domain_name("refused")
    xml = for_tcg(translated(lab, name, custom_cpu(lab.model)))
    lab.use("n1")       # a Neoverse-N1 host: no SVE, older ISA
    try:
        with domain(libvirt_conn, xml, start=False) as dom:
            r = virsh("start", name)
            assert r.returncode == 1
            assert "Hook script execution failed" in r.stderr
            assert f"domain '{name}' cannot start on host host-n1" in r.stderr
            assert re.search(r"\(CPU model 'arm64-\w+'\): [A-Z0-9_]+(\.\w+)?: needs \w+, "
                             r"host has \w+", r.stderr)
            with pytest.raises(libvirt.libvirtError) as err:
                dom.create()
            assert err.value.get_error_code() == libvirt.VIR_ERR_HOOK_SCRIPT_FAILED
            assert err.value.get_error_domain() == libvirt.VIR_FROM_HOOK
            assert "cannot start on host host-n1" in err.value.get_error_message()
            assert not dom.isActive()
            # the definition is untouched
            assert Domain.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode(),
                                name).translation.model == lab.model
    finally:
        lab.use("a")


def test_a_domain_without_metadata_is_untouched(lab, libvirt_conn):
    lab.use("n1")       # would refuse any translated domain
    try:
        name = domain_name("plain")
        xml = tcg_domain_xml(name)
        with domain(libvirt_conn, xml) as dom:
            assert dom.isActive()
            assert "urn:x-libvirt-arm-cpu" not in dom.XMLDesc()
    finally:
        lab.use("a")


def test_save_and_restore_go_through_the_restore_filter(lab, libvirt_conn, monkeypatch):
    _models_env(lab, monkeypatch)
    lab.use("a")
    name = domain_name("save")
    xml = for_tcg(translated(lab, name, custom_cpu(lab.model)))
    image = str(lab.tmp / f"{name}.save")
    with domain(libvirt_conn, xml) as dom:
        dom.save(image)
        assert not dom.isActive()
        # same host: checked, nothing to rewrite, restored
        libvirt_conn.restore(image)
        dom = libvirt_conn.lookupByName(name)
        assert dom.isActive()
        dom.save(image)
        # a host that cannot present the CPU: the restore is refused
        lab.use("n1")
        with pytest.raises(libvirt.libvirtError) as err:
            libvirt_conn.restore(image)
        assert err.value.get_error_code() == libvirt.VIR_ERR_HOOK_SCRIPT_FAILED
        assert f"domain '{name}' cannot restore on host host-n1" in str(err.value)
        assert not libvirt_conn.lookupByName(name).isActive()
        # a host that needs other arguments: libvirt restores with the XML the
        # hook printed, so QEMU gets our -cpu host,SYSREG_... (which TCG cannot
        # run: the error proves the filtered XML was used)
        from .test_hook import _host_with_one_more_feature
        prop = _host_with_one_more_feature(lab.hosts["a"], lab.tmp / "host-c.xml", "host-c")
        lab.hosts["c"] = lab.tmp / "host-c.xml"
        lab.use("c")
        with pytest.raises(libvirt.libvirtError) as err:
            libvirt_conn.restore(image)
        assert "unable to find CPU model 'host'" in str(err.value)
        # the persistent definition is not touched by any of this
        kept = Domain.parse(libvirt_conn.lookupByName(name).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE).encode(), name)
        assert kept.translation.host == "host-a" and kept.cpu_arguments() == []
        assert prop
        lab.use("a")


def test_define_command_and_dumpxml_by_name(lab, libvirt_conn, run, monkeypatch):
    _models_env(lab, monkeypatch)
    lab.use("a")
    name = domain_name("define")
    src = lab.tmp / f"{name}.xml"
    src.write_text(tcg_domain_xml(name, cpu=custom_cpu(lab.model, ("disable", "sve2"))))
    r = run("define", str(src), "--host", str(lab.hosts["a"]))
    try:
        assert r.code == 0, r.err
        assert f"Domain '{name}' defined from {src}" in r.out
        dom = libvirt_conn.lookupByName(name)
        live = Domain.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode(), name)
        assert live.root.find("cpu").get("mode") == "host-passthrough"
        (arg,) = live.cpu_arguments()
        # the vCPU options (here the model's SVE lengths) libvirt's -cpu had, then SYSREG_*
        assert arg.startswith("host,sve128=on,") and ",SYSREG_" in arg and \
            "SYSREG_ID_AA64ZFR0_EL1_SVEver=0x0" in arg
        r = run("dumpxml", name)
        assert r.code == 0
        back = ET.fromstring(r.out).find("cpu")
        want = ET.fromstring(src.read_text()).find("cpu")
        assert ET.canonicalize(ET.tostring(back), strip_text=True) == \
            ET.canonicalize(ET.tostring(want), strip_text=True)
        r = run("validate", name, "--host", str(lab.hosts["n1"]))
        assert r.code == 1 and "cannot run on host host-n1" in r.out
        # define made the hook's check of its start on this host, and the hook
        # remembered the allowance under the key of the XML libvirt keeps
        # (the test bed holds that the start's XML has the same key)
        conf = settings.load()
        key = verdicts.key("prepare", parse_light(dom.XMLDesc(0).encode(), name), conf)
        assert verdicts.recall(conf, key) == ("CPU checked on host host-a: superset", "")
        # translated for another host than the hook's (one feature more, so
        # other arguments): defined, with the hook's refusal
        other = lab.tmp / "host-c.xml"
        _host_with_one_more_feature(lab.hosts["a"], other, "host-c")
        dom.undefine()
        r = run("define", str(src), "--host", str(other))
        assert r.code == 0, r.err
        warning = r.err.splitlines()[-1]
        assert warning.startswith(f"define: warning: domain '{name}': its QEMU input (sysreg) was "
                                  f"made for host 'host-c', not host host-a") and \
            warning.endswith("(the libvirt hook will refuse its start on this host)"), r.err
    finally:
        try:
            libvirt_conn.lookupByName(name).undefine()
        except libvirt.libvirtError:
            pass


def test_python_api_with_a_real_connection(lab, libvirt_conn, monkeypatch):
    _models_env(lab, monkeypatch)
    host_a = read_profile(str(lab.hosts["a"]))
    profiles = [Path(MAX73).read_text(), Path(lab.hosts["a"]).read_text()]
    cpu = api.baseline_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm", profiles,
                                      libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
    root = ET.fromstring(cpu)
    assert root.get("mode") == "custom" and any(
        f.get("name", "").startswith("FEAT_") for f in root.findall("feature"))
    assert api.compare_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm", cpu,
                                      host=host_a) == libvirt.VIR_CPU_COMPARE_IDENTICAL
    guest_cpu = custom_cpu(lab.model, ("disable", "sve2"), topology=False)
    assert api.compare_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm", guest_cpu,
                                      host=host_a) == libvirt.VIR_CPU_COMPARE_SUPERSET
    n1 = read_profile(str(lab.hosts["n1"]))
    assert api.compare_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm", cpu,
                                      host=n1) == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
    with pytest.raises(libvirt.libvirtError) as err:
        api.compare_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm", cpu,
                                   libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE, host=n1)
    assert isinstance(err.value, api.CpuIncompatibleError)
    assert err.value.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE
    assert any(r.field for r in err.value.reasons)
    # QEMU 7.2's max with and without pointer authentication differ in fields
    # KVM does not let change (ID_AA64ISAR1_EL1.API...): the common CPU
    # switches the vCPU feature off instead
    pool = api.baseline_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm",
                                       [Path(PAUTH).read_text(), Path(NO_PAUTH).read_text()])
    regs = ET.fromstring(pool).find("{urn:x-libvirt-arm-cpu:cpu:1}registers")
    assert regs.get("vcpu-off") == "ptrauth"
    # max (QEMU 10.0) and Neoverse-V1 run their timers at 1 GHz and 62.5 MHz:
    # no model for both, named by the register
    with pytest.raises(api.CpuIncompatibleError, match="CNTFRQ_EL0"):
        api.baseline_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm",
                                    [Path(MAX73).read_text(), Path(V1_73).read_text()])
    # a pool no vCPU feature reconciles still fails with the fields: on 7.3
    # Neoverse-N1 and -V1 differ in fields KVM does not let change
    with pytest.raises(api.CpuIncompatibleError) as err:
        api.baseline_hypervisor_cpu(libvirt_conn, None, "aarch64", "virt", "kvm",
                                    [Path(N1_73).read_text(), Path(V1_73).read_text()])
    assert "ID_AA64MMFR2_EL1." in str(err.value)
    # another architecture: exactly what the connection itself answers
    x86 = ("<cpu><arch>x86_64</arch><model>qemu64</model></cpu>")
    try:
        expected = libvirt_conn.compareHypervisorCPU(None, "x86_64", None, "qemu", x86, 0)
    except libvirt.libvirtError as e:
        with pytest.raises(libvirt.libvirtError) as err:
            api.compare_hypervisor_cpu(libvirt_conn, None, "x86_64", None, "qemu", x86)
        assert err.value.get_error_code() == e.get_error_code()
    else:
        assert api.compare_hypervisor_cpu(libvirt_conn, None, "x86_64", None, "qemu",
                                          x86) == expected
    # define_domain + validate_domain through the connection
    name = domain_name("api")
    dom = api.define_domain(libvirt_conn, tcg_domain_xml(name, cpu=custom_cpu(lab.model)),
                            host=host_a)
    try:
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert api.validate_domain(host_a, xml).ok
        # the hook's check of its start was made, and remembered (a local connection)
        conf = settings.load()
        key = verdicts.key("prepare", parse_light(xml.encode(), name), conf)
        assert verdicts.recall(conf, key) == ("CPU checked on host host-a: identical", "")
        bad = api.validate_domain(n1, xml)
        assert not bad.ok and bad.reasons
        with pytest.raises(api.CpuIncompatibleError) as err:
            api.define_domain(libvirt_conn, tcg_domain_xml(domain_name("no"), cpu=custom_cpu(
                lab.model, ("require", "mte"))), host=host_a)
        assert "mte" in str(err.value)
    finally:
        dom.undefine()
