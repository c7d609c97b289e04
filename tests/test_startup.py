"""What a process imports before it works (issue 15): the command imports only
the chosen command's module, the libvirt hook's check only what checking
needs, and the settings file reads as configparser reads it without
importing configparser."""

from __future__ import annotations

import configparser
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from libvirt_arm_cpu import settings as settings_mod
from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.cli import main as cli_main
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.formats.domain import Domain

from .conftest import run_installed
from .domains import MAX73, custom_cpu, with_loader
from .test_hook import LIBVIRT_ENV, bed  # noqa: F401 - the installed hook

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "libvirt_arm_cpu" / "cli"


def _modules_after(code: str, stdin: bytes = b"", env: dict[str, str] | None = None,
                   flags: tuple[str, ...] = ()) -> tuple[str, set[str]]:
    """Run *code* in a fresh interpreter; its output before the marker, and
    the modules it had imported at exit."""
    wrapped = ("import atexit, sys\n"
               "atexit.register(lambda: print('\\n@@', ' '.join(sorted(sys.modules))))\n"
               f"sys.path.insert(0, {str(ROOT)!r})\n" + code)
    p = subprocess.run([sys.executable, *flags, "-c", wrapped], input=stdin, capture_output=True,
                       cwd="/", env=env, timeout=120)
    out, _, mods = p.stdout.decode().rpartition("\n@@ ")
    assert mods, p.stderr.decode()
    return out + p.stderr.decode(), set(mods.split())


# -- the command --------------------------------------------------------------

def test_the_command_table_names_each_command_as_its_class_does():
    """COMMANDS holds each command's name and help so that the parser needs
    no module but the chosen one's: they must be the classes' own, and every
    command class under cli/ must be in it (the helper's are the helper's)."""
    names = [ref.name for ref in cli_main.COMMANDS]
    assert len(names) == len(set(names))
    listed = set()
    for ref in cli_main.COMMANDS:
        cmd = ref.load()
        assert (cmd.name, cmd.help) == (ref.name, ref.help), ref
        listed.add((ref.module, ref.attr))
    found = set()
    for path in sorted(CLI.glob("*.py")):
        if path.stem in ("__init__", "__main__", "main", "base", "probe"):
            continue
        module = importlib.import_module(f"libvirt_arm_cpu.cli.{path.stem}")
        for attr, cls in vars(module).items():
            if inspect.isclass(cls) and issubclass(cls, Command) and cls is not Command \
                    and cls.__module__ == module.__name__ and cls.name:
                found.add((module.__name__, attr))
    assert found == listed
    assert [c.name for c in cli_main.commands()] == names


def _cli_modules(*argv: str) -> set[str]:
    out, mods = _modules_after("from libvirt_arm_cpu.cli.main import main\n"
                               f"sys.exit(main({list(argv)!r}))\n")
    return {m for m in mods if m.startswith("libvirt_arm_cpu.cli")}


def test_a_command_imports_only_its_own_module():
    base = {"libvirt_arm_cpu.cli", "libvirt_arm_cpu.cli.main", "libvirt_arm_cpu.cli.base"}
    assert _cli_modules("cpu-baseline", "--help") == base | {"libvirt_arm_cpu.cli.cpu_baseline"}
    assert _cli_modules("hook", "--help") == base | {"libvirt_arm_cpu.cli.hook"}
    for argv in (["--help"], ["--version"], [], ["cpu-basline"]):
        assert _cli_modules(*argv) == base, argv


