#!/usr/bin/env python3
"""cpu-baseline / cpu-compare over a fleet, paired with virsh's x86 cpu-baseline (issue 15).

Whole processes, each row paired in one run: for every repetition our
command and its anchor run back to back, and each column is the median
of the repetitions.  Peak memory is the maximum resident set size of our
process (os.wait4 of that child, so neither the generator nor virsh
counts).

Rows (N = 1,000 and 10,000; 100,000 with --big):

  copies    cpu-baseline DIR, N profiles that are copies of two contents
            (the two neoverse-n1 fixtures), each file with its own host
            name, boot id and fingerprint digest;
  distinct  cpu-baseline DIR, N profiles that all differ in content: the
            neoverse-n1 6.12 fixture, each file its own identity AND its own
            combination of lowered lower-safe fields (file i lowers fields
            by the mixed-radix digits of i over the writable, lower-safe,
            unsigned AArch64 fields, round-robin over the registers), so
            de-duplication by content cannot help;
  compare   cpu-compare MODEL DIR over the N profiles (one verdict a host;
            no cache, and cache warm: filled by an untimed cpu-compare run),
            where the package takes several hosts (before issue 15's
            compare part: one host per process, its median times N,
            extrapolated); and the library's compare_many over the N
            profiles in one Python process (reading included);
  cache     each cpu-baseline row twice (--cache both, the default): "no
            cache", every profile read as before; "cache warm", the
            profile cache (LIBVIRT_ARM_CPU_CACHE_DIR, in the run's own
            directory) filled by an untimed run once the files are older
            than its 2 s racy window, as on a fleet whose profiles change
            now and then;
  kinds     cpu-baseline --exclude-incompatible DIR and --pools DIR on
            10,000 hosts of the fixtures' 18 kinds, cycled, each with its
            own identity; against our plain copies baseline of the same N
            (the issue's "within 2x") and the virsh anchor.

Anchor: virsh -c test:///default cpu-baseline FILE, FILE holding N <cpu>
elements (no wrapper: virsh reads top-level <cpu>s), each Skylake-Client
with its 63 model features plus 36 a real Skylake host reports (99
<feature> lines).  For the distinct shape CPU i drops the features named
by the set bits of i (so all N differ).  virsh refuses a file over 10 MiB
(about 3,800 such CPUs): above that the anchor is the call virsh makes,
virConnectBaselineCPU on test:///default, from a libvirt-python process
(stricter: 0.17 s where virsh takes 0.24 s at 1,000 CPUs, same output).

Each command runs once first, untimed, to check it exits 0 (a warm-up);
a command whose first run alone takes longer than --row-budget (15 s) is
timed by that one run.  A row stops repeating once it has used
--row-budget seconds (the runs column says how many were taken); a run
longer than --timeout (60 s) is killed and shown as ">T".  The default
run takes about 4-5 minutes on a 2-core machine.

usage: python bench/fleet_vs_virsh.py [-n RUNS] [--big] [--sizes 1000,10000]
           [--rows copies,distinct,compare,kinds] [--timeout S] [--row-budget S]
           [--cache both|cold|warm]
           [--pythonpath DIR]     # measure an export of one commit:
                                  # git archive COMMIT | tar -x -C DIR
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "hosts"
N1 = ("neoverse-n1-qemu7.2-linux6.12.xml", "neoverse-n1-qemu7.2-linux7.3.xml")
VIRSH = ["virsh", "-c", "test:///default", "cpu-baseline"]
CPU_MAP = Path("/usr/share/libvirt/cpu_map/x86_Skylake-Client.xml")
# What a Skylake-Client host reports beyond the model (virsh capabilities).
SKYLAKE_HOST_EXTRA = (
    "ds acpi ss ht tm pbe dtes64 monitor ds_cpl vmx smx est tm2 xtpr pdcm osxsave "
    "hypervisor tsc_adjust clflushopt intel-pt umip md-clear spec-ctrl stibp "
    "arch-capabilities ssbd pdpe1gb ibpb ibrs amd-stibp amd-ssbd rdctl-no "
    "skip-l1dfl-vmentry mds-no pschange-mc-no tsx-ctrl").split()
# Fields KVM limits beyond the generic lower-safe rule, or that vCPU-feature
# records repeat: not varied.
SKIP_FIELDS = {"EL0", "EL1", "EL2", "EL3", "DebugVer", "PMUVer", "PerfMon", "CopDbg"}


# -- profile generation (stdlib only: the package's internals may move) -------

_HOSTNAME = re.compile(r'(<identity\b[^>]*?\bhostname=")[^"]*(")')
_BOOT_ID = re.compile(r'(<component name="boot-id">)[^<]*(</component>)')
_COMPONENT = re.compile(r'<component name="([^"]+)">([^<]*)</component>')
_DIGEST = re.compile(r'(<fingerprint digest=")[0-9a-f]+(")')
_REGISTER = re.compile(r'<register name="(\w+)" op0="[^>]*?value="(0x[0-9a-f]+)" '
                       r'writable="(0x[0-9a-f]+)"')


def personalise(text: str, i: int) -> str:
    """The fixture as host i's own file: host name, boot id, digest."""
    text = _HOSTNAME.sub(rf"\g<1>host{i:06d}\g<2>", text, count=1)
    boot = f"{i:08x}-0000-4000-8000-{hashlib.sha1(str(i).encode()).hexdigest()[:12]}"
    text = _BOOT_ID.sub(rf"\g<1>{boot}\g<2>", text, count=1)
    comps = sorted(_COMPONENT.findall(text))
    digest = hashlib.sha256("\n".join(f"{k}={v}" for k, v in comps).encode()).hexdigest()
    return _DIGEST.sub(rf"\g<1>{digest}\g<2>", text, count=1)


