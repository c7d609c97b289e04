"""Errors a new user meets (issue 14): one line, ``PROG: error:``, what the
file or value is and what to run; the exit codes of the README's table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from libvirt_arm_cpu.errors import EXIT_USAGE, ParseError, WrongKind

from .conftest import EXAMPLES, run_installed
from .kvm_hosts import FIXTURES

PROFILE = FIXTURES / "neoverse-n1-qemu7.2-linux6.12.xml"
DUMP = EXAMPLES / "qemu-neoverse-n1.regs"
PROBE_FAILS = ("this is an x86_64 machine: the helper asks ARM64 KVM and must run on the "
               "aarch64 host itself")

GUEST = """\
<domain type='kvm'>
  <name>g</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='aarch64' machine='virt'>hvm</type></os>
  <cpu mode='host-model'/>
</domain>
"""


def error_line(result, code: int) -> str:
    """The one line a refused command prints on stderr (and nothing on stdout)."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.fixture
def files(tmp_path, run):
    """A host profile, a CPU model of it and a register dump, in tmp_path
    (the messages name them as given)."""
    host = tmp_path / "host.xml"
    shutil.copy(PROFILE, host)
    dump = tmp_path / "n1.regs"
    shutil.copy(DUMP, dump)
    model = tmp_path / "model.xml"
    assert run("cpu-baseline", str(host), "-o", str(model)).code == 0
    guest = tmp_path / "guest.xml"
    guest.write_text(GUEST)
    return {"host": str(host), "dump": str(dump), "model": str(model), "guest": str(guest),
            "stem": str(tmp_path / "n1")}


# -- 1. subcommand typos and every argparse error -------------------------------

def test_mistyped_command_names_the_closest():
    r = run_installed("libvirt-arm-cpu", "cpu-baselin")
    assert error_line(r, 2) == ("libvirt-arm-cpu: error: unknown command 'cpu-baselin' "
                                "(did you mean cpu-baseline?)")
    assert r.out == ""


def test_unknown_command_without_a_close_one_points_to_help(run):
    assert error_line(run("zzzzzz"), 2) == ("libvirt-arm-cpu: error: unknown command 'zzzzzz' "
                                            "(see 'libvirt-arm-cpu --help')")


def test_helper_mistyped_command_names_the_closest():
    r = run_installed("libvirt-arm-cpu-helper", "prob")
    assert error_line(r, 2) == ("libvirt-arm-cpu-helper: error: unknown command 'prob' "
                                "(did you mean probe?)")


@pytest.mark.parametrize("argv, line", [
    (["decode", "--bogus"],
     "libvirt-arm-cpu: error: unrecognized arguments: --bogus (see 'libvirt-arm-cpu --help')"),
    (["import", "x.regs"],
     "libvirt-arm-cpu: error: the following arguments are required: --output/-o "
     "(see 'libvirt-arm-cpu import --help')"),
    (["features", "--kind", "hwcp"],
     "libvirt-arm-cpu: error: argument --kind: invalid choice 'hwcp' (did you mean hwcap?); "
     "choose from hwcap, aarch32-hwcap, feat"),
    (["hook", "instal"],
     "libvirt-arm-cpu: error: argument action: invalid choice 'instal' (did you mean "
     "install?); choose from install, uninstall, serve"),
])
def test_argparse_errors_are_one_error_line(run, argv, line):
    assert error_line(run(*argv), 2) == line


def test_helper_argparse_error_is_one_error_line():
    r = run_installed("libvirt-arm-cpu-helper", "try-apply")
    assert error_line(r, 2) == ("libvirt-arm-cpu-helper: error: the following arguments are "
                                "required: file (see 'libvirt-arm-cpu-helper try-apply --help')")


# -- 2. --writable keywords --------------------------------------------------

@pytest.mark.parametrize("value, near", [("alll-known", "all-known"), ("nnoe", "none"),
                                         ("All-Know", "all-known")])
