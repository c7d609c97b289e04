"""The bundled example dumps are what contrib/make-example-dumps.py makes, and the
README's main job (contrib/demo.sh) runs on them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, ROOT


def test_examples_are_not_stale(shared_data, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "contrib" / "make-example-dumps.py"),
                           str(shared_data / "cpus"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.regs")}
    committed = {p.name: p.read_text() for p in EXAMPLES.glob("*.regs")}
    assert fresh == committed
    assert "qemu-neoverse-n1.regs" in committed


def _shown(stdout: str) -> list[tuple[str, list[str], int]]:
    """The demo's commands: each "$ " line, the output lines it showed
    (before its "  … " line saying what it cut) and the exit status it
    showed."""
    blocks: list[tuple[str, list[str], int]] = []
    for line in stdout.splitlines():
        if line.startswith("$ "):
            blocks.append((line[2:], [], 0))
        elif not blocks or line.startswith(("# ", "==== ")):
            blocks.append(("", [], 0))          # prose or a heading ends a command's output
        elif line.startswith("  (exit status "):
            cmd, out, _ = blocks[-1]
            blocks[-1] = (cmd, out, int(line.split()[2].rstrip(")")))
        elif not line.startswith("  … "):
            blocks[-1][1].append(line)
    for _, out, _ in blocks:
        while out and not out[-1]:              # the blank line before the next heading
            out.pop()
    return [b for b in blocks if b[0]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
    """`sh contrib/demo.sh`, the README's first command (set-up is already
    done here, so it only checks and goes on), in a folder of its own."""
    env = {**os.environ, "LIBVIRT_ARM_CPU_DEMO_DIR": str(tmp_path_factory.mktemp("demo"))}
    p = subprocess.run(["sh", str(ROOT / "contrib" / "demo.sh")], capture_output=True,
                       text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_the_readme_main_job_runs(demo):
    """It shows a model that differs from the host reaching a guest through
    the loader, in under 100 lines, and says what it cut."""
    assert len(demo.splitlines()) < 100
    for needle in ("DP      [47:44] = 1  (IMP)", "MIDR_EL1.PartNum", "cpu-baseline: saved as arm64-",
                   "refused (host-passthrough guest)", ": migrates (CPU model arm64-",
                   "is incompatible with host CPU", "more lines not shown",
                   '<cpu mode="host-passthrough" check="none">', 'method="loader"',
                   '<qemu:env name="LIBVIRT_ARM_CPU_ID_REGS" value="MIDR_EL1@',
                   "lines cut at 100 characters",
                   "ID_AA64ISAR0_EL1@S3_0_C0_C6_0=0x0000000010211120",
                   "DP      [47:44] = 0  (NI)",
                   "optional feature sve left out: the host CPU lacks it"):
        assert needle in demo, needle


def test_every_command_the_demo_shows_runs_as_printed(demo, tmp_path):
    """Each "$ " line of the demo, run in order by a plain shell from the
    repository root, prints what the demo showed and exits as it showed."""
    blocks = _shown(demo)
    assert len(blocks) > 10 and blocks[0][0].startswith("export PATH=")
    outs = tmp_path / "outs"
    outs.mkdir()
    script = "".join(f"{cmd}\n" if cmd.startswith("export ") else
                     f"{{ {cmd}; }} >{outs}/{i}.out 2>&1; echo $? >{outs}/{i}.rc\n"
                     for i, (cmd, _, _) in enumerate(blocks))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBVIRT_ARM_CPU_")}
    r = subprocess.run(["sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    for i, (cmd, shown, rc) in enumerate(blocks):
        if not cmd.startswith("export "):
            got = (outs / f"{i}.out").read_text().splitlines()
            assert int((outs / f"{i}.rc").read_text()) == rc, cmd
            assert got[:len(shown)] == shown, cmd