def lowerable_fields(cli: list[str], text: str) -> list[tuple[str, int, int, int]]:
    """(register, lsb, width, host value) of every field the distinct shape
    varies: AArch64 ID registers, lower-safe, unsigned, wholly writable,
    non-zero on the host (asked of `libvirt-arm-cpu decode --json`)."""
    regs = {n: (int(v, 16), int(w, 16)) for n, v, w in _REGISTER.findall(text)}
    off = set(re.findall(r'<off\b.*?</off>', text, re.S))
    in_off = {n for block in off for n in re.findall(r'name="(\w+)"', block)}
    dump = "\n".join(f"{n}={v:#x}" for n, (v, _) in regs.items())
    out = subprocess.run(cli + ["decode", "--file", "-", "--json"], input=dump.encode(),
                         capture_output=True, check=True, env=CHILD_ENV, cwd=CHILD_CWD)
    per_reg: list[list[tuple[str, int, int, int]]] = []
    for reg in json.loads(out.stdout)["registers"]:
        name = reg["name"]
        if not name.startswith("ID_AA64") or name in in_off:
            continue
        fields = []
        for f in reg["fields"]:
            width = f["msb"] - f["lsb"] + 1
            mask = ((1 << width) - 1) << f["lsb"]
            if (f["policy"] == "lower-safe" and not f["signed"] and f["value"] > 0
                    and f["name"] not in SKIP_FIELDS and regs[name][1] & mask == mask):
                fields.append((name, f["lsb"], width, f["value"]))
        if fields:
            per_reg.append(fields)
    ordered = []                 # round-robin over registers: early digits touch many
    while any(per_reg):
        for fields in per_reg:
            if fields:
                ordered.append(fields.pop(0))
    return ordered


def distinct_variant(text: str, fields: list[tuple[str, int, int, int]], i: int) -> str:
    """Host i of the distinct shape: the mixed-radix digits of i over
    *fields* (digit 0 keeps the host's value, k lowers the field to k-1)."""
    changed: dict[str, int] = {}
    values = {n: int(v, 16) for n, v, _ in _REGISTER.findall(text)}
    rest = i
    for name, lsb, width, host in fields:
        rest, digit = divmod(rest, host + 1)
        if digit:
            v = changed.get(name, values[name])
            mask = ((1 << width) - 1) << lsb
            changed[name] = (v & ~mask) | ((digit - 1) << lsb)
        if not rest:
            break
    if rest:
        raise SystemExit(f"distinct shape: {i} exceeds the combinations of {len(fields)} fields")
    for name, v in changed.items():
        text = re.sub(rf'(<register name="{name}" op0="[^>]*?value=")0x[0-9a-f]+"',
                      rf'\g<1>0x{v:016x}"', text, count=1)
    return personalise(text, i)