def test_help_fits_the_terminal_without_shutil():
    """argparse makes a formatter for every option it adds; ours measures
    the terminal as shutil does (COLUMNS first) without importing shutil."""
    code = ("from libvirt_arm_cpu.cli.main import main\n"
            "sys.exit(main(['cpu-baseline', '--help']))\n")
    for columns in (50, 120):
        out, mods = _modules_after(code, env={**os.environ, "COLUMNS": str(columns)})
        # the options are wrapped to the width (the description is as written)
        lines = out.split("\noptions:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert "shutil" not in mods
        assert columns - 30 < max(map(len, lines)) <= columns, out
    # the command a fleet's baseline runs does not import the baseline engine
    # for cpu-compare (hypervisor imports it where hypervisor-cpu-baseline runs)
    assert "libvirt_arm_cpu.engine.baseline" not in _modules_after(
        "from libvirt_arm_cpu.cli import cpu_compare\n")[1]


def test_help_and_errors_are_those_of_the_commands():
    """The lazily filled sub-parser is the command's: its description,
    epilog, arguments and usage errors (the installed command, as a user
    runs it)."""
    r = run_installed("libvirt-arm-cpu", "hook", "--help")
    assert r.code == 0 and "install: copy the hook" in r.out and "examples:" in r.out
    assert "--no-reload" in r.out
    r = run_installed("libvirt-arm-cpu", "hook", "frob")
    assert r.code == 2 and "invalid choice 'frob'" in r.err
    r = run_installed("libvirt-arm-cpu", "cpu-basline")
    assert r.code == 2 and "did you mean cpu-baseline?" in r.err
    r = run_installed("libvirt-arm-cpu", "--help")
    assert r.code == 0
    for ref in cli_main.COMMANDS:
        assert f"    {ref.name} " in r.out or f"    {ref.name}\n" in r.out, ref.name


# -- the hook ------------------------------------------------------------------

def test_the_hooks_check_imports_only_what_checking_needs(bed):  # noqa: F811
    """A first check (nothing remembered) under -S, as libvirtd runs the
    hook: the engine's check and its value types, not the service layer,
    the schema validator, translate, the feature catalog or the rules."""
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    env = dict(LIBVIRT_ENV, LIBVIRT_ARM_CPU_CONFIG=str(bed.tmp / "lac.conf"))
    code = ("import gc\nfrom libvirt_arm_cpu.hook import run\n"
            "rc = run(['g', 'prepare', 'begin', '-'], sys.stdin.buffer.read())\n"
            "assert gc.isenabled()\n"       # the collector is back on after the run
            "sys.exit(rc)\n")
    out, mods = _modules_after(code, stdin=xml, env=env, flags=("-S",))
    assert "CPU checked on host host-a" in out, out
    assert "libvirt_arm_cpu.engine.validate" in mods
    for unwanted in ("xmlschema", "lxml", "libvirt", "libvirt_arm_cpu.service",
                     "libvirt_arm_cpu.cli", "libvirt_arm_cpu.engine.translate",
                     "libvirt_arm_cpu.engine.baseline", "libvirt_arm_cpu.kb.features",
                     "libvirt_arm_cpu.kb.dependencies", "configparser", "typing", "hashlib",
                     "tempfile", "subprocess"):
        assert unwanted not in mods, unwanted


def test_a_start_allowed_before_imports_neither_elementtree_nor_the_engine(bed):  # noqa: F811
    """The hook's answer to a start exactly like one allowed before (the
    common case: every start of a domain but its first on a host) reads the
    XML with expat alone: no ElementTree, no re, no value types."""
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    env = dict(LIBVIRT_ENV, LIBVIRT_ARM_CPU_CONFIG=str(bed.tmp / "lac.conf"))
    code = ("from libvirt_arm_cpu.hook import run\n"
            "sys.exit(run(['g', 'prepare', 'begin', '-'], sys.stdin.buffer.read()))\n")
    first, _ = _modules_after(code, stdin=xml, env=env, flags=("-S",))
    again, mods = _modules_after(code, stdin=xml, env=env, flags=("-S",))
    assert "(as before)" not in first and "(as before)" in again, again
    for unwanted in ("xml.etree.ElementTree", "re", "collections", "dataclasses",
                     "libvirt_arm_cpu.model", "libvirt_arm_cpu.engine.compare",
                     "libvirt_arm_cpu.formats.domain"):
        assert unwanted not in mods, unwanted


def _script_modules(bed, argv: list[str], xml: bytes) -> tuple[str, set[str]]:  # noqa: F811
    """Run the installed hook script as libvirtd does (-S, its argv, the XML
    on stdin); its output, and the modules really loaded when it left
    (stand-ins for modules put off are not: deferred.py)."""
    report = ("import os, sys\n"
              "_exit = os._exit\n"
              "def leave(status):\n"
              "    real = (n for n, m in list(sys.modules.items())\n"
              "            if vars(m).get('__spec__') is not None)\n"
              "    print('\\n@@', ' '.join(sorted(real)), flush=True)\n"
              "    _exit(status)\n"
              "os._exit = leave\n"
              f"sys.argv = {[str(bed.hook), *argv]!r}\n"
              f"exec(compile(open({str(bed.hook)!r}).read(), 'hook', 'exec'), "
              f"{{'__name__': '__main__'}})\n")
    env = dict(LIBVIRT_ENV, LIBVIRT_ARM_CPU_CONFIG=str(bed.tmp / "lac.conf"))
    p = subprocess.run([sys.executable, "-S", "-c", report], input=xml, capture_output=True,
                       cwd="/", env=env, timeout=120)
    out, _, mods = p.stdout.decode().rpartition("\n@@ ")
    assert mods, p.stderr.decode()
    return out + p.stderr.decode(), set(mods.split())


def test_the_hook_scripts_first_check_imports_neither_elementtree_nor_copy(bed):  # noqa: F811
    """The installed script's first check of a domain reads its XML with
    expat alone (parse_light, once, for the memory's key and the check) and
    puts off ElementTree, copy and inspect: no module of the check uses
    them.  A migration that rewrites the domain does use ElementTree."""
    # another domain's check leaves the profile's compact copy behind (a
    # first check after a probe reads the profile's XML, with ElementTree)
    other_cpu = bed.translate(custom_cpu(bed.model), name_="o.xml")
    assert bed.call("o", "prepare", "begin", "-", stdin=other_cpu).returncode == 0
    assert Path(str(bed.host_a) + ".compact").exists()
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    out, mods = _script_modules(bed, ["g", "prepare", "begin", "-"], xml)
    assert "CPU checked on host host-a" in out and "(as before)" not in out, out
    assert "libvirt_arm_cpu.engine.validate" in mods and "pyexpat" in mods
    for unwanted in ("xml.etree.ElementTree", "xml.etree.ElementPath", "copy", "inspect",
                     "weakref", "ast"):
        assert unwanted not in mods, unwanted
    # migrating in to a host with the loader alone: the domain is rewritten
    # (with ElementTree, imported then), from the compact copy too
    lib = bed.tmp / "loader.so"
    lib.write_bytes(b"\x7fELF")
    bed.settings(with_loader(MAX73, bed.tmp / "l.xml", "host-l", lib))
    bed.call("o", "prepare", "begin", "-", stdin=other_cpu)
    assert (bed.tmp / "l.xml.compact").exists()
    out, mods = _script_modules(bed, ["g", "migrate", "begin", "-"], xml)
    assert "CPU input rewritten for host host-l" in out, out
    assert "xml.etree.ElementTree" in mods
    new = Domain.parse(out[out.index("<domain"):out.rindex("</domain>") + 9].encode(), "out")
    assert new.translation.method == "loader" and new.loader_env()["LD_PRELOAD"] == str(lib)


# -- the settings file ------------------------------------------------------------

def _configparser(text: str) -> dict[str, dict[str, str]] | str:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as err:
        return type(err).__name__
    return {name: dict(parser[name]) for name in parser.sections()}


_NAMES = st.sampled_from(["hook", "models", "Hook", "DEFAULT", "x y", "a]b", ""])
_KEYS = st.sampled_from(["mode", "Mode", "profile", "try_apply", "a b", "", "k"])
_LINES = st.one_of(
    st.builds(lambda n, tail: f"[{n}]{tail}", _NAMES, st.sampled_from(["", " ", " #x", "]"])),
    st.builds(lambda lead, k, sp1, d, sp2, v: f"{lead}{k}{sp1}{d}{sp2}{v}",
              st.sampled_from(["", "", "", " ", "\t"]), _KEYS, st.sampled_from(["", " ", "\t"]),
              st.sampled_from(["=", ":", " = ", ""]), st.sampled_from(["", " "]),
              st.sampled_from(["enforce", "/a:b=c", " x ", "# not a comment", "", "y;z"])),
    st.sampled_from(["", " ", "# comment", "; comment", "  # indented", "[", "]", "x",
                     "\ufeff[hook]", "  continued"]))


_OPTIONS = st.lists(
    st.tuples(st.sampled_from(["mode", "profile", "Try_Apply", "log", "dir", "a b", "k", "K2"]),
              st.sampled_from(["", " ", "\t"]), st.sampled_from(["=", ":"]),
              st.sampled_from(["", " "]),
              st.sampled_from(["enforce", "/a:b=c", "x ", "# not a comment", "", "y;z"])),
    max_size=4, unique_by=lambda option: option[0].lower()).map(
        lambda options: ["".join(option) for option in options])
_ASIDE = st.lists(st.sampled_from(["", " ", "# c", "  ; c"]), max_size=2)
# files mostly in the plain form: sections of distinct names, options of distinct keys
_ODD = st.one_of(st.just([]), st.just([]), st.just([]), st.lists(_LINES, max_size=1))
_PLAIN = st.lists(st.tuples(_NAMES, _OPTIONS, _ASIDE, _ODD),
                  max_size=3, unique_by=lambda section: section[0]).map(
    lambda sections: [line for name, options, aside, odd in sections
                      for line in [f"[{name}]", *aside, *options, *odd]])


@hsettings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(_LINES, max_size=8), _PLAIN), st.sampled_from(["", "\n"]))
def test_the_plain_settings_reader_reads_as_configparser(lines, end):
    """Wherever the hook's own reader answers, configparser (which defines
    the format, and reads everything else) gives the same sections."""
    text = "\n".join(lines) + end
    mine = settings_mod._plain_sections(text)
    if mine is not None:
        assert mine == _configparser(text), text


