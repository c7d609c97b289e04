"""collect: profiles from many hosts over a real SSH server on this machine
(a session's own sshd on a free port, its own keys), and host CPUs through
real libvirt connections.

Each SSH "host" is an alias of 127.0.0.1 in the test's ssh_config; the
remote side runs this checkout's real 'libvirt-arm-cpu collect --local'
with a settings file that names a captured profile (tests/data/hosts/, as
the hook does with a profile made elsewhere: refresh = never), chosen by
the alias (ssh SetEnv LAC_HOST).  This machine is x86_64, so the same
command without that settings file is a real "not aarch64" host.
contrib/test.sh installs openssh-server.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from libvirt_arm_cpu import inventory as inv
from libvirt_arm_cpu.kb import load as kb_load

from .conftest import ROOT
from .libvirtd import libvirt_conn_fixture  # noqa: F401  (the libvirt_conn fixture)

HOSTS = ROOT / "tests" / "data" / "hosts"
N1_612 = HOSTS / "neoverse-n1-qemu7.2-linux6.12.xml"
N1_73 = HOSTS / "neoverse-n1-qemu7.2-linux7.3.xml"
V1 = HOSTS / "neoverse-v1-qemu10.0-linux6.12.xml"
CLI = Path(sys.executable).parent / "libvirt-arm-cpu"
SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """This session's sshd and the client side: an ssh_config where each
    alias is a host, and the remote command that prints its profile."""

    def __init__(self, root: Path, port: int, closed_port: int) -> None:
        self.root, self.port = root, port
        self.config = root / "ssh_config"
        self.aliases: list[str] = []
        self.closed_port = closed_port

    def host(self, alias: str, profile: Path | None) -> str:
        """An alias whose 'collect --local' prints *profile* (None: no
        settings file, so this x86 machine answers for itself)."""
        if profile is not None:
            (self.root / f"{alias}.conf").write_text(
                f"[hook]\nprofile = {profile}\nrefresh = never\n")
        else:
            (self.root / f"{alias}.conf").unlink(missing_ok=True)
        if alias not in self.aliases:
            self.aliases.append(alias)
            with open(self.config, "a") as f:      # after 'Host *', which does not set it
                f.write(f"Host {alias}\n  SetEnv LAC_HOST={alias}\n")
        return alias

    def command(self) -> str:
        conf = f"{self.root}/$LAC_HOST.conf"
        return (f"if [ -e {conf} ]; then export LIBVIRT_ARM_CPU_CONFIG={conf}; fi; "
                f"exec {CLI} collect --local")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[Sshd]:
    assert os.path.exists(SSHD), "openssh-server is missing: run sh contrib/test.sh (it installs it)"
    root = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)],
                       check=True, timeout=30)
    shutil.copy(root / "id.pub", root / "authorized_keys")
    port, closed = _free_port(), _free_port()
    user = getpass.getuser()
    (root / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers {user}
AcceptEnv LAC_HOST
MaxStartups 64
MaxSessions 64
LogLevel ERROR
""")
    host_key = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (root / "ssh_config").write_text(f"""\
Host lac-unreachable
  Port {closed}
Host *
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {root}/id
  IdentitiesOnly yes
  UserKnownHostsFile {root}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  HostKeyAlias [127.0.0.1]:{port}
  LogLevel ERROR
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)    # its privilege separation
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(root / "sshd.log", "wb"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("sshd did not start: "
                                         + (root / "sshd.log").read_text()) from None
                time.sleep(0.05)
        yield Sshd(root, port, closed)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _collect(run, sshd: Sshd, inventory: Path, *argv: str, command: str | None = None):
    return run("collect", "--inventory", str(inventory), "--ssh-config", str(sshd.config),
               "--remote-command", command or sshd.command(), "--timeout", "30", *argv)


def test_hosts_in_parallel_and_their_history(run, sshd, tmp_path):
    """Two hosts at once; the same profile again adds no history; a kernel
    upgrade adds a version that says what changed and what it means for
    the guests started before; the folder of current profiles is what
    cpu-baseline reads."""
    a = sshd.host("lac-n1", N1_612)
    b = sshd.host("lac-v1", V1)
    r = _collect(run, sshd, tmp_path, a, b)
    assert r.code == 0, r.err
    assert re.search(r"^lac-n1 +ssh +new: neoverse-n1-qemu7.2-linux6.12: Linux 6\.12", r.out, re.M)
    assert re.search(r"^lac-v1 +ssh +new: ", r.out, re.M)
    assert "collect: 2 hosts: 2 collected" in r.err
    assert sorted(os.listdir(tmp_path / "profiles")) == ["lac-n1.xml", "lac-v1.xml"]

    r = _collect(run, sshd, tmp_path, a, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["hosts"][0]["status"] == "unchanged"
    assert len(os.listdir(tmp_path / "hosts" / "lac-n1" / "history")) == 1

    sshd.host("lac-n1", N1_73)
    r = _collect(run, sshd, tmp_path, a)
    assert r.code == 0, r.err
    assert re.search(r"^lac-n1 +ssh +changed: .*kernel: 6\.12\S* -> 7\.3", r.out, re.M), r.out

    r = run("inventory", "history", "lac-n1", "--inventory", str(tmp_path))
    assert r.code == 0, r.err
    assert "first version" in r.out
    assert re.search(r"^  kernel: 6\.12\S* -> 7\.3", r.out, re.M)
    assert "host-passthrough guests started before this change can NOT run here" in r.out

    r = run("diff", str(tmp_path / "profiles"))          # each labelled by its host's name
    assert r.code == 0, r.err
    assert r.out.split()[:3] == ["field", "lac-n1", "lac-v1"]


def test_each_failure_is_one_line_and_the_others_are_collected(run, sshd, tmp_path):
    good = sshd.host("lac-good", N1_612)
    x86 = sshd.host("lac-x86", None)
    (tmp_path / "hosts.txt").write_text(f"# the fleet\n{good}\n{x86}   # this machine\n"
                                        "lac-unreachable\n")
    t0 = time.monotonic()
    r = _collect(run, sshd, tmp_path / "inv", "--hosts-file", str(tmp_path / "hosts.txt"))
    assert r.code == 1
    assert time.monotonic() - t0 < 15
    failures = [ln for ln in r.err.splitlines() if ": failed (" in ln]
    assert len(failures) == 2, r.err
    assert re.search(r"lac-x86: failed \(not-aarch64\): not an aarch64 host: this is an x86_64 "
                     r"machine", r.err)
    assert re.search(r"lac-unreachable: failed \(unreachable\): ssh failed: .*Connection refused",
                     r.err)
    assert re.search(r"^lac-good +ssh +new", r.out, re.M)
    assert "collect: 3 hosts: 1 collected, 2 failed" in r.err
    r = run("inventory", "list", "--inventory", str(tmp_path / "inv"), "--json")
    rows = {h["host"]: h for h in json.loads(r.out)["hosts"]}
    assert rows["lac-good"]["collected"] == "profile"
    assert rows["lac-x86"]["last"]["ssh"]["reason"] == "not-aarch64"


@pytest.mark.parametrize("case, command, reason, message", [
    ("missing", "libvirt-arm-cpu-not-installed collect --local", "command-missing",
     "'libvirt-arm-cpu-not-installed' is not installed there"),
    ("garbage", "echo 'Welcome to host kvm9!'; echo; uname -a", "not-a-profile",
     "printed 'Welcome to host kvm9!...', not a host profile"),
    ("cpu-model", "{cli} cpu-baseline --no-cache {n1}", "not-a-profile",
     "printed a CPU model, not a host profile"),
    ("entities", "printf '<!DOCTYPE h [<!ENTITY a \"aaaa\">]><hostprofile "
     "xmlns=\"urn:x-libvirt-arm-cpu:host:1\">&a;</hostprofile>'", "not-a-profile",
     "DOCTYPE"),
    ("x86-profile", "sed 's/machine=\"aarch64\"/machine=\"x86_64\"/' {n1}", "not-aarch64",
     "profile of a x86_64 machine, not aarch64"),
    ("bad-value", "sed '0,/value=\"0x[0-9a-f]*\"/s//value=\"0xZZ\"/' {n1}", "not-a-profile",
     "not a valid host profile"),
    ("endless", "head -c 9000000 /dev/zero", "not-a-profile", "printed more than"),
    ("fails", "echo 'libvirt-arm-cpu: error: /dev/kvm: Permission denied' >&2; exit 5",
     "remote-error", "failed there (exit 5): /dev/kvm: Permission denied"),
    ("slow", "sleep 5", "timeout", "no answer in 1 s"),
])
def test_what_a_bad_host_prints_is_refused(run, sshd, tmp_path, case, command, reason, message):
    host = sshd.host(f"lac-{case}", None)
    r = _collect(run, sshd, tmp_path, host, "--timeout", "1" if case == "slow" else "30",
                 command=command.format(cli=CLI, n1=N1_612))
    assert r.code == 1, r.err
    line = [ln for ln in r.err.splitlines() if "failed" in ln][0]
    assert line.startswith(f"collect: {host}: failed ({reason}): "), line
    assert message in line, line
    assert not (tmp_path / "profiles").exists()
    assert inv.Inventory(str(tmp_path)).status(host)["ssh"]["reason"] == reason


def test_a_host_name_is_never_an_ssh_option_or_a_path(run, tmp_path):
    for bad in ("-oProxyCommand=touch /tmp/x", "../etc", "a/b", "user@", "ssh://h:22"):
        r = run("collect", "--inventory", str(tmp_path), "--", bad)
        assert r.code == 2, bad
        assert "is not a host" in r.err
    r = run("collect", "--inventory", str(tmp_path))
    assert r.code == 2 and "no hosts to collect" in r.err
    (tmp_path / "hosts.txt").write_text("kvm1\n\n-oProxyCommand=x\n")
    r = run("collect", "--inventory", str(tmp_path))
    assert r.code == 1 and "hosts.txt:3: " in r.err
    assert not (tmp_path / "hosts").exists()


def test_local_prints_this_hosts_profile(tmp_path):
    """What each host runs: the settings' profile as XML, or, on this x86
    machine without one, the helper's 'not aarch64' (exit 3)."""
    conf = tmp_path / "conf"
    conf.write_text(f"[hook]\nprofile = {N1_612}\nrefresh = never\n")
    env = dict(os.environ, LIBVIRT_ARM_CPU_CONFIG=str(conf))
    p = subprocess.run([str(CLI), "collect", "--local"], capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    profile = inv.parse_collected(p.stdout, "local", kb_load.registers())
    assert profile.hostname == "neoverse-n1-qemu7.2-linux6.12"
    env["LIBVIRT_ARM_CPU_CONFIG"] = str(tmp_path / "none")
    p = subprocess.run([str(CLI), "collect", "--local"], capture_output=True, env=env, timeout=60)
    assert p.returncode == 3 and b"x86_64" in p.stderr


# -- through libvirt -------------------------------------------------------------------

AARCH64_CPU = ("<cpu><arch>aarch64</arch><model>Neoverse-N1</model><vendor>ARM</vendor>"
               + "".join(f"<feature name='{f}'/>" for f in
                         ("fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
                          "asimdrdm", "lrcpc", "dcpop", "asimddp")) + "</cpu>")


class Aarch64TestDriver(libvirt.virConnect):
    """libvirt's test driver (a real connection) whose host CPU is an
    aarch64 one: the driver itself always reports an i686 host."""

    cpu = AARCH64_CPU

    def __init__(self, uri: str) -> None:
        import libvirtmod

        super().__init__(_obj=libvirtmod.virConnectOpenReadOnly(uri))

    def getCapabilities(self) -> str:
        return re.sub(r"<cpu>.*?</cpu>", self.cpu, super().getCapabilities(), count=1,
                      flags=re.S)


def test_a_libvirt_host_that_is_not_aarch64_is_refused(run, tmp_path, libvirt_conn):
    r = run("collect", "--inventory", str(tmp_path), "--libvirt", "qemu:///system",
            "--libvirt", "test:///default", "--libvirt", "qemu+ssh://lac-nowhere.invalid/system",
            "--timeout", "20")
    assert r.code == 1
    err = r.err
    assert "qemu:///system: failed (not-aarch64): not an aarch64 host: libvirt at " \
           "qemu:///system reports an x86_64 host CPU" in err.replace("collect: ", "")
    assert "failed (not-aarch64): not an aarch64 host: libvirt at test:///default reports " \
           "an i686 host CPU" in err
    assert re.search(r"lac-nowhere.invalid: failed \(unreachable\): cannot connect to libvirt",
                     err)
    assert "libvirt: " not in err        # libvirt's own error printing is silenced


def test_a_libvirt_host_cpu_is_recorded_as_less_precise(run, tmp_path):
    store = inv.Inventory(str(tmp_path))
    for cpu in (AARCH64_CPU, AARCH64_CPU, AARCH64_CPU.replace("<feature name='asimddp'/>", "")):
        Aarch64TestDriver.cpu = cpu
        name, data, hostcpu = inv.fetch_libvirt("test:///default", 20, Aarch64TestDriver)
        with store.locked():
            out = store.record_host_cpu("kvm-lv", data, hostcpu, "test:///default")
    Aarch64TestDriver.cpu = AARCH64_CPU
    assert out.status == "changed" and out.changes == ["features lost (1): asimddp"]
    assert len(store.history("kvm-lv")) == 2
    r = run("inventory", "show", "kvm-lv", "--inventory", str(tmp_path))
    assert r.code == 0, r.err
    assert "libvirt host CPU only" in r.out and "less precise" in r.out
    assert "Neoverse-N1" in r.out
    r = run("inventory", "list", "--inventory", str(tmp_path))
    assert "libvirt host CPU Neoverse-N1 (less precise); 2 version(s)" in r.out
    # what it keeps is what cpu-compare takes as a host
    r = run("cpu-compare", str(N1_612), store.capabilities_path("kvm-lv"))
    assert r.code in (0, 1), r.err
    assert not (tmp_path / "profiles").exists()