CACHE_ENV = "LIBVIRT_ARM_CPU_CACHE_DIR"     # libvirt_arm_cpu.formats.modelcache
MODE_LABEL = {"cold": ", no cache", "warm": ", cache warm"}
RACY_SECONDS = 2.0          # the cache does not store a file changed more recently


def settle() -> None:
    """Let the files just written age past the cache's racy window."""
    time.sleep(RACY_SECONDS + 0.2)


VIRSH_MAX_FILE = 10 * 1024 * 1024      # virsh refuses larger files (VSH_MAX_XML_FILE)
VIRSH_API = r"""
import re, sys, libvirt
cpus = re.findall(r"<cpu>.*?</cpu>", open(sys.argv[1]).read(), re.S)
sys.stdout.write(libvirt.open("test:///default").baselineCPU(cpus, 0))
"""


def anchor_command(x86: Path, python: str) -> tuple[list[str], str]:
    """virsh cpu-baseline FILE; above virsh's 10 MiB file limit (about 3,800
    of these CPUs) the same call virsh makes, virConnectBaselineCPU on
    test:///default, from a libvirt-python process (at 1,000 CPUs it takes
    0.17 s where virsh takes 0.24 s: the stricter anchor)."""
    if x86.stat().st_size <= VIRSH_MAX_FILE:
        return VIRSH + [str(x86)], "virsh"
    return [python, "-c", VIRSH_API, str(x86)], "virConnectBaselineCPU"


def write_fleet(directory: Path, n: int, make) -> Path:
    directory.mkdir()
    for i in range(n):
        (directory / f"host{i:06d}.xml").write_text(make(i))
    return directory


def skylake_file(path: Path, n: int, distinct: bool) -> Path:
    model = re.findall(r"<feature name='([^']+)'/>", CPU_MAP.read_text())
    feats = model + [f for f in SKYLAKE_HOST_EXTRA if f not in model]
    head = ("<cpu>\n  <arch>x86_64</arch>\n  <model>Skylake-Client</model>\n"
            "  <vendor>Intel</vendor>\n  <topology sockets='1' cores='4' threads='2'/>\n")
    with path.open("w") as out:
        for i in range(n):
            out.write(head)
            for k, f in enumerate(feats):
                if not (distinct and (i >> k) & 1):
                    out.write(f"  <feature name='{f}'/>\n")
            out.write("</cpu>\n")
    return path


# -- running ----------------------------------------------------------------------

class Run:
    def __init__(self, seconds: float, rss_mib: float, rc: int, timed_out: bool) -> None:
        self.seconds, self.rss_mib, self.rc, self.timed_out = seconds, rss_mib, rc, timed_out


CHILD_ENV = dict(os.environ)       # --pythonpath adds PYTHONPATH
# ... and runs the children in "/": "python -m" puts the working directory
# first on sys.path, so from a checkout it would measure the checkout
CHILD_CWD: str | None = None


def run(argv: list[str], out: Path, timeout: float, stdin: bytes | None = None) -> Run:
    """One whole process: wall time, its own peak RSS, exit code."""
    with out.open("wb") as fout, open(str(out) + ".err", "wb") as ferr:
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else
                             subprocess.DEVNULL, stdout=fout, stderr=ferr,
                             start_new_session=True, env=CHILD_ENV, cwd=CHILD_CWD)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(p.pid, signal.SIGKILL)
        timer = threading.Timer(timeout, kill)
        timer.start()
        if stdin is not None:
            assert p.stdin is not None
            p.stdin.write(stdin)
            p.stdin.close()
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    return Run(seconds, usage.ru_maxrss / 1024, p.returncode, killed.is_set())


def check(argv: list[str], out: Path, timeout: float, ok: tuple[int, ...] = (0,)) -> Run:
    r = run(argv, out, timeout)
    if not r.timed_out and r.rc not in ok:
        err = Path(str(out) + ".err").read_text()[-2000:]
        raise SystemExit(f"{shlex.join(argv[:6])} ... exited {r.rc}:\n{err}")
    return r