def test_the_readmes_settings_file_reads_as_the_defaults(tmp_path):
    """The example an operator copies: every key documented, each with its default."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```ini\n[hook]\n", 1)[1].split("```", 1)[0]
    conf = tmp_path / "lac.conf"
    conf.write_text("[hook]\n" + block)
    assert settings_mod._plain_sections(conf.read_text()) is not None
    got = settings_mod.load(str(conf))
    assert got == settings_mod.Settings(path=str(conf))
    keys = {line.split("=")[0].strip() for line in block.splitlines()
            if "=" in line and not line.startswith("#")}
    assert keys == set(settings_mod.Settings.__slots__) - {"path", "models_dir"} | {"dir"}


def test_the_settings_as_written_are_read_without_configparser(tmp_path):
    """The documented form, and a broken file still named by configparser."""
    conf = tmp_path / "lac.conf"
    conf.write_text("[hook]\n# enforce, warn or off\nmode = warn\nprofile = /p/host.xml\n"
                    "refresh = never\ntry_apply = no\nlog = stderr\n\n[models]\n"
                    "dir = /m\n")
    assert settings_mod._plain_sections(conf.read_text()) is not None
    assert settings_mod.load(str(conf)) == settings_mod.Settings(
        mode="warn", profile="/p/host.xml", refresh=False, try_apply=False, log="stderr",
        models_dir="/m", path=str(conf))
    conf.write_text("[hook]\nprofile = /p\n  /q\n")      # a continuation line
    assert settings_mod._plain_sections(conf.read_text()) is None
    assert settings_mod.load(str(conf)).profile == "/p\n/q"
    conf.write_text("[hook]\nmode = warn\nmode = off\n")
    with pytest.raises(ParseError, match="not a valid settings file: .*'mode'"):
        settings_mod.load(str(conf))
