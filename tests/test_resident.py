"""The resident checker (libvirt-arm-cpu hook serve, host/resident.py): the
hook's answers are the same with it as without it, and the hook checks by
itself whenever the checker cannot answer for it.  Real processes: the
installed hook script, run as libvirtd runs it, and the installed command."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from libvirt_arm_cpu.host.hostcache import COMPACT_SUFFIX
from libvirt_arm_cpu.host.resident import EXIT_RESTART

from .domains import N1_73, custom_cpu, with_sysreg
from . import test_hook
from .test_hook import LIBVIRT_ENV, _host_with_one_more_feature

bed = test_hook.bed         # the fixture: an installed hook, a saved model, its settings

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "libvirt-arm-cpu"


def start_checker(argv: list[str], log: Path, env: dict[str, str] | None = None,
                  **popen) -> subprocess.Popen:
    """A checker started as a service manager would, once it says it is ready."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"), env=env, cwd="/", **popen)
    deadline = time.monotonic() + 60
    while "checker ready on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the checker did not start: {log.read_text()}")
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def answers(log: Path) -> list[str]:
    """What the checker said of each request: "'NAME' (OP): KIND"."""
    return [line.split("checker: domain ", 1)[1] for line in log.read_text().splitlines()
            if "checker: domain " in line]


def forget(profile: Path) -> None:
    """Empty the hook's memory beside *profile* (so it must check)."""
    Path(str(profile) + ".verdicts").unlink(missing_ok=True)


def test_the_hook_answers_the_same_through_the_checker(bed):
    sock = bed.tmp / "run" / "checker.sock"
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    broken = xml.replace(b"<arm:register", b"<arm:register broken", 1)
    n1 = with_sysreg(N1_73, bed.tmp / "n1.xml", "host-n1")
    _host_with_one_more_feature(bed.host_a, bed.tmp / "c.xml", "host-c")
    c = bed.tmp / "c.xml"
    bed.settings(bed.host_a, checker=str(sock))
    log = bed.tmp / "checker.log"
    copy = Path(str(bed.host_a) + COMPACT_SUFFIX)
    copy.unlink(missing_ok=True)
    checker = start_checker([str(CLI), "hook", "serve", "--config", str(bed.conf)], log)
    assert copy.exists()        # made before it listens (as after an upgrade)
    assert sock.stat().st_mode & 0o777 == 0o600
    assert (sock.parent.stat().st_mode & 0o777) == 0o700
    # (profile, operation, XML, what the checker answers, the hook's exit
    # status, does it print XML); the checker was started with host-a's
    # settings: it checks with each hook's own
    cases = [(bed.host_a, "prepare", xml, "ok", 0, False),          # allowed
             (n1, "prepare", xml, "ok", 1, False),                  # refused, fields named
             (c, "migrate", xml, "ok", 0, True),                    # rewritten for host-c
             (c, "restore", xml, "ok", 0, True),
             (n1, "reconnect", xml, "ok", 0, False),                # logged, never refused
             (bed.host_a, "prepare", broken, "error", 1, False),    # one line naming it
             (bed.host_a, "reconnect", broken, "error", 0, False)]
    try:
        for i, (profile, op, data, kind, status, prints) in enumerate(cases):
            name = f"lac-test-r{i}"
            bed.settings(profile, checker="none")
            forget(profile)
            alone = bed.call(name, op, "begin", "-", stdin=data)
            bed.settings(profile, checker=str(sock))
            forget(profile)
            asked = bed.call(name, op, "begin", "-", stdin=data)
            assert (asked.returncode, asked.stdout, asked.stderr) == \
                (alone.returncode, alone.stdout, alone.stderr), (op, profile.name)
            assert (asked.returncode, asked.stdout.startswith(b"<domain")) == (status, prints), \
                (op, profile.name, asked.stderr)
            assert answers(log)[-1] == f"'{name}' ({op}): {kind}", log.read_text()
        assert len(answers(log)) == len(cases)
        # the hook remembers what the checker allowed: it does not ask again
        bed.settings(bed.host_a, checker=str(sock))
        forget(bed.host_a)
        first, again = (bed.call("lac-test-r7", "prepare", "begin", "-", stdin=xml)
                        for _ in range(2))
        assert b"superset" in first.stderr and b"(as before)" in again.stderr, again.stderr
        assert len(answers(log)) == len(cases) + 1
        # what it saves the hook: the engine, its value types and dataclasses
        for checker_path, loads_engine in (("none", True), (str(sock), False)):
            bed.settings(bed.host_a, checker=checker_path)
            forget(bed.host_a)
            p = subprocess.run([sys.executable, "-S", "-X", "importtime", str(bed.hook),
                                "lac-test-r8", "prepare", "begin", "-"], input=xml,
                               capture_output=True, env=LIBVIRT_ENV, cwd="/", timeout=120)
            assert p.returncode == 0 and b"superset" in p.stderr, p.stderr
            loaded = {line.rsplit("|", 1)[1].strip() for line in p.stderr.decode().splitlines()
                      if line.startswith("import time:") and "|" in line}
            engine = {"dataclasses", "libvirt_arm_cpu.model", "libvirt_arm_cpu.engine.validate"}
            assert (engine <= loaded) == loads_engine and (engine & loaded == set()) != \
                loads_engine, (checker_path, sorted(loaded))
    finally:
        assert stop(checker) == 0, log.read_text()
    assert not sock.exists()          # it removes its socket when stopped