def paired(ours: list[str], anchor: list[str] | None, reps: int, work: Path, timeout: float,
           budget: float, ok: tuple[int, ...] = (0,)) -> tuple[list[Run], list[Run]]:
    """Our command and its anchor back to back, *reps* times.  A first run
    of each checks that it succeeds (exit code in *ok*); it is a warm-up,
    not timed, unless it alone took more than *budget* (then it is the one
    sample) or was killed at *timeout*."""
    first = check(ours, work / "ours.out", timeout, ok)
    a_first = check(anchor, work / "anchor.out", timeout) if anchor else None
    if first.timed_out or first.seconds > budget:
        return [first], [a_first] if a_first else []
    o_runs: list[Run] = []
    a_runs: list[Run] = []
    start = time.perf_counter()
    for _ in range(reps):
        o_runs.append(check(ours, work / "ours.out", timeout, ok))
        if anchor:
            a_runs.append(check(anchor, work / "anchor.out", timeout))
        if o_runs[-1].timed_out:
            break
        used = time.perf_counter() - start
        if used + used / len(o_runs) > budget:
            break
    return o_runs, a_runs


def med(runs: list[Run]) -> float:
    return statistics.median(r.seconds for r in runs)


def timed_out(runs: list[Run]) -> bool:
    return bool(runs) and runs[-1].timed_out


def fmt_s(runs: list[Run], timeout: float) -> str:
    if timed_out(runs):
        return f">{timeout:.0f} s (killed)"
    return _s(med(runs)) if runs else "-"


def _s(seconds: float) -> str:
    """Seconds to three significant digits (0.081 s, 0.36 s, 16.2 s): a
    target of 0.08 s is met or not in the third."""
    return f"{seconds:#.3g} s" if seconds < 100 else f"{seconds:.0f} s"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, work: str, n: int, ours: list[Run], anchor: list[Run], anchor_label: str,
            timeout: float, target: float | None = None, target_label: str = "",
            note: str = "") -> None:
        """*target*: the most our median may take (seconds)."""
        o = fmt_s(ours, timeout)
        a = fmt_s(anchor, timeout) if anchor else "-"
        if ours and anchor and not timed_out(ours):
            ratio = med(ours) / med(anchor)
            r = f"{ratio:.1f}x slower" if ratio >= 1 else f"{1 / ratio:.1f}x faster"
        elif ours and anchor:
            r = f">{timeout / med(anchor):.0f}x slower"
        else:
            r = "-"
        t = "-"
        if target is not None and ours:
            met = not timed_out(ours) and med(ours) <= target
            t = f"<= {_s(target)}{target_label}: {'met' if met else 'NOT met'}"
        rss = f"{max(x.rss_mib for x in ours):.0f} MiB" if ours else "-"
        if timed_out(ours):
            rss = f">{rss}"
        self.rows.append((work, f"{n:,}", o, f"{anchor_label} {a}".strip(), r, t, rss,
                          str(len(ours)), note))
        print(" | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        head = ("work", "N", "ours", "anchor", "ratio", "target", "peak RSS (ours)", "runs",
                "note")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


LIBRARY_COMPARE = r"""
import sys
from libvirt_arm_cpu import service
try:                                   # the layout of issue 10
    from libvirt_arm_cpu.engine.compare import compare_many
    from libvirt_arm_cpu.kb import load as kb_load
    kb = kb_load.registers()
except ImportError:                    # before it
    from libvirt_arm_cpu.compare import compare_many
    from libvirt_arm_cpu import registers
    kb = registers.load()
model = service.load_inputs([sys.argv[1]], kb)[0][1]
profiles = [p for _, _, p in service.load_inputs([sys.argv[2]], kb)]
verdicts = [c.result for c in compare_many(model, profiles, kb)]
print(len(verdicts), sorted({str(v) for v in verdicts}))
"""


