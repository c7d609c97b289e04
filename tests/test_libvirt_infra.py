"""The libvirt test infrastructure itself: the machine's real libvirtd
(tests/libvirtd.py, started by contrib/libvirt/start-libvirtd.sh) with
aarch64 TCG domains and QEMU hooks, and libvirt 11.3 on real arm64 KVM in the
test bed's libvirt image (run_in_guest(image="libvirt")).

Nothing here skips: without libvirtd or the test bed these fail, with the
command that sets them up.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET

import libvirt
import pytest

from .libvirtd import (GUEST_IDLE_KERNEL, LibvirtdError, domain, domain_name, install_hook,
                       kvm_domain_xml, remove_hook, tcg_domain_xml, virsh, wait_state)
from .libvirtd import libvirt_conn_fixture  # noqa: F401  (the libvirt_conn fixture)
from .testbed import ROOT, run_in_guest

EMULATOR = "/usr/bin/qemu-system-aarch64"

# --------------------------------------------------------------- this machine's libvirtd


def test_libvirtd_answers_with_an_aarch64_qemu(libvirt_conn):
    proc = virsh("list", "--all")
    assert proc.returncode == 0, proc.stderr
    assert libvirt_conn.getLibVersion() >= 9_000_000
    caps = ET.fromstring(libvirt_conn.getDomainCapabilities(EMULATOR, "aarch64", "virt", "qemu"))
    assert caps.findtext("path") == EMULATOR
    assert caps.findtext("domain") == "qemu"
    assert caps.findtext("arch") == "aarch64"
    assert caps.findtext("machine").startswith("virt")
    custom = caps.find("cpu/mode[@name='custom']")
    assert custom.get("supported") == "yes"
    assert {"cortex-a57", "neoverse-n1", "max"} <= {m.text for m in custom.findall("model")}


def test_tcg_domain_starts_and_is_destroyed(libvirt_conn):
    name = domain_name("tcg")
    with domain(libvirt_conn, tcg_domain_xml(name)) as dom:
        assert wait_state(dom, libvirt.VIR_DOMAIN_RUNNING, timeout=30) == libvirt.VIR_DOMAIN_RUNNING_BOOTED
        live = ET.fromstring(dom.XMLDesc())
        assert live.get("type") == "qemu"
        assert live.findtext("cpu/model") == "cortex-a57"
        assert live.find("os/type").get("arch") == "aarch64"
        assert name in virsh("list", "--name").stdout.split()
    with pytest.raises(libvirt.libvirtError) as gone:
        libvirt_conn.lookupByName(name)
    assert gone.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def test_domain_refuses_names_without_the_test_prefix(libvirt_conn):
    xml = tcg_domain_xml("x").replace("lac-test-x", "production-vm")
    with pytest.raises(ValueError, match="lac-test-"), domain(libvirt_conn, xml):
        pass


REFUSING_HOOK = """#!/bin/sh
# lac-test: refuse every domain at "prepare begin"
cat >/dev/null
if [ "$2" = prepare ] && [ "$3" = begin ]; then
    echo "lac-test hook: refusing $1: host lacks FEAT_TEST" >&2
    exit 3
