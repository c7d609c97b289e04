"""The code stays clean: ruff (pyflakes, pycodestyle, bugbear; the rules in
pyproject.toml) over the package, the tests, bench/ and contrib/, and mypy
over the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), "ruff is installed by the set-up (setup.cfg [test])"
    p = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_is_clean():
    """The package's type hints hold (pyproject.toml [tool.mypy])."""
    mypy = Path(sys.executable).parent / "mypy"
    assert mypy.exists(), "mypy is installed by the set-up (setup.cfg [test])"
    p = subprocess.run([str(mypy), "--no-incremental"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_api_and_the_service_layer_do_not_sit_on_the_cli():
    """Imports point down: the CLI's commands, the API and the hook sit on
    libvirt_arm_cpu.service; nothing under them imports a command."""
    code = ("import sys, libvirt_arm_cpu.api, libvirt_arm_cpu.service, libvirt_arm_cpu.hook\n"
            "bad = sorted(m for m in sys.modules if m.startswith('libvirt_arm_cpu.commands')\n"
            "             or m == 'libvirt_arm_cpu.cli.main')\n"
            "print(' '.join(bad))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", p.stdout


# The layers of docs/architecture.md, lowest first: a module may import from
# its own folder and from a lower layer, never from its own layer's sibling
# or from above.
LAYERS = {"errors": 0, "paths": 0, "namespaces": 0, "deferred": 0, "fileio": 1, "methodcache": 2, "settings": 1, "hooklog": 1, "xmlsafe": 2,    # base
          "kb": 3, "model": 4, "engine": 5, "formats": 5, "host": 6,
          "modelstore": 7, "service": 8, "cpuinputs": 8.5, "inventory": 8.5, "drift": 8,
          "cli": 9, "hook": 9, "api": 9, "helper": 10}                            # edges


def _imports(path: Path) -> set[str]:
    import ast
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import (the package uses absolute ones)")
            names = [f"{node.module}.{a.name}" for a in node.names]
            out.update(names if node.module == "libvirt_arm_cpu" else [node.module])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("libvirt_arm_cpu.")}


def test_imports_point_down_the_layers():
    package = ROOT / "libvirt_arm_cpu"
    wrong = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts == ("__init__",):
            continue
        mine = parts[0]
        assert mine in LAYERS, f"{path}: not placed in a layer (tests/test_lint.py LAYERS)"
        for mod in _imports(path):
            theirs = mod.split(".")[1]
            if theirs == "__version__" or theirs == mine:
                continue
            assert theirs in LAYERS, f"{path} imports {mod}: not placed in a layer"
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not wrong, "\n".join(wrong)


def test_importing_the_engine_loads_no_xml_file_or_process_module():
    """baseline, compare, translate and their rules take data and return
    data: importing them (with the value types and the knowledge base's
    types) reads nothing and parses nothing."""
    code = ("import sys\n"
            "import libvirt_arm_cpu.engine.baseline, libvirt_arm_cpu.engine.compare\n"
            "import libvirt_arm_cpu.engine.translate, libvirt_arm_cpu.engine.consistency\n"
            "import libvirt_arm_cpu.engine.rules, libvirt_arm_cpu.engine.loader\n"
            "import libvirt_arm_cpu.model\n"
            "print(' '.join(sorted(sys.modules)))\n")
    p = subprocess.run([sys.executable, "-I", "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.split())
    assert "libvirt_arm_cpu.engine.baseline" in loaded      # the probe itself works
    banned = [m for m in loaded
              if m.split(".")[0] in ("xml", "lxml", "xmlschema", "pyexpat", "tempfile", "shutil",
                                     "subprocess", "configparser", "json", "libvirt")
              or m.startswith(("libvirt_arm_cpu.formats", "libvirt_arm_cpu.host",
                               "libvirt_arm_cpu.kb.load", "libvirt_arm_cpu.xmlsafe",
                               "libvirt_arm_cpu.fileio", "libvirt_arm_cpu.service",
                               "libvirt_arm_cpu.cli"))]
    assert not banned, banned


def test_xml_is_parsed_in_one_module():
    """Every XML input goes through libvirt_arm_cpu.xmlsafe (no DOCTYPE, no
    entities, depth and size limits, one-line errors); the rest of the
    package builds and writes elements only."""
    import re
    parsing = re.compile(r"\b(ET\.parse|ET\.fromstring|ET\.XMLParser|ET\.iterparse|"
                         r"ET\.XML\(|xml\.parsers\.expat|xml\.dom|xml\.sax|lxml)\b")
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
             for p in sorted((ROOT / "libvirt_arm_cpu").rglob("*.py"))
             if p.name != "xmlsafe.py"
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if parsing.search(line) and not line.lstrip().startswith("#")]
    assert not found, "\n".join(found)
