"""The commands against virsh's (issue 13, Commands): cpu-baseline
--migratable, cpu-compare --validate, hypervisor-cpu-baseline and
hypervisor-cpu-compare with virsh's options, and the inputs virsh takes
(capabilities, domain XML, domcapabilities, libvirt 11.3's cpu-baseline
answer on aarch64).  Real virsh (test:///default, an i686 host) gives the
capabilities and the option names; hosts are the captured profiles.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from libvirt_arm_cpu import api
from libvirt_arm_cpu.cli import cpu_compare, hypervisor

from .conftest import assert_one_line_error, run_installed
from .domains import parity_lab, MAX73, custom_cpu, domain_xml
from .test_api_parity import capabilities, hwcaps

VIRSH = shutil.which("virsh")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return parity_lab(tmp_path_factory.mktemp("cli-parity"))


@pytest.fixture(autouse=True)
def _models(lab, monkeypatch):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(lab.models))
    # no settings file: "this machine" is this machine, whatever /etc holds
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(lab.tmp / "no-such.conf"))


def virsh(*args: str) -> subprocess.CompletedProcess:
    assert VIRSH, "virsh (libvirt-clients) is installed with libvirt"
    return subprocess.run([VIRSH, "-c", "test:///default", *args], capture_output=True,
                          text=True, timeout=60)


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def options(help_text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]+", help_text))


# -- the commands exist, with virsh's options -------------------------------------------

@pytest.mark.parametrize("command", ["hypervisor-cpu-compare", "hypervisor-cpu-baseline",
                                     "cpu-compare", "cpu-baseline"])
def test_every_option_of_virsh_is_taken(command):
    theirs = options(virsh("help", command).stdout)
    assert theirs >= {"--error"} or theirs >= {"--features"}
    r = run_installed("libvirt-arm-cpu", command, "--help")
    assert r.code == 0, r.err
    ours = options(r.out)
    # cpu-compare and cpu-baseline take the CPU as an argument (virsh: --file or not)
    missing = theirs - ours - ({"--file"} if command.startswith("cpu-") else set())
    assert not missing, f"{command} lacks virsh's {sorted(missing)}"


# -- cpu-baseline --migratable, cpu-compare --validate ------------------------------------

def test_cpu_baseline_migratable_is_accepted_and_changes_nothing(run, lab):
    hosts = [str(lab.hosts["max"]), str(MAX73)]
    plain = run("cpu-baseline", *hosts)
    assert plain.code == 0, plain.err
    r = run("cpu-baseline", *hosts, "--migratable")
    assert r.code == 0 and r.out == plain.out
    r = run("cpu-baseline", *hosts, "--migratable", "--features")
    assert r.code == 0 and "FEAT_" in r.out and "FEAT_" not in plain.out


def test_cpu_compare_validate(run, lab, tmp_path):
    host = str(lab.hosts["max"])
    good = write(tmp_path, "guest.xml", domain_xml("lac-test-cli", cpu=custom_cpu(
        lab.model, ("disable", "sve2"))))
    r = run("cpu-compare", good, host, "--validate")
    assert r.code == 0 and "superset" in r.out, r.err
    bad = write(tmp_path, "bad.xml", domain_xml("lac-test-cli", cpu=custom_cpu(
        lab.model, ("disable", "sve2")).replace("match='exact'", "match='loose'")))
    assert_one_line_error(run("cpu-compare", bad, host, "--validate"), 1, "bad.xml:",
                          "XML document failed to validate against schema: <cpu "
                          "match='loose'>: expected one of minimum, exact, strict")
    # without --validate the guest is compared as libvirt reads it
    r = run("cpu-compare", bad, host)
    assert r.code == 0 and "superset" in r.out
    # a model from cpu-baseline validates: <arm:registers> is this project's own
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", host, "-o", str(model)).code == 0
    r = run("cpu-compare", str(model), host, "--validate")
    assert r.code == 0 and "identical" in r.out
    no_policy = write(tmp_path, "nopolicy.xml",
                      f"<cpu mode='custom'><model>{lab.model}</model><feature name='sve2'/></cpu>")
    assert_one_line_error(run("cpu-compare", no_policy, host, "--validate"), 1,
                          "<feature name='sve2'>: policy '' is not one of")


# -- what virsh takes ----------------------------------------------------------------

def test_virsh_capabilities_of_an_x86_host_are_refused_naming_the_arch(run, lab, tmp_path):
    out = virsh("capabilities")
    assert out.returncode == 0, out.stderr
    arch = ET.fromstring(out.stdout).findtext("host/cpu/arch")
    assert arch and arch != "aarch64"
    caps = write(tmp_path, "caps.xml", out.stdout)
    host = str(lab.hosts["max"])
    needle = f"the host CPU's architecture is {arch}, not aarch64"
    assert_one_line_error(run("cpu-compare", caps, host), 1, "caps.xml", needle)
    assert_one_line_error(run("cpu-baseline", caps), 1, "caps.xml", needle)
    assert_one_line_error(run("hypervisor-cpu-compare", caps, "--host", host), 1, needle)
    assert_one_line_error(run("hypervisor-cpu-baseline", "--file", caps), 1, needle)
    # as the host, too (the reader of libvirt host CPUs)
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", host, "-o", str(model)).code == 0
    assert_one_line_error(run("cpu-compare", str(model), caps), 1, f"{arch} machine")


def test_aarch64_capabilities_domain_and_domcapabilities_as_the_cpu(run, lab, tmp_path):
    n1, v1 = str(lab.hosts["n1"]), str(lab.hosts["v1"])
    hw = hwcaps(lab.hosts["n1"])
    caps = write(tmp_path, "caps.xml", capabilities(hw))
    r = run("cpu-compare", caps, n1)
    assert r.code == 0 and "identical" in r.out
    assert "compared at feature level only: " + caps in r.out
    r = run("hypervisor-cpu-compare", caps, "--host", v1)
    assert r.code == 0 and r.out.startswith(
        f"The CPU provided by hypervisor on the host is a superset of CPU described in {caps}")
    assert "(the host: host-v1, KVM as its profile describes it)" in r.out
    assert "compared at feature level only" in r.out
    feats = "".join(f"<feature policy='require' name='{f}'/>" for f in hw + ["sve"])
    domcaps = write(tmp_path, "domcaps.xml", (
        f"<domainCapabilities><path>/usr/bin/qemu-system-aarch64</path><domain>kvm</domain>"
        f"<arch>aarch64</arch><cpu><mode name='host-model' supported='yes'><model "
        f"fallback='forbid'>Neoverse-N1</model>{feats}</mode></cpu></domainCapabilities>"))
    r = run("cpu-compare", domcaps, n1, "--json")
    data = json.loads(r.out)
    assert r.code == 1 and data["result"] == "incompatible" and data["precision"] == "features"
    assert [x["message"] for x in data["reasons"]] == [
        "feature sve (ID_AA64PFR0_EL1.SVE): the CPU requires it, host host-n1 does not have it"]
    # domcapabilities as the host (PROFILE): its host-model CPU's features
    model = tmp_path / "n1.xml"
    assert run("cpu-baseline", n1, "-o", str(model)).code == 0
    r = run("cpu-compare", str(model), domcaps)
    assert r.code == 0 and "hides sve" in r.out and "libvirt host CPU description" in r.out
    guest = write(tmp_path, "guest.xml", domain_xml("lac-test-cli", cpu=custom_cpu(
        lab.model, ("disable", "sve2"))))
    r = run("hypervisor-cpu-compare", guest, "--host", str(lab.hosts["max"]), "--validate")
    assert r.code == 0 and "is a superset of CPU described in" in r.out and "lowers" in r.out
    r = run("hypervisor-cpu-compare", guest, "--host", n1)
    assert r.code == 1 and r.out.startswith(f"CPU described in {guest} is incompatible with "
                                            f"the CPU provided by hypervisor on the host")


def test_libvirt_11_3_cpu_baseline_output_interoperates(run, lab, tmp_path):
    """libvirt 11.3's `virsh cpu-baseline` on aarch64 answers one of its own
    models: never a traceback; a clear refusal, or a feature-level answer."""
    n1 = str(lab.hosts["n1"])
    theirs = ("<cpu mode='custom' match='exact'>\n  <model fallback='forbid'>Neoverse-N1"
              "</model>\n  <vendor>ARM</vendor>\n</cpu>\n")
    bare = write(tmp_path, "libvirt-baseline.xml", theirs)
    for argv in (("cpu-compare", bare, n1), ("hypervisor-cpu-compare", bare, "--host", n1)):
        assert_one_line_error(run(*argv), 2, "libvirt-baseline.xml is libvirt's CPU model "
                                             "'Neoverse-N1' listing no features")
    for argv in (("cpu-baseline", bare, n1), ("hypervisor-cpu-baseline", n1, "--file", bare)):
        assert_one_line_error(run(*argv), 2, "libvirt-baseline.xml is libvirt's CPU model "
                                             "'Neoverse-N1' (hwcap names, no ID register values)")
    feats = "".join(f"\n  <feature policy='require' name='{f}'/>" for f in hwcaps(
        lab.hosts["n1"]))
    listed = write(tmp_path, "libvirt-features.xml", theirs.replace("\n</cpu>", feats + "\n</cpu>"))
    r = run("cpu-compare", listed, n1)
    assert r.code == 0 and "identical" in r.out
    assert "(note: CPU model 'Neoverse-N1' is libvirt's name" in r.out
    r = run("cpu-compare", listed, str(lab.hosts["max"]), "--error")
    assert r.code == 0 and "superset" in r.out
    # the installed command, as a user runs it
    r = run_installed("libvirt-arm-cpu", "cpu-compare", bare, n1)
    assert r.code == 2 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


# -- hypervisor-cpu-compare -----------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--virttype", "qemu"], "virttype 'qemu' (TCG) is not answered"),
    (["--virttype", "lxc"], "virttype 'lxc'"),
    (["--arch", "x86_64"], "--arch x86_64: libvirt-arm-cpu answers for aarch64 only"),
    (["--machine", "pc"], "machine 'pc' is not a machine type of aarch64 KVM guests"),
    (["--emulator", "/nonexistent/qemu-system-aarch64"], "no such executable on this machine"),
    (["--emulator", "/usr/bin/qemu-system-x86_64"], "not an aarch64 QEMU"),
])
def test_hypervisor_options_are_checked(run, lab, tmp_path, argv, needle):
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", str(lab.hosts["max"]), "-o", str(model)).code == 0
    assert_one_line_error(run("hypervisor-cpu-compare", str(model), *argv), 2, needle)
    assert_one_line_error(run("hypervisor-cpu-baseline", str(model), *argv), 2, needle)


def test_hypervisor_cpu_compare_answers_as_virsh(run, lab, tmp_path):
    host = str(lab.hosts["max"])
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", host, "-o", str(model)).code == 0
    emulator = shutil.which("qemu-system-aarch64")
    assert emulator
    r = run("hypervisor-cpu-compare", str(model), "--host", host, "--virttype", "kvm",
            "--arch", "aarch64", "--machine", "virt-7.2", "--emulator", emulator)
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == (f"CPU described in {model} is identical to the CPU "
                                     f"provided by hypervisor on the host")
    r = run("hypervisor-cpu-compare", "--file", str(model), "--host", str(lab.hosts["n1"]))
    assert r.code == 1 and "is incompatible with the CPU provided by hypervisor" in r.out
    r = run("hypervisor-cpu-compare", str(model), "--host", str(lab.hosts["n1"]), "--error")
    assert_one_line_error(r, 1, f"the CPU described in {model} is incompatible with the CPU "
                                f"provided by hypervisor on host host-n1: ")
    r = run("hypervisor-cpu-compare", str(model), "--host", str(lab.hosts["n1"]), "--json")
    data = json.loads(r.out)
    assert r.code == 1 and data["host"] == "host-n1" and data["result"] == "incompatible"
    assert all(x["register"] for x in data["reasons"])
    assert_one_line_error(run("hypervisor-cpu-compare", "--host", host), 2, "FILE is required")
    assert_one_line_error(run("hypervisor-cpu-compare", str(model), "--file", str(model)), 2,
                          "give FILE once")
    # no --host on this x86 machine: the error says how to give one
    assert_one_line_error(run("hypervisor-cpu-compare", str(model)), 3, "--host PROFILE")


def test_the_command_and_the_api_give_the_same_verdicts(run, lab, tmp_path):
    """hypervisor-cpu-compare and api.compare_hypervisor_cpu are the same calls."""
    conn = libvirt.open("test:///default")
    try:
        model = tmp_path / "m.xml"
        assert run("cpu-baseline", str(lab.hosts["max"]), "-o", str(model)).code == 0
        hw = hwcaps(lab.hosts["n1"])
        inputs = {
            "model": model.read_text(),
            "profile": lab.hosts["n1"].read_text(),
            "guest": domain_xml("lac-test-cli", cpu=custom_cpu(lab.model, ("disable", "sve2"))),
            "caps": capabilities(hw),
            "caps-sve": capabilities(hw + ["sve"]),
            "passthrough": "<cpu mode='host-passthrough'/>",
        }
        verdicts = {libvirt.VIR_CPU_COMPARE_IDENTICAL: "identical",
                    libvirt.VIR_CPU_COMPARE_SUPERSET: "superset",
                    libvirt.VIR_CPU_COMPARE_INCOMPATIBLE: "incompatible"}
        seen = set()
        for name, xml in inputs.items():
            path = write(tmp_path, f"{name}.xml", xml)
            for host in lab.hosts.values():
                r = run("hypervisor-cpu-compare", path, "--host", str(host), "--json")
                assert r.code in (0, 1), r.err
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", api.FeatureLevelWarning)
                    ours = api.compare_hypervisor_cpu(conn, None, "aarch64", "virt", "kvm", xml,
                                                      host=str(host))
                assert json.loads(r.out)["result"] == verdicts[ours], (name, host)
                seen.add(verdicts[ours])
        assert seen == {"identical", "superset", "incompatible"}
    finally:
        conn.close()


def test_the_api_and_the_commands_read_libvirt_inputs_with_the_same_code():
    """Sibling edges share the service module (cpuinputs), not copies."""
    from libvirt_arm_cpu import cpuinputs
    assert api.baseline_inputs is cpuinputs.baseline_inputs
    assert hypervisor.baseline_inputs is cpuinputs.baseline_inputs
    assert cpu_compare.read_cpu_arg is hypervisor.read_cpu_arg


# -- hypervisor-cpu-baseline ---------------------------------------------------------------

def test_hypervisor_cpu_baseline_is_cpu_baseline_with_virshs_options(run, lab, tmp_path):
    hosts = [str(lab.hosts["max"]), str(MAX73)]
    ours = run("cpu-baseline", *hosts)
    assert ours.code == 0
    r = run("hypervisor-cpu-baseline", hosts[0], "--file", hosts[1], "--virttype", "kvm",
            "--machine", "virt", "--arch", "aarch64", "--migratable")
    assert r.code == 0 and r.out == ours.out, r.err
    r = run("hypervisor-cpu-baseline", *hosts, "--features")
    assert r.code == 0 and r.out == run("cpu-baseline", *hosts, "--features").out
    # a file of several <cpu> elements (virsh's format for cpu-baseline)
    model = ET.fromstring(ours.out).findtext("model")
    several = write(tmp_path, "cpus.xml", ours.out + ours.out)
    for command in ("cpu-baseline", "hypervisor-cpu-baseline"):
        r = run(command, several)
        assert r.code == 0 and ET.fromstring(r.out).findtext("model") == model, r.err
    # --model NAME: the saved model alone
    r = run("hypervisor-cpu-baseline", "--model", lab.model)
    assert r.code == 0 and ET.fromstring(r.out).findtext("model") == lab.model
    assert_one_line_error(run("hypervisor-cpu-baseline", "--model", lab.model, hosts[0]), 2,
                          "--model and FILE exclude each other")
    assert_one_line_error(run("hypervisor-cpu-baseline"), 2, "give the CPUs")
    assert_one_line_error(run("hypervisor-cpu-baseline", "--model", "arm64-000000000000"), 2,
                          "unknown CPU model 'arm64-000000000000'")
    # no common model: every field, exit 1, as cpu-baseline
    r = run("hypervisor-cpu-baseline", str(lab.hosts["n1"]), str(lab.hosts["v1"]))
    assert r.code == 1 and "no CPU model runs on all 2 hosts" in r.err
    assert "host-n1=0x0" in r.err and "host-v1=0x" in r.err


def test_a_domain_naming_a_saved_model_is_that_model_to_baseline(run, lab, tmp_path):
    dom = write(tmp_path, "guest.xml", domain_xml("lac-test-cli", cpu=custom_cpu(lab.model)))
    r = run("cpu-baseline", dom)
    assert r.code == 0 and ET.fromstring(r.out).findtext("model") == lab.model, r.err
    policies = write(tmp_path, "policies.xml", domain_xml("lac-test-cli", cpu=custom_cpu(
        lab.model, ("disable", "sve2"))))
    assert_one_line_error(run("cpu-baseline", policies), 2, "policies.xml is a <cpu> naming "
                          f"CPU model '{lab.model}' with <feature> policies")
    caps = write(tmp_path, "caps.xml", capabilities(hwcaps(lab.hosts["n1"])))
    assert_one_line_error(run("cpu-baseline", str(lab.hosts["n1"]), caps), 2,
                          "caps.xml is a libvirt host CPU (hwcap names, no ID register "
                          "values), not a host profile or a CPU model")


def test_cpu_compare_reads_the_schema_of_a_profile_only_with_validate(run, tmp_path):
    """The host profile goes through the reader's own checks; its schema
    (30 ms, most of a cpu-compare) only with --validate, as cpu-baseline."""
    extra = tmp_path / "extra.xml"
    extra.write_bytes(MAX73.read_bytes().replace(b"</hostprofile>", b"<bogus/></hostprofile>"))
    assert run("cpu-compare", str(MAX73), str(extra)).code == 0
    r = run("cpu-compare", "--validate", str(MAX73), str(extra))
    assert r.code == 1 and "not a valid host profile" in r.err, r.err
