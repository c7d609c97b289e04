#!/usr/bin/env python3
"""Wall time of the libvirt hook (it runs on every domain start) and of translate.

Installs the hook in a scratch hooks directory (settings baked in: the
max/Linux 7.3 test-bed profile with a SYSREG-capable QEMU, refresh never,
try-apply off, log to stderr), then runs it as libvirtd does (argv, domain
XML on stdin, a clean environment), median of N runs:

  * python -c pass (interpreter start-up: the issue's unit; this
    virtualenv's python, whose editable install is a plain path, so its
    start is Debian's python3's), and python -S -c pass (the hook's own
    start: its #! line has -S, so its start is below the unit);
  * prepare, a domain without libvirt-arm-cpu metadata;
  * prepare, a translated domain: the first check (nothing left behind: the
    profile and knowledge base XML read, their compact copy and the verdict
    written: what the first start after a probe or an upgrade pays), a
    check with the compact copy (a CPU not started before), the first start
    of a domain `libvirt-arm-cpu define` defined (define made the check and
    the hook remembers it), a start like one allowed before (answered from
    the hook's memory), and a new domain with the CPU of one allowed before
    (answered so too);
  * migrate, a translated domain allowed before;
  * prepare, a CPU not started before, with the resident checker running
    (`libvirt-arm-cpu hook serve`, started here on a scratch socket; the
    other rows find no socket and check by themselves);
  * translate in-process (resolve + dependency repair + serialise).

The rows run round by round (each once a round), so the ratios to python -c
pass are paired even when other jobs change the machine's load; each row
also shows its CPU time (user + system), which the load moves less.

usage: python bench/hook.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.domains import MAX73, custom_cpu, domain_xml, save_model, with_sysreg  # noqa: E402

ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def timed_once(argv: list[str], stdin: bytes, before=None) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run, in ms."""
    if before:
        before()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(argv, input=stdin, capture_output=True, env=ENV, timeout=60)
    took = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert p.returncode == 0, p.stderr
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return took * 1000, cpu * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    import os
    scratch = tempfile.TemporaryDirectory(prefix="lac-bench-hook.")
    tmp = Path(scratch.name)
    os.environ["LIBVIRT_ARM_CPU_MODELS_DIR"] = str(tmp / "models")
    os.environ["LIBVIRT_ARM_CPU_CONFIG"] = str(tmp / "lac.conf")
    model = save_model(tmp / "models", MAX73)
    host = with_sysreg(MAX73, tmp / "host-a.xml", "host-a")
    sock = tmp / "run" / "checker.sock"
    (tmp / "lac.conf").write_text(f"[hook]\nprofile = {host}\nrefresh = never\ntry_apply = no\n"
                                  f"log = stderr\nchecker = {sock}\n"
                                  f"[models]\ndir = {tmp / 'models'}\n")
    from libvirt_arm_cpu.cli import main as cli
    assert cli.main(["hook", "install", "--hooks-dir", str(tmp / "hooks"), "--config",
                     str(tmp / "lac.conf"), "--no-reload"]) == 0
    hook = str(tmp / "hooks" / "qemu.d" / "50-libvirt-arm-cpu")
    plain = domain_xml(cpu="<cpu mode='host-passthrough'/>").encode()
    src = tmp / "g.xml"
    src.write_text(domain_xml(cpu=custom_cpu(model, ("disable", "sve2"))))
    from libvirt_arm_cpu.service import translate_domain
    from libvirt_arm_cpu.formats.profile import read_profile
    prof = read_profile(str(host))
    translated, _ = translate_domain(src.read_bytes(), "g.xml", prof)
    xml = translated.tostring()
    translate_times = []
    for _ in range(args.n):
        t = time.perf_counter()
        translate_domain(src.read_bytes(), "g.xml", prof)
        translate_times.append(time.perf_counter() - t)
    copy = Path(str(host) + ".compact")
    memo = Path(str(host) + ".verdicts")

    def nothing_left() -> None:
        copy.unlink(missing_ok=True)
        memo.unlink(missing_ok=True)

    def not_remembered() -> None:
        memo.unlink(missing_ok=True)

    def remembered() -> None:
        memo.write_bytes(memory)
        memo.chmod(0o644)      # as the hook writes it (it believes no group-writable one)

    from libvirt_arm_cpu import settings
    from libvirt_arm_cpu.host.startcheck import precheck

    def defined() -> None:
        # what libvirt-arm-cpu define does after defining the domain (not timed)
        memo.unlink(missing_ok=True)
        assert precheck("g", xml, settings.load()) is None

    # the resident checker (hook serve) answers only the row that names it:
    # the others find no socket at the settings' path (it is moved aside)
    import subprocess as sp
    log = open(tmp / "checker.log", "wb")
    checker = sp.Popen([sys.executable, "-m", "libvirt_arm_cpu.cli", "hook", "serve"],
                       stdin=sp.DEVNULL, stdout=sp.DEVNULL, stderr=log, cwd=str(ROOT))
    aside = tmp / "run" / "aside.sock"
    for _ in range(600):
        if sock.exists() or checker.poll() is not None:
            break
        time.sleep(0.05)
    assert sock.exists(), (tmp / "checker.log").read_text()
    sock.rename(aside)

    def by_the_checker() -> None:
        aside.rename(sock)
        memo.unlink(missing_ok=True)

    def timed_row(argv, stdin, before):
        try:
            return timed_once(argv, stdin, before)
        finally:
            if sock.exists():
                sock.rename(aside)

    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"], b"", None),
        # the hook's own interpreter start (hook install writes #!PYTHON -S)
        ("python -S -c pass", [sys.executable, "-S", "-c", "pass"], b"", None),
        ("prepare, no metadata", [hook, "g", "prepare", "begin", "-"], plain, None),
        ("prepare, first check", [hook, "g", "prepare", "begin", "-"], xml, nothing_left),
        ("prepare, check (compact copy)", [hook, "g", "prepare", "begin", "-"], xml,
         not_remembered),
        ("prepare, first start after define", [hook, "g", "prepare", "begin", "-"], xml,
         defined),
        ("prepare, allowed before", [hook, "g", "prepare", "begin", "-"], xml, remembered),
        # a new domain with the CPU of one allowed before (a fleet's model)
        ("prepare, new domain, CPU allowed", [hook, "h", "prepare", "begin", "-"],
         xml.replace(b"<name>", b"<name>h-", 1), remembered),
        ("migrate, allowed before", [hook, "g", "migrate", "begin", "-"], xml, remembered),
        # a CPU not started before, checked by the resident checker (its own
        # CPU time is not in the cpu column: it is not the bench's child)
        ("prepare, check (resident checker)", [hook, "g", "prepare", "begin", "-"], xml,
         by_the_checker),
    ]
    # the memory of both allowances, put back before the rows that use it
    # (the first-check rows of each round remove it)
    for op in ("prepare", "migrate"):
        timed_once([hook, "g", op, "begin", "-"], xml)
    memory = memo.read_bytes()
    print(f"{len(xml)} bytes of translated domain XML; median of {args.n} runs")
    # round by round, every row once a round: a change of the machine's load
    # (other jobs share it) reaches every row alike, so the ratios hold
    # (and the CPU time beside the wall time: it moves less with the load)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in rows}
    for _ in range(args.n):
        for label, argv, stdin, before in rows:
            times[label].append(timed_row(argv, stdin, before))
    base = [statistics.median(t[i] for t in times[rows[0][0]]) for i in (0, 1)]
    for label, *_ in rows:
        ms, cpu = (statistics.median(t[i] for t in times[label]) for i in (0, 1))
        print(f"  {label:34s} {ms:7.1f} ms  ({ms / base[0]:.2f}x python -c pass)"
              f"   cpu {cpu:5.1f} ms ({cpu / base[1]:.2f}x)")
    print(f"  {'translate (in-process)':34s} {statistics.median(translate_times) * 1000:7.1f} ms")
    checker.terminate()
    checker.wait(timeout=60)
    answered = (tmp / "checker.log").read_text().count("(prepare): ok")
    assert answered == args.n, f"the checker answered {answered} of {args.n} starts"
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