def test_import_writable_typo_is_a_keyword_not_a_file(run, files, tmp_path, value, near):
    out = tmp_path / "out.xml"
    r = run("import", files["dump"], "--writable", value, "-o", str(out))
    assert error_line(r, 2) == (f"libvirt-arm-cpu: error: --writable '{value}': no such file, "
                                f"and not a keyword (did you mean {near}?); --writable takes "
                                f"none, all-known or a host profile FILE")
    assert not out.exists()


def test_import_writable_missing_file_is_still_a_missing_file(run, files, tmp_path):
    missing = tmp_path / "nope.xml"
    r = run("import", files["dump"], "--writable", str(missing), "-o", str(tmp_path / "o.xml"))
    assert error_line(r, 1) == (f"libvirt-arm-cpu: error: {missing}: cannot read: No such "
                                f"file or directory")


# -- 3. a file of the wrong kind says what it is and what to run ---------------

WRONG_KIND = [
    # a host profile or a dump where a CPU model goes
    (["migrate-check", "{host}", "{host}", "--model", "{host}"],
     "{host} is a host profile, not a CPU model: make a model with "
     "'libvirt-arm-cpu cpu-baseline {host}'"),
    (["migrate-check", "{host}", "{host}", "--model", "{dump}"],
     "{dump} is a register dump, not a CPU model: turn it into a host profile with "
     "'libvirt-arm-cpu import {dump} -o {stem}.xml', then make a model with "
     "'libvirt-arm-cpu cpu-baseline {stem}.xml'"),
    (["cpu-compare", "{dump}", "{host}"],
     "{dump} is a register dump, not a CPU model or a host profile: turn it into a host "
     "profile with 'libvirt-arm-cpu import {dump} -o {stem}.xml'"),
    (["cpu-baseline", "{host}", "{dump}"],
     "{dump} is a register dump, not a host profile or a CPU model: turn it into a host "
     "profile with 'libvirt-arm-cpu import {dump} -o {stem}.xml'"),
    # a dump or a model where a host profile goes
    (["host", "--profile", "{dump}"],
     "{dump} is a register dump, not a host profile: turn it into a host profile with "
     "'libvirt-arm-cpu import {dump} -o {stem}.xml'"),
    (["translate", "{guest}", "--host", "{dump}"],
     "{dump} is a register dump, not a host profile: turn it into a host profile with "
     "'libvirt-arm-cpu import {dump} -o {stem}.xml'"),
    (["host", "--profile", "{model}"],
     "{model} is a CPU model, not a host profile: a host profile is written by "
     "'libvirt-arm-cpu-helper probe' on that host, or made from its register dump by "
     "'libvirt-arm-cpu import'"),
    (["import", "{dump}", "--writable", "{model}", "-o", "{stem}.out"],
     "{model} is a CPU model, not a host profile: a host profile is written by "
     "'libvirt-arm-cpu-helper probe' on that host, or made from its register dump by "
     "'libvirt-arm-cpu import'"),
    (["cpu-compare", "{host}", "{model}"],
     "{model} is a CPU model, not a host profile: give the CPU first and a host profile "
     "second ('libvirt-arm-cpu cpu-compare CPU PROFILE')"),
    # a profile or a model where a dump goes
    (["import", "{host}", "-o", "{stem}.out"],
     "{host} is a host profile, not a register dump: use it as it is (import makes host "
     "profiles from register dumps)"),
    (["import", "{model}", "-o", "{stem}.out"],
     "{model} is a CPU model, not a register dump: import reads NAME=VALUE lines or "
     "Firecracker cpu-template-helper JSON"),
    # where a domain goes
    (["translate", "{host}", "--host", "{host}"],
     "{host} is a host profile, not a domain XML: give a libvirt domain's XML "
     "('virsh dumpxml NAME' prints one)"),
    (["validate", "{dump}", "--host", "{host}"],
     "{dump} is a register dump, not a domain XML: give a libvirt domain's XML "
     "('virsh dumpxml NAME' prints one)"),
]