def source_id(args: argparse.Namespace) -> str:
    """The commit measured (and whether the package's tree differs from it)."""
    if args.pythonpath:
        return f"source tree {Path(args.pythonpath).resolve()}"
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--", "libvirt_arm_cpu", "xml"],
                           capture_output=True, text=True).stdout.strip()
    return f"commit {head}" + (" with uncommitted changes in the package" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5, help="paired runs per row (median; default 5)")
    ap.add_argument("--big", action="store_true", help="add N = 100,000")
    ap.add_argument("--sizes", default="1000,10000", help="N values (default 1000,10000)")
    ap.add_argument("--kinds-n", type=int, default=10000, help="N of the 18-kind rows")
    ap.add_argument("--rows", default="copies,distinct,compare,kinds")
    ap.add_argument("--cli", help="our command (default: .venv/bin/libvirt-arm-cpu, or "
                    "PYTHON -m libvirt_arm_cpu.cli with --pythonpath)")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--pythonpath", metavar="DIR", help="measure the package in DIR (e.g. "
                    "an export of one commit: git archive HEAD | tar -x -C DIR)")
    ap.add_argument("--fixtures", default=str(FIXTURES))
    ap.add_argument("--timeout", type=float, default=60.0, help="per run, seconds")
    ap.add_argument("--row-budget", type=float, default=15.0,
                    help="stop repeating a row after this many seconds")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    ap.add_argument("--cache", choices=("both", "cold", "warm"), default="both",
                    help="cpu-baseline rows without the profile cache (cold), with it filled "
                         "by the untimed first run (warm), or both (default)")
    args = ap.parse_args()
    if args.pythonpath:
        global CHILD_CWD
        CHILD_ENV["PYTHONPATH"] = str(Path(args.pythonpath).resolve())
        CHILD_CWD = "/"
    args.fixtures = str(Path(args.fixtures).resolve())
    if args.keep:
        args.keep = str(Path(args.keep).resolve())
    cli = (shlex.split(args.cli) if args.cli else
           [args.python, "-m", "libvirt_arm_cpu.cli"] if args.pythonpath else
           [str(ROOT / ".venv" / "bin" / "libvirt-arm-cpu")])
    sizes = [int(s) for s in args.sizes.split(",")] + ([100000] if args.big else [])
    rows = set(args.rows.split(","))
    if shutil.which("virsh") is None:
        raise SystemExit("virsh not found (contrib/setup.sh installs libvirt-clients)")
    fixtures = {p.name: p.read_text() for p in sorted(Path(args.fixtures).glob("*.xml"))}
    base = fixtures[N1[0]]
    fields = lowerable_fields(cli, base)
    virsh_version = subprocess.run(["virsh", "--version"], capture_output=True,
                                   text=True).stdout.strip()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {platform.node()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"Python {platform.python_version()}, virsh {virsh_version}, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"# ours: {shlex.join(cli)}" + (f" (PYTHONPATH={CHILD_ENV['PYTHONPATH']})"
                                           if args.pythonpath else "") + f"; {source_id(args)}")
    print(f"# distinct shape varies {len(fields)} fields: "
          + ", ".join(f"{r.removeprefix('ID_AA64').removesuffix('_EL1')}[{lsb}]"
                      for r, lsb, _, _ in fields[:12]) + ", ...")
    print(f"# {args.n} paired runs per row (median), row budget {args.row_budget:.0f} s, "
          f"timeout {args.timeout:.0f} s", flush=True)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lac-fleet."))
    tmp.mkdir(parents=True, exist_ok=True)
    table = Table()
    # cold: every profile read (the cache off); warm: the untimed first run
    # of each row fills the cache (in this run's own directory), the timed
    # runs answer from it.  A package without the cache ignores the variable.
    modes = ["cold", "warm"] if args.cache == "both" else [args.cache]
    cache_env = {"cold": ["env", f"{CACHE_ENV}=none"],
                 "warm": ["env", f"{CACHE_ENV}={tmp / 'cache'}"]}

    def prime(d: Path, command: tuple[str, ...] = ("cpu-baseline",)) -> None:
        """Fill the cache for the profiles of *d* (untimed) by *command*,
        once they are old enough to be stored."""
        settle()
        check(cache_env["warm"] + cli + [*command, str(d)], tmp / "prime.out",
              args.timeout, ok=(0, 1))

    t_all = time.perf_counter()
    to, budget, reps = args.timeout, args.row_budget, args.n
    try:
        model = tmp / "model.xml"
        check(cli + ["cpu-baseline", "-o", str(model)]
              + [str(Path(args.fixtures) / f) for f in N1], tmp / "model.out", to)
        two = [fixtures[f] for f in N1]
        shapes = {
            "copies": lambda i: personalise(two[i % 2], i),
            "distinct": lambda i: distinct_variant(base, fields, i),
        }
        plain: dict[tuple[str, int, str], tuple[list[Run], list[Run]]] = {}
        per_process: dict[str, list[Run]] = {}
        for n in sizes:
            for shape in ("copies", "distinct"):
                if shape not in rows and "compare" not in rows:
                    continue
                d = write_fleet(tmp / f"{shape}-{n}", n, shapes[shape])
                x86 = skylake_file(tmp / f"x86-{shape}-{n}.xml", n, shape == "distinct")
                anchor, alabel = anchor_command(x86, args.python)
                for mode in modes:
                    if mode == "warm":
                        prime(d)
                    o, a = paired(cache_env[mode] + cli + ["cpu-baseline", str(d)], anchor,
                                  reps, tmp, to, budget)
                    plain[shape, n, mode] = o, a
                    if shape in rows:
                        table.add(f"cpu-baseline DIR, {shape}{MODE_LABEL[mode]}", n, o, a,
                                  alabel, to, med(a) / 2.5, " (anchor/2.5)")
                o, a = plain[shape, n, modes[0]]
                if "compare" in rows:
                    fleet_cmd = cli + ["cpu-compare", str(model), str(d)]
                    try:
                        for mode in modes:
                            if mode == "warm":
                                prime(d, ("cpu-compare", str(model)))
                            c, a2 = paired(cache_env[mode] + fleet_cmd, anchor, reps, tmp, to,
                                           budget, ok=(0, 1))
                            table.add(f"cpu-compare MODEL DIR, {shape}{MODE_LABEL[mode]}", n,
                                      c, a2, alabel, to, med(a2) / 2.5, " (anchor/2.5)")
                    except SystemExit as err:      # a package whose cpu-compare takes one host
                        print(f"# cpu-compare MODEL DIR not measured: {err}", flush=True)
                        if shape not in per_process:       # the same for every N
                            one = d / "host000001.xml"
                            per_process[shape], _ = paired(
                                cli + ["cpu-compare", str(model), str(one)], None, reps, tmp,
                                to, budget, ok=(0, 1))
                        c = per_process[shape]
                        per = med(c)
                        table.add(f"cpu-compare MODEL HOST, {shape}: {per * 1000:.0f} ms x N",
                                  n, [Run(x.seconds * n, x.rss_mib, 0, False) for x in c], a,
                                  alabel, to, med(a) / 2.5, " (anchor/2.5)",
                                  "extrapolated: the CLI compares one host per process")
                    if timed_out(o):
                        table.add(f"library compare_many, {shape} (one process)", n, [], a,
                                  alabel, to, note="not run: reading these "
                                  "profiles alone exceeds the timeout (baseline row)")
                    else:
                        lib = [args.python, "-c", LIBRARY_COMPARE, str(model), str(d)]
                        try:
                            c, a2 = paired(lib, anchor, reps, tmp, to, budget)
                        except SystemExit as err:
                            print(f"# library compare_many not measured: {err}", flush=True)
                        else:
                            table.add(f"library compare_many, {shape} (one process)", n, c,
                                      a2, alabel, to, med(a2) / 2.5, " (anchor/2.5)",
                                      "no cache")
                shutil.rmtree(d)
                x86.unlink()
        if "kinds" in rows:
            n = args.kinds_n
            kinds = list(fixtures.values())
            x86 = skylake_file(tmp / f"x86-copies-{n}.xml", n, False)
            anchor, alabel = anchor_command(x86, args.python)
            d = write_fleet(tmp / f"kinds-{n}", n, lambda i: personalise(kinds[i % len(kinds)], i))
            for mode in modes:
                if ("copies", n, mode) not in plain:
                    c = write_fleet(tmp / f"copies-{n}", n, shapes["copies"])
                    if mode == "warm":
                        prime(c)
                    plain["copies", n, mode] = paired(
                        cache_env[mode] + cli + ["cpu-baseline", str(c)], anchor, reps, tmp,
                        to, budget)
                    shutil.rmtree(c)
                    table.add(f"cpu-baseline DIR, copies (reference){MODE_LABEL[mode]}", n,
                              *plain["copies", n, mode], alabel, to)
                ref = med(plain["copies", n, mode][0])
                if mode == "warm":
                    prime(d)
                for opt in ("--exclude-incompatible", "--pools"):
                    o, a = paired(cache_env[mode] + cli + ["cpu-baseline", opt, str(d)], anchor,
                                  reps, tmp, to, budget)
                    table.add(f"cpu-baseline {opt} DIR, {len(kinds)} kinds{MODE_LABEL[mode]}",
                              n, o, a, alabel, to, 2 * ref,
                              " (2x our plain copies baseline)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table.markdown())
    print(f"\n# whole run {time.perf_counter() - t_all:.0f} s; load average now "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