fi
exit 0
"""
HOOK_NAME = "50-lac-test-refuse"


def test_failing_prepare_hook_stops_the_start(libvirt_conn, tmp_path):
    hook = tmp_path / "hook"
    hook.write_text(REFUSING_HOOK)
    name = domain_name("hook")
    xml = tcg_domain_xml(name)
    install_hook(hook, HOOK_NAME)
    try:
        # libvirt-python: VIR_ERR_HOOK_SCRIPT_FAILED, the hook's stderr in the message
        with domain(libvirt_conn, xml, start=False) as dom:
            with pytest.raises(libvirt.libvirtError) as err:
                dom.create()
            assert err.value.get_error_code() == libvirt.VIR_ERR_HOOK_SCRIPT_FAILED == 70
            assert err.value.get_error_domain() == libvirt.VIR_FROM_HOOK
            assert f"lac-test hook: refusing {name}: host lacks FEAT_TEST" in str(err.value)
            assert f"{HOOK_NAME} {name} prepare begin -" in str(err.value)
            assert not dom.isActive()
            # virsh: non-zero exit, the message on stderr
            proc = virsh("start", name)
            assert proc.returncode != 0
            assert f"Failed to start domain '{name}'" in proc.stderr
            assert "lac-test hook: refusing" in proc.stderr
            assert not dom.isActive()
    finally:
        remove_hook(HOOK_NAME)
    with domain(libvirt_conn, xml) as dom:
        assert wait_state(dom, libvirt.VIR_DOMAIN_RUNNING, timeout=30) == libvirt.VIR_DOMAIN_RUNNING_BOOTED


def test_remove_hook_of_a_missing_hook_is_fine(libvirt_conn):
    remove_hook("50-lac-test-never-installed")
    assert virsh("list").returncode == 0


def test_wait_state_times_out_with_the_state(libvirt_conn):
    with (domain(libvirt_conn, tcg_domain_xml(domain_name("wait"))) as dom,
          pytest.raises(LibvirtdError, match="is running, not paused")):
        wait_state(dom, libvirt.VIR_DOMAIN_PAUSED, timeout=0.3)


# --------------------------------------------------------------- libvirt in the arm64 KVM test bed

GUEST_DOMAIN = domain_name("kvm")

# Logs each call (argv, stdin) into /out/hook/NN.argv and NN.xml.
LOG_HOOK = """#!/bin/sh
d=/out/hook
mkdir -p "$d"
n=$(printf %02d "$(ls "$d" | grep -c 'argv$')")
cat >"$d/$n.xml"
printf '%s\\n' "$*" >"$d/$n.argv"
exit 0
"""

# A Python hook: libvirtd starts it without PYTHONPATH; the image's .pth finds the project.
PY_HOOK = """#!/usr/bin/python3
import sys
import libvirt_arm_cpu
if sys.argv[2:4] == ["prepare", "begin"]:
    with open("/out/pyhook", "w") as f:
        f.write(libvirt_arm_cpu.__file__ + "\\n")
"""

GUEST_JOB = f"""
set -u
virsh -c qemu:///system list >/dev/null && echo "virsh: answers"
cat >/tmp/10-lac-test-log <<'EOF'
{LOG_HOOK}EOF
cat >/tmp/20-lac-test-py <<'EOF'
{PY_HOOK}EOF
testbed-install-hook /tmp/10-lac-test-log
testbed-install-hook /tmp/20-lac-test-py
ls /etc/libvirt/hooks/qemu.d
python3 - <<'EOF'
import json, libvirt
conn = libvirt.open("qemu:///system")
res = {{"lib": conn.getLibVersion(), "hv": conn.getVersion()}}
dom = conn.defineXML({kvm_domain_xml(GUEST_DOMAIN)!r})
try:
    dom.create()
    res["state"] = dom.state()
    res["live"] = dom.XMLDesc()
    dom.destroy()
    res["after_destroy"] = dom.state()
finally:
    dom.undefine()
