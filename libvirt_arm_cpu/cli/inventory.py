"""``inventory``: what 'collect' gathered: the hosts, each host's current
profile and its history (what changed each time), and the saved CPU
models' versions (:mod:`libvirt_arm_cpu.inventory`)."""

from __future__ import annotations

import argparse
import json
import sys

from libvirt_arm_cpu import inventory as inv
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.cli.host import render_profile
from libvirt_arm_cpu.errors import Error, ParseError, UnknownName, UsageError
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml
from libvirt_arm_cpu.formats.hostcpu import from_xml as host_cpu_from_xml
from libvirt_arm_cpu.formats.profile import from_xml as profile_from_xml
from libvirt_arm_cpu.formats.profile import to_json
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb.implementers import decode_midr
from libvirt_arm_cpu.model import HostCpu, HostProfile
from libvirt_arm_cpu.xmlsafe import shown

ACTIONS = ("list", "show", "history", "record-models")
LESS_PRECISE = ("libvirt host CPU only (model and hwcap names; no ID register values or "
                "writable fields): less precise than a profile")


class InventoryCommand(Command):
    name = "inventory"
    help = "the hosts and models collected: current profiles and their history"
    description = f"""\
list: every host in the inventory (how it was collected, its CPU, kernel and
QEMU, when, and how the last collection went) and the recorded models.
show HOST: the host's current profile, decoded as 'libvirt-arm-cpu host'
shows it (or the libvirt host CPU of a host collected through libvirt).
history HOST: each distinct profile the host gave, oldest first, with what
changed from the one before (kernel, QEMU, ID register fields, writable
fields...) and whether a host-passthrough guest started before the change
can still run there.  history --model NAME: a saved model's versions.
record-models: record the saved CPU models (cpu-baseline --save) as they
are now; a model whose file did not change adds no version.

The inventory is --inventory DIR, ${inv.ENV_DIR} or {inv.DEFAULT_DIR};
'collect' fills it."""
    epilog = """\
examples:
  libvirt-arm-cpu inventory list --inventory /srv/fleet
  libvirt-arm-cpu inventory show kvm1
  libvirt-arm-cpu inventory history kvm1 --json
  libvirt-arm-cpu inventory record-models
  libvirt-arm-cpu inventory history --model arm64-0123456789ab"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", nargs="?", default="list", choices=ACTIONS)
        parser.add_argument("host", nargs="?", metavar="HOST", help="for show and history")
        parser.add_argument("--model", metavar="NAME", help="history of this saved model")
        parser.add_argument("--inventory", metavar="DIR",
                            help=f"the inventory folder (default ${inv.ENV_DIR} or "
                                 f"{inv.DEFAULT_DIR})")
        parser.add_argument("--all", action="store_true",
                            help="show: also registers that read as zero")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        store = inv.Inventory(args.inventory)
        if args.action in ("show", "history") and not (args.host or args.model):
            raise UsageError(f"inventory {args.action} needs a HOST"
                             + (" or --model NAME" if args.action == "history" else ""))
        if args.host and args.action in ("list", "record-models"):
            raise UsageError(f"inventory {args.action} takes no HOST")
        if args.model and args.action != "history":
            raise UsageError("--model goes with 'inventory history'")
        if args.action == "list":
            return _list(store, args.json)
        if args.action == "record-models":
            with store.locked():
                outs = store.record_models()
            if args.json:
                print(json.dumps([o.as_dict() for o in outs], indent=2))
            else:
                for o in outs:
                    print(f"{o.host:<24} {o.status}"
                          + (f": {'; '.join(o.changes)}" if o.changes else ""))
                if not outs:
                    print("no saved CPU models (cpu-baseline --save makes them)")
            return 0
        if args.model:
            return _model_history(store, args.model, args.json)
        host = _known(store, args.host)
        if args.action == "show":
            return _show(store, host, args.json, args.all)
        return _history(store, host, args.json)


def _known(store: inv.Inventory, host: str) -> str:
    name = inv.host_name(host)
    if not store.has(name):
        err = UnknownName("host", name, store.hosts())
        raise UsageError(f"{err} (in the inventory {store.root}; 'libvirt-arm-cpu collect "
                         f"{shown(host, 40)}' adds it)")
    return name


def _list(store: inv.Inventory, as_json: bool) -> int:
    rows = []
    for host in store.hosts():
        status = store.status(host)
        row: dict[str, object] = {"host": host, "collected": None, "versions":
                                  len(store.history(host)), "last": status}
        try:
            profile = store.current_profile(host)
            cpu = None if profile is not None else store.current_host_cpu(host)
        except ParseError as err:
            profile, cpu, row["error"] = None, None, str(err)
        if profile is not None:
            row.update(collected="profile", hostname=profile.hostname,
                       kernel=profile.kernel_release, qemu=inv.describe_qemu(profile),
                       probed=profile.probed_at, cpu=_cpu_names(profile),
                       path=store.profile_path(host))
        elif cpu is not None:
            row.update(collected="libvirt-cpu", cpu=cpu.model, features=len(cpu.features),
                       path=store.capabilities_path(host), precision=LESS_PRECISE)
        rows.append(row)
    models = [{"name": m, "versions": len(store.model_history(m))} for m in store.models()]
    if as_json:
        print(json.dumps({"inventory": store.root, "hosts": rows, "models": models}, indent=2))
        return 0
    if not rows and not models:
        print(f"the inventory {store.root} is empty ('libvirt-arm-cpu collect HOST...' fills it)")
        return 0
    for r in rows:
        if r["collected"] == "profile":
            what = (f"{r['cpu']}, Linux {shown(str(r['kernel']), 30)}, "
                    f"{r['qemu']}, probed {shown(str(r['probed']), 25)}")
        elif r["collected"] == "libvirt-cpu":
            what = f"libvirt host CPU {shown(str(r['cpu']), 30) or '?'} (less precise)"
        else:
            what = "not collected" if "error" not in r else f"unreadable: {r['error']}"
        failed = [f"{m} failed {v.get('time', '')}: {v.get('reason', '')}"
                  for m, v in sorted(r["last"].items())           # type: ignore[attr-defined]
                  if isinstance(v, dict) and v.get("status") == inv.FAILED]
        print(f"{r['host']:<20} {what}; {r['versions']} version(s)"
              + (f"; last {'; '.join(failed)}" if failed else ""))
    for m in models:
        print(f"model {m['name']}: {m['versions']} version(s)")
    return 0


def _cpu_names(profile: HostProfile) -> str:
    kb = kb_load.registers()
    tables = kb_load.implementers()
    names = []
    for midr in dict.fromkeys(c.midr for c in profile.cpus if c.midr is not None):
        m = decode_midr(midr, tables, kb)
        names.append(m.part_name or f"MIDR {midr:#010x}")
    return " + ".join(names) or "CPU unknown"


def _show(store: inv.Inventory, host: str, as_json: bool, all_registers: bool) -> int:
    profile = store.current_profile(host)
    if profile is not None:
        if as_json:
            print(json.dumps({"host": host, "collected": "profile",
                              "profile": to_json(profile)}, indent=2))
        else:
            print(f"# {store.profile_path(host)}")
            print(render_profile(profile, all_registers), end="")
        return 0
    cpu = store.current_host_cpu(host)
    if cpu is None:
        raise UsageError(f"{host}: nothing collected yet ({_failures(store, host)})")
    if as_json:
        print(json.dumps({"host": host, "collected": "libvirt-cpu", "precision": LESS_PRECISE,
                          "arch": cpu.arch, "model": cpu.model, "vendor": cpu.vendor,
                          "features": sorted(cpu.features)}, indent=2))
    else:
        print(f"# {store.capabilities_path(host)}")
        print(f"Host {host}: {LESS_PRECISE}")
        print(f"CPU model {cpu.model or 'unknown'}, vendor {cpu.vendor or 'unknown'}")
        print("features: " + (" ".join(sorted(cpu.features)) or "none"))
        print(f"compare a model with it: libvirt-arm-cpu cpu-compare MODEL "
              f"{store.capabilities_path(host)}")
    return 0


def _failures(store: inv.Inventory, host: str) -> str:
    last = store.status(host)
    return "; ".join(f"{m}: {v.get('detail', '')}" for m, v in sorted(last.items())
                     if isinstance(v, dict)) or "no collection recorded"


def _history(store: inv.Inventory, host: str, as_json: bool) -> int:
    kb = kb_load.registers()
    out = []
    profile_before: HostProfile | None = None
    cpu_before: HostCpu | None = None
    for e in store.history(host):
        item: dict[str, object] = {"version": e.name, "kind": e.kind, "stamp": e.stamp,
                                   "path": e.path}
        out.append(item)
        try:
            data = read_input(e.path)
            if e.kind == inv.PROFILE:
                profile = profile_from_xml(data, e.path)
            else:
                cpu = host_cpu_from_xml(data, e.path)
        except Error as err:
            item["error"] = str(err)
            continue
        if e.kind == inv.PROFILE:
            item.update(kernel=profile.kernel_release, qemu=inv.describe_qemu(profile),
                        probed=profile.probed_at)
            if profile_before is not None:
                item["changes"] = inv.profile_changes(profile_before, profile, kb)
                try:
                    ok, why = inv.passthrough_after(profile_before, profile, kb)
                    item["passthrough_guests_from_before"] = {"can_run": ok, "reasons": why}
                except Error as err:
                    item["passthrough_guests_from_before"] = {"can_run": None,
                                                              "reasons": [str(err)]}
            profile_before = profile
        else:
            item.update(model=cpu.model, features=len(cpu.features))
            if cpu_before is not None:
                item["changes"] = inv.host_cpu_changes(cpu_before, cpu)
            cpu_before = cpu
    if as_json:
        print(json.dumps({"host": host, "versions": out, "last": store.status(host)}, indent=2))
        return 0
    if not out:
        print(f"{host}: no version recorded ({_failures(store, host)})")
        return 0
    for item in out:
        _print_version(item)
    return 0


def _print_version(item: dict) -> None:
    if "error" in item:
        print(f"{item['version']}: unreadable: {item['error']}")
        return
    if item["kind"] == inv.PROFILE:
        print(f"{item['version']}: probed {shown(str(item['probed']), 30)}, Linux "
              f"{shown(str(item['kernel']), 30)}, {item['qemu']}")
    else:
        print(f"{item['version']}: libvirt host CPU {shown(str(item['model']), 30)}, "
              f"{item['features']} features (less precise)")
    if "changes" not in item:
        print("  first version")
        return
    for c in item["changes"]:
        print(f"  {c}")
    if not item["changes"]:
        print("  no change but the probe's time")
    verdict = item.get("passthrough_guests_from_before")
    if verdict is not None:
        if verdict["can_run"]:
            print("  host-passthrough guests started before this change can still run here")
        else:
            print("  host-passthrough guests started before this change can NOT run here: "
                  + "; ".join(verdict["reasons"][:3])
                  + (f" (+{len(verdict['reasons']) - 3} more)" if len(verdict["reasons"]) > 3
                     else ""))


def _model_history(store: inv.Inventory, name: str, as_json: bool) -> int:
    entries = store.model_history(name)
    if not entries:
        err = UnknownName("recorded model", name, store.models())
        raise UsageError(f"{err} ('libvirt-arm-cpu inventory record-models' records the saved "
                         f"ones)")
    kb, catalog = kb_load.registers(), kb_load.features()
    out = []
    before = None
    for e in entries:
        item: dict[str, object] = {"version": e.name, "stamp": e.stamp, "path": e.path}
        model = model_from_xml(read_input(e.path), e.path, catalog)
        if before is not None:
            item["changes"] = inv.model_changes(before, model, kb)
        before = model
        out.append(item)
    if as_json:
        print(json.dumps({"model": name, "versions": out}, indent=2))
        return 0
    for item in out:
        print(f"{item['version']}: recorded {item['stamp']}")
        for c in item.get("changes", []):                    # type: ignore[attr-defined]
            print(f"  {c}")
    sys.stdout.flush()
    return 0
