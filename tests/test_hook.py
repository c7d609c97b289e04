"""The hook script, run the way libvirtd runs it (argv, XML on stdin, a
clean environment), installed with `libvirt-arm-cpu hook install`.  The real
libvirtd runs it in tests/test_libvirt.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.formats.domain import Domain

from .domains import (FIXTURES, MAX73, N1_73, V1_73, custom_cpu, domain_xml, save_model,
                      with_loader, with_sysreg, without_loader)

LIBVIRT_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


@pytest.fixture
def bed(tmp_path, run, monkeypatch):
    """An installed hook (in a private hooks dir, settings baked in), a
    saved model, and translated domains."""
    models = tmp_path / "models"
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(models))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    name = save_model(models, MAX73)
    host_a = with_sysreg(MAX73, tmp_path / "host-a.xml", "host-a")
    conf = tmp_path / "lac.conf"

    def settings(profile: Path, mode: str = "enforce", checker: str = "none") -> None:
        # no resident checker unless a test starts one (tests/test_resident.py)
        conf.write_text(f"[hook]\nmode = {mode}\nprofile = {profile}\nrefresh = never\n"
                        f"try_apply = no\nlog = stderr\nchecker = {checker}\n"
                        f"[models]\ndir = {models}\n")

    settings(host_a)
    r = run("hook", "install", "--hooks-dir", str(tmp_path / "hooks"), "--config", str(conf),
            "--no-reload")
    assert r.code == 0, r.err
    hook = tmp_path / "hooks" / "qemu.d" / "50-libvirt-arm-cpu"
    assert os.access(hook, os.X_OK)
    # no site module: the package's path is baked in (start-up is the hook's cost)
    assert hook.read_text().startswith(f"#!{sys.executable} -S\n")

    def translate(cpu: str, host: Path = host_a, name_: str = "g.xml") -> bytes:
        src = tmp_path / name_
        src.write_text(domain_xml(cpu=cpu))
        out = tmp_path / ("arm-" + name_)
        res = run("translate", str(src), "--host", str(host), "-o", str(out))
        assert res.code == 0, res.err
        return out.read_bytes()

    def call(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run([str(hook), *argv], input=stdin, capture_output=True,
                              env=LIBVIRT_ENV, cwd="/", timeout=120)

    return type("Bed", (), {"tmp": tmp_path, "model": name, "host_a": host_a, "hook": hook,
                            "conf": conf,
                            "settings": staticmethod(settings), "call": staticmethod(call),
                            "translate": staticmethod(translate)})


def test_a_domain_without_metadata_passes_at_once(bed):
    xml = domain_xml(cpu="<cpu mode='host-passthrough'/>").encode()
    for op in ("prepare", "start", "started", "migrate", "restore", "reconnect", "release"):
        p = bed.call("g", op, "begin", "-", stdin=xml)
        assert (p.returncode, p.stdout, p.stderr) == (0, b"", b""), op


def test_prepare_allows_what_the_host_presents(bed):
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 0, p.stderr
    assert b"CPU checked on host host-a: superset" in p.stderr      # log = stderr


def test_prepare_refuses_with_the_fields(bed):
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    bed.settings(with_sysreg(N1_73, bed.tmp / "n1.xml", "host-n1"))
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 1
    line = [x for x in p.stderr.decode().splitlines() if x.startswith("libvirt-arm-cpu: domain")]
    assert line and "domain 'lac-test-g1' cannot start on host host-n1" in line[0]
    import re
    assert re.search(r"\(CPU model 'arm64-\w+'\): [A-Z0-9_]+(\.\w+)?: needs \w+, host has \w+",
                     line[0]), line[0]
    assert re.search(r"\(and \d+ more\)$", line[0])
    # warn mode: logged, allowed
    bed.settings(bed.tmp / "n1.xml", mode="warn")
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 0 and b"(mode warn: allowed)" in p.stderr
    bed.settings(bed.tmp / "n1.xml", mode="off")
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert (p.returncode, p.stderr) == (0, b"")


def test_a_host_with_fewer_sve_lengths_or_another_gic_is_refused(bed):
    """Beyond the ID registers (tests/test_platform.py): the same CPU with
    SVE only up to 256 bits cannot take a guest of 2048, at a start or a
    migration; a domain asking for GICv2 cannot start where KVM offers v3."""
    xml = bed.translate(custom_cpu(bed.model))
    bed.settings(with_sysreg(FIXTURES / "max-sve256-qemu10.0-linux7.3.xml",
                             bed.tmp / "sve256.xml", "host-sve256"))
    for op, verb in (("prepare", "start"), ("migrate", "migrate in")):
        p = bed.call("lac-test-g1", op, "begin", "-", stdin=xml)
        assert p.returncode == 1, p.stderr
        assert f"domain 'lac-test-g1' cannot {verb} on host host-sve256".encode() in p.stderr
        assert b"SVE vector lengths: the guest has 128 to 2048 bits (every multiple of 128)" \
            in p.stderr
        assert b"this host offers 128, 256 bits up to 2048 bits" in p.stderr
    bed.settings(bed.host_a)
    # the <cpu> is what QEMU gets: one edited since translate is refused
    edited = xml.replace(b'<feature policy="require" name="sve2048" />', b"", 1)
    assert edited != xml
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=edited)
    assert p.returncode == 1 and b"the domain's <cpu> gives the guest SVE lengths 128, " \
        b"256" in p.stderr and b"translate it again" in p.stderr, p.stderr
    gic2 = xml.replace(b"</os>", b"</os>\n  <features><gic version='2'/></features>", 1)
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=gic2)
    assert p.returncode == 1 and b"GIC version v2: this host offers v3" in p.stderr, p.stderr
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 0, p.stderr


def test_a_host_without_sysreg_or_loader_is_named(bed):
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    # the same CPU, but its QEMU lacks SYSREG_* properties and the loader is missing
    bed.settings(without_loader(MAX73, bed.tmp / "bare.xml", "host-bare"))
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 1
    assert b"neither SYSREG_* in QEMU nor the loader installed" in p.stderr, p.stderr


def test_the_loader_must_be_on_disk_not_only_in_the_profile(bed):
    # translated for a loader host; this host's profile says the loader is
    # there, but the file is gone (uninstalled after the probe)
    lib = bed.tmp / "lib" / "libvirt-arm-cpu-loader.so"
    host = with_loader(MAX73, bed.tmp / "l.xml", "host-l", lib)
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")), host=host)
    assert b"<qemu:env name=\"LD_PRELOAD\" value=\"" + str(lib).encode() in xml
    bed.settings(host)
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 1
    assert f"it needs the ID register loader, and {lib} is not installed".encode() in p.stderr
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert p.returncode == 0, p.stderr
    assert b"CPU checked on host host-l: superset" in p.stderr


def test_migrate_switches_the_method_for_the_destination(bed):
    # sysreg on the source (host-a), loader on the destination: the hook
    # swaps the second -cpu for the loader's environment, values unchanged
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    src = Domain.parse(xml, "in")
    assert src.translation.method == "sysreg" and src.cpu_arguments()
    lib = bed.tmp / "loader.so"
    lib.write_bytes(b"\x7fELF")
    bed.settings(with_loader(MAX73, bed.tmp / "l.xml", "host-l", lib))
    p = bed.call("lac-test-g1", "migrate", "begin", "-", stdin=xml)
    assert p.returncode == 0, p.stderr
    new = Domain.parse(p.stdout, "stdout")
    assert new.translation.method == "loader" and new.cpu_arguments() == []
    env = new.loader_env()
    assert env["LD_PRELOAD"] == str(lib)
    from libvirt_arm_cpu.engine.loader import parse_values
    from libvirt_arm_cpu.formats.profile import read_profile
    known = read_profile(str(bed.tmp / "l.xml")).values()
    # every register this host's kernel has, with the model's value
    assert parse_values(env["LIBVIRT_ARM_CPU_ID_REGS"], kb_load.registers()) == {
        n: v for n, v in src.translation.values.items() if n in known}
    assert new.translation.values == src.translation.values
    # a host with both keeps the method the domain has (auto prefers it)
    both = with_loader(bed.host_a, bed.tmp / "both.xml", "host-both", lib)
    bed.settings(both)
    p2 = bed.call("lac-test-g1", "migrate", "begin", "-", stdin=p.stdout)
    assert p2.returncode == 0 and Domain.parse(p2.stdout or p.stdout, "o").translation.method == \
        "loader", p2.stderr
    # and back to a SYSREG host without the loader: the environment goes, the -cpu returns
    bed.settings(without_loader(bed.host_a, bed.tmp / "a-bare.xml", "host-a"))
    p = bed.call("lac-test-g1", "migrate", "begin", "-", stdin=p.stdout)
    assert p.returncode == 0, p.stderr
    back = Domain.parse(p.stdout, "stdout")
    assert back.translation.method == "sysreg" and back.loader_env() == {}
    assert back.cpu_arguments() == src.cpu_arguments()


def test_migrate_rewrites_only_when_this_host_needs_other_arguments(bed):
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    # same values on the destination: nothing to print
    bed.settings(with_sysreg(MAX73, bed.tmp / "b.xml", "host-b"))
    p = bed.call("lac-test-g1", "migrate", "begin", "-", stdin=xml)
    assert (p.returncode, p.stdout) == (0, b""), p.stderr
    # a destination with one more feature (a writable lower-safe field one
    # step higher): the guest must not see it, so the arguments change
    prop = _host_with_one_more_feature(bed.tmp / "b.xml", bed.tmp / "c.xml", "host-c")
    bed.settings(bed.tmp / "c.xml")
    p = bed.call("lac-test-g1", "migrate", "begin", "-", stdin=xml)
    assert p.returncode == 0, p.stderr
    new = Domain.parse(p.stdout, "stdout")
    assert new.translation.host == "host-c"
    (arg,) = new.cpu_arguments()
    assert f"{prop}=" in arg and prop not in Domain.parse(xml, "in").cpu_arguments()[0]
    assert new.translation.values == Domain.parse(xml, "in").translation.values
    # restore filters the same way; an incompatible destination cancels
    p = bed.call("lac-test-g1", "restore", "begin", "-", stdin=xml)
    assert p.returncode == 0 and p.stdout.startswith(b"<domain")
    bed.settings(Path(shutil.copy(V1_73, bed.tmp / "v1.xml")))   # a copy: the hook writes beside it
    p = bed.call("lac-test-g1", "migrate", "begin", "-", stdin=xml)
    assert p.returncode == 1 and p.stdout == b"" and b"cannot migrate in" in p.stderr


def _host_with_one_more_feature(src: Path, dest: Path, hostname: str) -> str:
    from libvirt_arm_cpu.formats import profile as profile_mod
    from libvirt_arm_cpu.kb.registers import LOWER_SAFE
    from libvirt_arm_cpu.engine.rules import covers
    kb = kb_load.registers()
    prof = profile_mod.read_profile(str(src))
    regs, prop = [], None
    for reg in prof.registers:
        if prop is None and reg.name == "ID_AA64ISAR0_EL1":
            for f in kb.register(reg.name).fields:
                cur = f.get(reg.value)
                if covers(reg.writable, f) and f.effective_policy == LOWER_SAFE and \
                        any(v == cur + 1 for v, _ in f.values) and not f.signed:
                    reg = type(reg)(**{**reg.__dict__, "value": f.put(reg.value, cur + 1)})
                    prop = f.qemu_property
                    break
        regs.append(reg)
    assert prop, "max on 7.3 has a writable lower-safe ISAR0 field below its top value"
    prof2 = type(prof)(**{**prof.__dict__, "registers": regs, "hostname": hostname})
    profile_mod.write_profile(prof2, str(dest))
    return prop


def test_reconnect_never_fails(bed):
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    bed.settings(Path(shutil.copy(N1_73, bed.tmp / "n1-plain.xml")))
    p = bed.call("lac-test-g1", "reconnect", "begin", "-", stdin=xml)
    assert p.returncode == 0 and p.stdout == b""
    # the guest's CPU does not fit this host: logged, never refused
    assert b"warning: domain 'lac-test-g1' cannot run on host" in p.stderr
    assert b"(the running guest is left alone)" in p.stderr
    broken = xml.replace(b"<arm:register", b"<arm:register broken", 1)
    p = bed.call("lac-test-g1", "reconnect", "begin", "-", stdin=broken)
    assert p.returncode == 0 and b"reconnect check failed" in p.stderr


@pytest.mark.parametrize("argv", [(), ("only-a-name",), ("g", "prepare")])
def test_unexpected_arguments_are_logged_not_refused(bed, argv):
    xml = bed.translate(custom_cpu(bed.model))
    p = bed.call(*argv, stdin=xml)
    assert p.returncode == 0 and b"unexpected arguments" in p.stderr


def test_bad_input_refuses_starts_in_one_line(bed):
    xml = bed.translate(custom_cpu(bed.model))
    cases = {
        b"newer": re.sub(rb'<arm:cpu version="\d+"', b'<arm:cpu version="9"', xml, count=1),
        b"not well-formed": xml[: len(xml) // 2],
        b"refused: a DOCTYPE": b"<!DOCTYPE d [<!ENTITY a 'urn:x-libvirt-arm-cpu:domain:1'>]>"
                               + xml[xml.index(b"<domain"):],
    }
    for needle, data in cases.items():
        p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=data)
        assert p.returncode == 1, needle
        lines = [x for x in p.stderr.splitlines() if x.startswith(b"libvirt-arm-cpu: domain")]
        assert len(lines) == 1 and needle in lines[0], p.stderr
        assert b"Traceback" not in p.stderr


def test_the_hook_runs_with_the_shipped_script_and_this_python(bed, run):
    text = bed.hook.read_text()
    assert text.startswith("#!" + os.path.realpath(os.sys.executable)) or \
        text.startswith("#!" + os.sys.executable)
    assert "PACKAGE_DIR = '" in text and "CONFIG = '" in text
    r = run("hook", "uninstall", "--hooks-dir", str(bed.tmp / "hooks"), "--no-reload")
    assert r.code == 0 and not bed.hook.exists()
    r = run("hook", "uninstall", "--hooks-dir", str(bed.tmp / "hooks"), "--no-reload")
    assert r.code == 0 and "not installed" in r.out


def test_a_broken_settings_file_is_named_and_the_defaults_apply(bed):
    xml = bed.translate(custom_cpu(bed.model))
    conf = bed.tmp / "lac.conf"
    conf.write_text("[hook\nmode = enforce\n")
    p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    err = p.stderr.decode()
    assert "lac.conf" in err and "not a valid settings file" in err and "using the defaults" in err
    # the defaults: this host's own profile, which an x86 machine cannot have
    assert p.returncode == 1 and "aarch64" in err
    p = bed.call("lac-test-g1", "reconnect", "begin", "-", stdin=xml)
    assert p.returncode == 0


def test_the_hook_scripts_constants_are_the_packages():
    """hooks/libvirt-arm-cpu answers most calls before importing the package
    (that is what keeps it at one interpreter start), so it carries its own
    copy of the operations it acts on and of the metadata namespace: they
    must be the package's."""
    import ast

    from libvirt_arm_cpu import hook
    from libvirt_arm_cpu.formats.domain import NAMESPACE

    script = Path(__file__).resolve().parent.parent / "hooks" / "libvirt-arm-cpu"
    consts = {}
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            consts[node.targets[0].id] = node.value
    assert ast.literal_eval(consts["ACTS_ON"]) == hook.CHECKED
    assert ast.literal_eval(consts["MARK"]) == NAMESPACE.encode()


