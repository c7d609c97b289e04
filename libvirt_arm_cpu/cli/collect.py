"""``collect``: gather host profiles from many hosts into the inventory
(:mod:`libvirt_arm_cpu.inventory`), over SSH or through remote libvirt
connections, several hosts at a time; ``collect --local`` is what each host
runs: it prints its own profile."""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

from libvirt_arm_cpu import inventory as inv
from libvirt_arm_cpu import settings
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.errors import EXIT_DATA, Error, UsageError
from libvirt_arm_cpu.formats.profile import to_xml
from libvirt_arm_cpu.host.hostcache import configured_profile
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.xmlsafe import shown

_SHOWN_CHANGES = 3


class CollectCommand(Command):
    name = "collect"
    help = "gather host profiles from many hosts (SSH or remote libvirt) into the inventory"
    description = f"""\
Collect each host's profile into the inventory ({inv.DEFAULT_DIR},
--inventory DIR or ${inv.ENV_DIR}), several hosts at a time.

Over SSH (HOST: [user@]host), it runs '{inv.REMOTE_COMMAND}' there,
which prints the host's profile (the one the hook uses: probed again when
stale, so run it as root or give --remote-command 'sudo -n ...').  ssh runs
with BatchMode (no password or host-key prompts): keys, ports and users come
from ~/.ssh/config, --ssh-config or --ssh-option.

Through libvirt (--libvirt URI, e.g. qemu+ssh://root@host/system), for a
host without libvirt-arm-cpu: libvirt shows no ID registers, only the host
CPU's model and hwcap names, so it is kept as such (hosts/HOST/
capabilities.xml, for 'cpu-compare'), less precise than a profile and
never in the profiles cpu-baseline reads.

A host whose profile did not change adds no history.  Progress and one line
per failed host (unreachable, timeout, command missing, not aarch64, not a
profile) go to stderr; the results to stdout."""
    epilog = f"""\
examples:
  libvirt-arm-cpu collect kvm1 kvm2 root@kvm3 --inventory /srv/fleet
  libvirt-arm-cpu collect --inventory /srv/fleet          # the hosts in /srv/fleet/hosts.txt
  libvirt-arm-cpu collect --libvirt qemu+ssh://root@kvm4/system
  libvirt-arm-cpu collect kvm1 --remote-command 'sudo -n libvirt-arm-cpu collect --local'
  libvirt-arm-cpu cpu-baseline /srv/fleet/profiles/ --save   # the fleet's model
  libvirt-arm-cpu collect --local > host.xml               # what each host runs

exit codes: 0 every host collected; 1 some host failed (the others are
recorded); 2 bad usage; with --local, those of 'libvirt-arm-cpu host'
(3 not aarch64...)

environment: {inv.ENV_DIR}  the inventory folder"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("hosts", nargs="*", metavar="HOST",
                            help="[user@]host to collect over SSH")
        parser.add_argument("--libvirt", action="append", default=[], metavar="URI",
                            help="collect the host CPU of this libvirt connection (repeatable)")
        parser.add_argument("--hosts-file", metavar="FILE",
                            help="hosts, one a line ('#' comments, libvirt URIs too; default "
                                 "DIR/hosts.txt when no host is named)")
        parser.add_argument("--inventory", metavar="DIR",
                            help=f"the inventory folder (default ${inv.ENV_DIR} or "
                                 f"{inv.DEFAULT_DIR})")
        parser.add_argument("--jobs", "-j", type=int, default=8, metavar="N",
                            help="hosts collected at once (default 8)")
        parser.add_argument("--timeout", type=float, default=90, metavar="SECONDS",
                            help="time a host may take, connecting and probing (default 90)")
        parser.add_argument("--ssh-config", metavar="FILE", help="ssh's -F FILE")
        parser.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                            help="an ssh -o option, e.g. --ssh-option Port=2222 (repeatable)")
        parser.add_argument("--remote-command", default=inv.REMOTE_COMMAND, metavar="CMD",
                            help=f"what prints the profile on each host (default "
                                 f"'{inv.REMOTE_COMMAND}')")
        parser.add_argument("--local", action="store_true",
                            help="print this host's profile (XML) on stdout: what collect runs "
                                 "on each host")
        parser.add_argument("--quiet", "-q", action="store_true",
                            help="no progress lines (failures are still reported)")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        if args.local:
            if args.hosts or args.libvirt or args.hosts_file:
                raise UsageError("--local prints this host's profile: no hosts with it")
            sys.stdout.buffer.write(to_xml(configured_profile(settings.load())))
            sys.stdout.buffer.flush()
            return 0
        if args.jobs < 1:
            raise UsageError(f"--jobs {args.jobs}: at least 1")
        if not 0 < args.timeout <= 3600:
            raise UsageError(f"--timeout {args.timeout:g}: between 0 and 3600 seconds")
        store = inv.Inventory(args.inventory)
        hosts, uris = list(args.hosts), list(args.libvirt)
        hosts_file = args.hosts_file
        if hosts_file is None and not hosts and not uris:
            hosts_file = store.hosts_file
            if not os.path.exists(hosts_file):
                raise UsageError(f"no hosts to collect: name them, give --libvirt URI or "
                                 f"--hosts-file, or list them in {hosts_file}")
        if hosts_file is not None:
            more, more_uris = inv.read_hosts_file(hosts_file)
            hosts += more
            uris += more_uris
        hosts = list(dict.fromkeys(hosts))
        for dest in hosts:
            inv.host_name(dest)                # every name checked before anything runs
        uris = list(dict.fromkeys(uris))
        if not hosts and not uris:
            raise UsageError(f"{hosts_file}: no hosts in it")
        outcomes = self._collect(store, hosts, uris, args)
        if args.json:
            print(json.dumps({"inventory": store.root,
                              "hosts": [o.as_dict() for o in outcomes]}, indent=2))
        else:
            for o in outcomes:
                print(_row(o))
        failed = sum(not o.ok for o in outcomes)
        if not args.quiet or failed:
            print(f"collect: {len(outcomes)} hosts: {len(outcomes) - failed} collected"
                  + (f", {failed} failed" if failed else "") + f" (inventory {store.root})",
                  file=sys.stderr)
        return EXIT_DATA if failed else 0

    def _collect(self, store: inv.Inventory, hosts: list[str], uris: list[str],
                 args: argparse.Namespace) -> list[inv.Outcome]:
        kb = kb_load.registers()
        total = len(hosts) + len(uris)
        results: dict[tuple[str, str], inv.Outcome] = {}
        with ThreadPoolExecutor(max_workers=min(args.jobs, total)) as pool:
            jobs: dict[Future, tuple[str, str]] = {}
            for dest in hosts:
                jobs[pool.submit(inv.fetch_ssh, dest, args.timeout, args.remote_command,
                                 args.ssh_config, args.ssh_option)] = (inv.SSH, dest)
            for uri in uris:
                jobs[pool.submit(inv.fetch_libvirt, uri, args.timeout)] = (inv.LIBVIRT, uri)
            for done, job in enumerate(as_completed(jobs), 1):
                method, source = jobs[job]
                out = self._record(store, method, source, job, kb)
                results[(method, source)] = out
                if not out.ok:
                    print(f"collect: {out.host}: failed ({out.reason}): {out.detail}",
                          file=sys.stderr)
                elif not args.quiet:
                    print(f"collect: [{done}/{total}] {out.host}: {out.status}", file=sys.stderr)
        return [results[(inv.SSH, d)] for d in hosts] + [results[(inv.LIBVIRT, u)] for u in uris]

    @staticmethod
    def _record(store: inv.Inventory, method: str, source: str, job: Future,
                kb) -> inv.Outcome:
        """One host's answer into the inventory (in this thread: one writer)."""
        name = inv.host_name(source) if method == inv.SSH else (inv.libvirt_name(source) or "")
        try:
            if method == inv.SSH:
                data = job.result()
                profile = inv.parse_collected(data, f"{source} (ssh output)", kb)
                with store.locked():
                    return store.record_profile(name, data, profile, source, kb)
            reported, data, cpu = job.result()
            name = name or reported
            try:
                inv.host_name(name)
            except UsageError:
                raise inv.CollectFailed(inv.REMOTE_ERROR, f"libvirt at {source} names its host "
                                        f"'{shown(name, 40)}', not a usable host name") from None
            with store.locked():
                return store.record_host_cpu(name, data, cpu, source)
        except inv.CollectFailed as err:
            out = inv.Outcome(name or shown(source, 60), method, source, inv.FAILED, err.reason,
                              str(err))
        except Error as err:
            out = inv.Outcome(name or shown(source, 60), method, source, inv.FAILED,
                              inv.REMOTE_ERROR, str(err))
        if name:
            with store.locked():
                store.record_failure(out)
        return out


def _row(o: inv.Outcome) -> str:
    if not o.ok:
        text = f"failed ({o.reason}): {o.detail}"
    elif o.changes:
        shown_changes = "; ".join(o.changes[:_SHOWN_CHANGES])
        more = len(o.changes) - _SHOWN_CHANGES
        text = f"{o.status}: {shown_changes}" + (f"; {more} more" if more > 0 else "")
    else:
        text = f"{o.status}: {o.detail}"
    return f"{o.host:<20} {o.method:<7} {text}"