@pytest.mark.parametrize("argv, message", WRONG_KIND,
                         ids=[f"{a[0]}-{m.split(' is ')[1].split(',')[0]}"
                              for a, m in WRONG_KIND])
def test_a_file_of_the_wrong_kind_says_what_to_run(run, files, argv, message):
    r = run(*[a.format(**files) for a in argv])
    assert error_line(r, 2) == "libvirt-arm-cpu: error: " + message.format(**files)
    assert not Path(files["stem"] + ".out").exists()


def test_wrong_kind_is_a_parse_error_with_the_usage_exit_code(files):
    """The host cache falls back on a file it cannot use (``except
    ParseError``): a wrong kind is still one."""
    from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml
    from libvirt_arm_cpu.formats.profile import from_xml as profile_from_xml
    with pytest.raises(WrongKind) as info:
        model_from_xml(Path(files["host"]).read_bytes(), files["host"])
    assert isinstance(info.value, ParseError) and info.value.exit_code == EXIT_USAGE
    with pytest.raises(WrongKind, match="is a register dump, not a host profile"):
        profile_from_xml(Path(files["dump"]).read_bytes(), files["dump"])


def test_messages_never_show_clark_names(run, files, tmp_path):
    """ElementTree's {urn:...}name is never what a user reads."""
    foreign = tmp_path / "foreign.xml"
    foreign.write_text("<x:thing xmlns:x='urn:example:other'/>")
    r = run("migrate-check", files["host"], files["host"], "--model", str(foreign))
    assert error_line(r, 1) == (f"libvirt-arm-cpu: error: {foreign}: root element is "
                                f"<thing xmlns='urn:example:other'>, expected <cpu>")
    extra = tmp_path / "extra.xml"
    extra.write_text(Path(files["host"]).read_text().replace("<capabilities>",
                                                              "<capabilities><bogus/>", 1))
    line = error_line(run("host", "--profile", str(extra)), 1)
    assert line == (f"libvirt-arm-cpu: error: {extra}: not a valid host profile: Unexpected "
                    f"child with tag 'bogus' at position 1. (at /hostprofile/capabilities)")
    r = run("validate", files["host"], "--host", files["host"])
    assert "{" not in error_line(r, 2)


def test_clark_names_from_elsewhere_are_shown_plainly():
    """The last line of defence in run_main: messages made by modules that
    format an element's tag themselves."""
    from libvirt_arm_cpu.cli.main import _one_line
    assert _one_line("a.xml: root element is <{urn:x-libvirt-arm-cpu:host:1}hostprofile>, "
                     "expected <domain>") == ("a.xml: root element is <hostprofile "
                                              "xmlns='urn:x-libvirt-arm-cpu:host:1'>, "
                                              "expected <domain>")
    assert _one_line("tag '{urn:a:b}c' here") == "tag 'c' here"
    assert _one_line("value {0x1} and {x}") == "value {0x1} and {x}"


# -- 4. standard input is <stdin> ---------------------------------------------

def test_stdin_is_named_stdin_in_errors():
    r = run_installed("libvirt-arm-cpu", "cpu-baseline", "-", stdin=DUMP.read_text())
    assert error_line(r, 2) == ("libvirt-arm-cpu: error: <stdin> is a register dump, not a host "
                                "profile or a CPU model: turn it into a host profile with "
                                "'libvirt-arm-cpu import - -o host.xml'")
    r = run_installed("libvirt-arm-cpu", "host", "--profile", "-", stdin="<hostprofile")
    assert error_line(r, 1).startswith("libvirt-arm-cpu: error: <stdin>:1: not well-formed XML")
    r = run_installed("libvirt-arm-cpu", "import", "-", "-o", "/dev/null", stdin="# nothing\n")
    assert error_line(r, 1) == ("libvirt-arm-cpu: error: <stdin>: no registers found (expected "
                                "NAME=VALUE lines)")