json.dump(res, open("/out/result.json", "w"))
EOF
grep -o -e '-accel [a-z]*' -e '-cpu [a-z]*' /var/log/libvirt/qemu/{GUEST_DOMAIN}.log >/out/qemu-args
"""


def libvirt_guest():
    return run_in_guest(kernel="7.3", qemu="10.0", cpu="neoverse-n1", image="libvirt",
                        script=GUEST_JOB, timeout=300)


@pytest.mark.kvm
def test_guest_libvirtd_answers():
    res = libvirt_guest()
    assert res.rc == 0, res.stderr
    assert "virsh: answers" in res.stdout
    assert res.info["image"] == "libvirt"
    up = res.info["guest_uptime"]
    assert up["start"] <= up["libvirtd_ready"] <= up["job_end"]
    result = json.loads(res.files["result.json"])
    assert result["lib"] // 1000 == 11003            # libvirt 11.3
    assert result["hv"] // 1000 == 10000             # QEMU 10.0


@pytest.mark.kvm
def test_guest_host_passthrough_kvm_domain_starts():
    res = libvirt_guest()
    result = json.loads(res.files["result.json"])
    assert result["state"] == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
    assert result["after_destroy"] == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    live = ET.fromstring(result["live"])
    assert live.get("type") == "kvm"
    assert live.find("cpu").get("mode") == "host-passthrough"
    assert live.findtext("os/kernel") == GUEST_IDLE_KERNEL
    assert res.files["qemu-args"].decode().split("\n")[:2] == ["-accel kvm", "-cpu host"]


@pytest.mark.kvm
def test_guest_hooks_see_prepare_begin_with_the_domain_xml():
    res = libvirt_guest()
    calls = [(res.files[f"hook/{n}"].decode().split(), res.files[f"hook/{n[:-5]}.xml"])
             for n in sorted(f[5:] for f in res.files if f.startswith("hook/") and f.endswith(".argv"))]
    assert [argv[1:3] for argv, _ in calls][:3] == [["prepare", "begin"], ["start", "begin"],
                                                     ["started", "begin"]]
    argv, stdin = calls[0]
    assert argv == [GUEST_DOMAIN, "prepare", "begin", "-"]
    xml = ET.fromstring(stdin)
    assert xml.findtext("name") == GUEST_DOMAIN
    assert xml.get("type") == "kvm"
    assert xml.find("cpu").get("mode") == "host-passthrough"
    assert ["release", "end"] in [argv[1:3] for argv, _ in calls]
    # the Python hook imported the project from /opt/project without PYTHONPATH
    assert res.files["pyhook"].decode().strip() == "/opt/project/libvirt_arm_cpu/__init__.py"
    assert re.search(r"^10-lac-test-log\n20-lac-test-py$", res.stdout, re.M), res.stdout


# --------------------------------------------------------------- the driver's libvirtd markers (no boot)

def _driver():
    name = "run_in_guest_for_libvirt_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "contrib" / "testbed" / "run_in_guest.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod            # dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


STARTING = (b"[    1.0] boot noise\r\nTESTBED tok start 4.0 6.12.0\r\n"
            b"TESTBED tok libvirtd-start 4.1\r\n")


def test_driver_reports_a_libvirtd_that_never_answered():
    console = STARTING + (b"TESTBED tok libvirtd-failed 124.2 no answer on qemu:///system within 120 s "
                          b"error: failed to connect to the hypervisor\r\n"
                          b"libvirtd.log: 2025-11-24 12:00:00.000+0000: 1: error : ...\r\n")
    drv = _driver()
    decoded = drv.decode_console(console, "tok")
    assert decoded.started and decoded.libvirtd_ready_uptime is None and decoded.rc is None
    assert drv.diagnose(console, b"", decoded, 0, False, 300) == (
        "libvirtd in the guest: no answer on qemu:///system within 120 s error: failed to connect "
        "to the hypervisor (its messages are at the end of console.log)")


def test_driver_tells_a_timeout_while_libvirtd_starts():
    drv = _driver()
    decoded = drv.decode_console(STARTING, "tok")
    assert drv.diagnose(STARTING, b"", decoded, 124, True, 30) == (
        "timed out after 30 s (libvirtd in the guest was still starting)")
    ready = STARTING + b"TESTBED tok libvirtd-ready 9.5\r\n"
    decoded = drv.decode_console(ready, "tok")
    assert decoded.libvirtd_ready_uptime == 9.5
    assert drv.diagnose(ready, b"", decoded, 124, True, 30) == (
        "timed out after 30 s (the job was still running)")