@pytest.fixture
def open_dir():
    """A folder every user may pass through (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="lac-checker."))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def test_the_hook_checks_by_itself_when_the_checker_cannot_answer(bed, open_dir):
    sock = open_dir / "checker.sock"
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    bed.settings(bed.host_a, checker="none")
    alone = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
    assert alone.returncode == 0 and b"superset" in alone.stderr

    def asked():
        forget(bed.host_a)
        bed.settings(bed.host_a, checker=str(sock))
        p = bed.call("lac-test-g1", "prepare", "begin", "-", stdin=xml)
        assert (p.returncode, p.stdout, p.stderr) == (0, b"", alone.stderr), p.stderr
        return p

    asked()                                    # none has run: no socket
    log = bed.tmp / "checker.log"
    argv = [str(CLI), "hook", "serve", "--config", str(bed.conf)]
    checker = start_checker(argv, log)
    try:
        # a second one on the same socket: one line, exit 1, the first unharmed
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and second.stderr.strip().splitlines() == [
            f"libvirt-arm-cpu: error: {sock}: a checker already answers there"], second.stderr
        # a request from another user is not answered (the socket opened up to let it in)
        os.chmod(sock, 0o666)
        other = subprocess.run(
            [sys.executable, "-S", "-c",
             "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "print(len(s.recv(100)))", str(sock)],
            capture_output=True, text=True, timeout=60, user=65534)
        assert (other.returncode, other.stdout) == (0, "0\n"), other.stderr
        assert "a request from another user, not answered" in log.read_text()
        os.chmod(sock, 0o600)
        asked()
        assert answers(log) == ["'lac-test-g1' (prepare): ok"]
    finally:
        checker.send_signal(signal.SIGKILL)     # dies: its socket stays behind
        checker.wait(timeout=60)
    assert sock.exists()
    asked()                                    # nobody answers on it: checked here
    # a new checker replaces the dead one's socket
    checker = start_checker(argv, bed.tmp / "checker2.log")
    try:
        asked()
        assert answers(bed.tmp / "checker2.log") == ["'lac-test-g1' (prepare): ok"]
    finally:
        assert stop(checker) == 0
    # a path that is not a socket is named, not removed
    sock.write_text("not a socket")
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip() == (
        f"libvirt-arm-cpu: error: {sock}: exists and is not a socket; remove it or name "
        f"another path ([hook] checker)"), p.stderr
    assert sock.read_text() == "not a socket"
    asked()


def test_a_checker_of_other_code_leaves_the_check_to_the_hook(bed, tmp_path):
    """Another install's checker is not asked; an upgrade under a running
    checker makes it step aside and exit for its service manager."""
    tree = tmp_path / "tree"
    for part in ("libvirt_arm_cpu", "xml", "hooks"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    # -S, and not from this checkout (-m puts the working directory first):
    # this checkout, an editable install, must not shadow the copy
    env = {**LIBVIRT_ENV, "PYTHONPATH": str(tree)}
    copy_hooks = tmp_path / "copy-hooks"
    r = subprocess.run([sys.executable, "-S", "-m", "libvirt_arm_cpu.cli", "hook", "install",
                        "--hooks-dir", str(copy_hooks), "--config", str(bed.conf),
                        "--no-reload"], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert r.returncode == 0, r.stderr
    copy_hook = copy_hooks / "qemu.d" / "50-libvirt-arm-cpu"
    assert f"PACKAGE_DIR = {str(tree)!r}" in copy_hook.read_text()
    sock = bed.tmp / "run" / "checker.sock"
    xml = bed.translate(custom_cpu(bed.model, ("disable", "sve2")))
    bed.settings(bed.host_a, checker=str(sock))
    log = bed.tmp / "checker.log"
    checker = start_checker([sys.executable, "-S", "-m", "libvirt_arm_cpu.cli", "hook", "serve",
                             "--config", str(bed.conf)], log, env=env)
    try:
        def call(hook: Path) -> subprocess.CompletedProcess:
            forget(bed.host_a)
            p = subprocess.run([str(hook), "lac-test-g1", "prepare", "begin", "-"], input=xml,
                               capture_output=True, env=LIBVIRT_ENV, cwd="/", timeout=120)
            assert p.returncode == 0 and b"CPU checked on host host-a: superset" in p.stderr, \
                p.stderr
            return p

        call(bed.hook)             # this checkout's hook: the copy's checker is not its code
        assert answers(log) == ["'lac-test-g1' (prepare): other"]
        call(copy_hook)
        assert answers(log)[-1] == "'lac-test-g1' (prepare): ok"
        # an upgrade, of the version too: the hook's request names another
        # version, and the checker must still see its own code is gone
        init = tree / "libvirt_arm_cpu" / "__init__.py"
        text = init.read_text()
        init.write_text(re.sub(r'__version__ = "([^"]+)"', r'__version__ = "\1.post1"', text))
        assert init.read_text() != text
        call(copy_hook)
        assert answers(log)[-1] == "'lac-test-g1' (prepare): stale"
        assert checker.wait(timeout=60) == EXIT_RESTART
        assert "this package's code changed; exiting" in log.read_text()
        assert not sock.exists()
        call(copy_hook)            # and with none running
    finally:
        if checker.poll() is None:
            checker.kill()
            checker.wait()


def test_serve_needs_a_socket_path(tmp_path, run):
    conf = tmp_path / "lac.conf"
    conf.write_text("[hook]\nchecker = none\n")
    r = run("hook", "serve", "--config", str(conf))
    assert r.code == 2 and r.err.strip() == (
        f"libvirt-arm-cpu: error: {conf}: [hook] checker = none: name a socket with --socket")


def test_the_shipped_service_runs_the_checker_where_the_hook_looks():
    import configparser
    from libvirt_arm_cpu.settings import DEFAULT_CHECKER
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(ROOT / "contrib" / "systemd" / "libvirt-arm-cpu-checker.service")
    prog, *argv = unit["Service"]["ExecStart"].split()
    assert Path(prog).name == "libvirt-arm-cpu" and argv == ["hook", "serve"]
    # systemd makes the socket's folder (root's alone) and restarts it after an upgrade
    assert "/run/" + unit["Service"]["RuntimeDirectory"] == os.path.dirname(DEFAULT_CHECKER)
    assert unit["Service"]["RuntimeDirectoryMode"] == "0700"
    assert unit["Service"]["Restart"] == "always"