def test_stdin_is_named_stdin_in_output(files):
    model = Path(files["model"]).read_text()
    r = run_installed("libvirt-arm-cpu", "cpu-compare", "-", files["host"], stdin=model)
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == ("CPU described in <stdin> is identical to the CPU "
                                     "provided by the host")
    r = run_installed("libvirt-arm-cpu", "migrate-check", "-", files["host"],
                      stdin=PROFILE.read_text())
    assert r.code == 0, r.err
    assert r.out.startswith("<stdin> -> host: migrates"), r.out


# -- 5. libvirt: one line, and a missing domain exits 1 ------------------------

def test_missing_domain_is_one_line_exit_1_with_the_closest_name():
    """libvirt's test driver (no daemon) has a domain named 'test'; libvirt's
    default error handler would print a second line."""
    r = run_installed("libvirt-arm-cpu", "validate", "tset", "-c", "test:///default")
    assert error_line(r, 1) == ("libvirt-arm-cpu: error: tset: no such file, and no domain of "
                                "that name in libvirt at test:///default (did you mean test?)")
    r = run_installed("libvirt-arm-cpu", "dumpxml", "zzzzzz", "-c", "test:///default")
    assert error_line(r, 1) == ("libvirt-arm-cpu: error: zzzzzz: no such file, and no domain "
                                "of that name in libvirt at test:///default")


def test_libvirt_connection_error_is_printed_once():
    r = run_installed("libvirt-arm-cpu", "dumpxml", "g", "-c", "nosuchdriver:///x")
    line = error_line(r, 1)
    assert line.startswith("libvirt-arm-cpu: error: cannot connect to libvirt at "
                           "nosuchdriver:///x: "), line


# -- 6. on a machine that is not aarch64: the option that works there ----------

@pytest.fixture
def x86(monkeypatch, tmp_path):
    """This machine as an x86_64 one without a cached profile (the probe
    refuses), whatever it really is."""
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    conf = tmp_path / "settings.conf"
    conf.write_text(f"[hook]\nprofile = {tmp_path / 'cache' / 'host.xml'}\n")
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(conf))
    from libvirt_arm_cpu.cli import cpu_compare
    monkeypatch.setattr(cpu_compare, "DEFAULT_CACHE", str(tmp_path / "cache" / "host.xml"))
    return tmp_path / "cache" / "host.xml"


def test_host_on_x86_points_to_profile(run, x86):
    r = run("host", "--cache", str(x86))
    assert error_line(r, 3) == (f"libvirt-arm-cpu: error: {PROBE_FAILS} (or give a host "
                                f"profile with --profile FILE)")


@pytest.mark.parametrize("command", ["translate", "define"])
def test_translate_on_x86_points_to_host(run, x86, files, command):
    r = run(command, files["guest"])
    assert error_line(r, 3) == (f"libvirt-arm-cpu: error: {PROBE_FAILS} (or give a host "
                                f"profile with --host PROFILE)")


def test_validate_on_x86_points_to_host(run, x86, files, tmp_path):
    translated = tmp_path / "translated.xml"
    assert run("translate", files["guest"], "--host", files["host"],
               "-o", str(translated)).code == 0
    r = run("validate", str(translated))
    assert error_line(r, 3) == (f"libvirt-arm-cpu: error: {PROBE_FAILS} (or give a host "
                                f"profile with --host PROFILE)")


def test_cpu_compare_on_x86_points_to_profile_argument(run, x86, files):
    r = run("cpu-compare", files["model"])
    assert error_line(r, 3) == (f"libvirt-arm-cpu: error: {PROBE_FAILS} (or give a host "
                                f"profile with 'libvirt-arm-cpu cpu-compare CPU PROFILE')")