def test_what_the_hook_puts_off_is_the_real_module_when_used():
    """The hook script stands in for inspect, copy and ElementTree
    (deferred.HOOK_PUT_OFF; the command's main for inspect): the modules of
    a domain's check and of a baseline import without them, and code that
    uses them later gets the real modules, whichever way it imported them."""
    from libvirt_arm_cpu.deferred import HOOK_PUT_OFF
    script = Path(__file__).resolve().parent.parent / "hooks" / "libvirt-arm-cpu"
    assert "for module in HOOK_PUT_OFF:" in script.read_text()
    assert set(HOOK_PUT_OFF) == {"inspect", "copy", "xml.etree.ElementTree"}
    code = (
        "import sys\n"
        "from libvirt_arm_cpu.deferred import HOOK_PUT_OFF, defer\n"
        "for m in HOOK_PUT_OFF: defer(m)\n"
        "import libvirt_arm_cpu.hook, libvirt_arm_cpu.engine.validate\n"
        "import libvirt_arm_cpu.cli.cpu_baseline, libvirt_arm_cpu.host.tryapply\n"
        "import libvirt_arm_cpu.formats.compact, libvirt_arm_cpu.host.verdicts\n"
        "import libvirt_arm_cpu.formats.domain, libvirt_arm_cpu.formats.platform\n"
        "real = lambda m: vars(sys.modules[m]).get('__spec__') is not None\n"
        "assert not any(map(real, HOOK_PUT_OFF)), [m for m in HOOK_PUT_OFF if real(m)]\n"
        "assert 'ast' not in sys.modules and 'weakref' not in sys.modules\n"
        "assert 'xml.etree.ElementPath' not in sys.modules\n"
        "import inspect\n"
        "def f(a, b=2): pass\n"
        "assert str(inspect.signature(f)) == '(a, b=2)'\n"
        "assert real('inspect') and 'ast' in sys.modules\n"
        "import inspect as again\n"
        "assert again.isfunction(f) and sys.modules['inspect'] is again\n"
        "import copy\n"
        "x = [[1]]; assert copy.deepcopy(x) == x and copy.deepcopy(x)[0] is not x[0]\n"
        "import xml.etree.ElementTree\n"
        "assert xml.etree.ElementTree.fromstring('<a b=\"1\"/>').get('b') == '1'\n"
        "import xml.etree.ElementTree as ET\n"
        "from xml.etree.ElementTree import Element\n"
        "assert ET.Element is Element and real('xml.etree.ElementTree')\n"
        "from libvirt_arm_cpu.formats.domain import Domain\n"
        "d = Domain.parse(b'<domain><name>n</name></domain>')\n"
        "assert d.name == 'n' and b'<name>n</name>' in d.tostring()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr


def test_every_value_type_has_a_docstring():
    """dataclasses describes a class without a docstring with
    inspect.signature: the hook script puts inspect off on that account, and
    an undocumented value type would import it on every domain start."""
    import dataclasses
    import importlib
    import pkgutil

    import libvirt_arm_cpu
    missing = []
    for info in pkgutil.walk_packages(libvirt_arm_cpu.__path__, "libvirt_arm_cpu."):
        if info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj)
                    and obj.__module__ == info.name
                    and (obj.__doc__ or "").startswith(obj.__name__ + "(")):
                missing.append(f"{info.name}.{obj.__name__}")
    assert not missing, missing


def test_the_bundled_profiles_stay_as_they_are():
    """The tests above point the hook at copies of the bundled profiles: its
    compact copy and its verdicts (beside the profile) never land in
    tests/data."""
    from .domains import FIXTURES
    assert not sorted(FIXTURES.glob("*.xml.*"))
