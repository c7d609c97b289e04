"""translate, define, validate, dumpxml: libvirt domains with ARM CPU models."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import dependencies, features, registers
from .. import settings as settings_mod
from ..cli import Command
from ..cpumodel import CpuModel, from_xml as model_from_xml
from ..domain import Domain, Translation, qemu_cpu_argument
from ..errors import DataError, UnknownName, UsageError
from ..fileio import atomic_write, read_input
from ..profile import HostProfile, read_profile
from ..translate import Resolution, resolve, validate

DEFAULT_URI = "qemu:///system"


# -- shared ------------------------------------------------------------------

def host_profile(path: str | None) -> HostProfile:
    """--host PROFILE, else the settings' profile (this host's cache,
    probed again when stale, unless the settings say never)."""
    if path:
        return read_profile(path)
    conf = settings_mod.load()
    if conf.refresh:
        from ..hostcache import cached_profile
        return cached_profile(conf.profile)[0]
    return read_profile(conf.profile, validate_schema=False)


def saved_models_dir() -> str:
    return settings_mod.load().models_dir


def find_model(name: str) -> CpuModel:
    directory = saved_models_dir()
    path = os.path.join(directory, name + ".xml")
    if os.path.exists(path):
        return model_from_xml(read_input(path), path)
    known = [n[:-4] for n in os.listdir(directory)] if os.path.isdir(directory) else []
    err = UnknownName("CPU model", name, known)
    raise UsageError(f"{err} (saved CPU models are in {directory}; make one with "
                     f"'libvirt-arm-cpu cpu-baseline --save')")


def read_domain(spec: str, uri: str, inactive: bool = False) -> tuple[bytes, str]:
    """A domain XML file ('-': stdin), or the name of a libvirt domain."""
    if spec == "-" or os.path.exists(spec):
        return read_input(spec), spec
    if "/" in spec or spec.endswith(".xml"):
        raise UsageError(f"{spec}: no such file")
    conn = connect(uri)
    try:
        import libvirt
        try:
            dom = conn.lookupByName(spec)
        except libvirt.libvirtError as e:
            raise UsageError(f"{spec}: no such file, and libvirt at {uri} says: "
                             f"{e.get_error_message()}") from None
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return dom.XMLDesc(flags).encode(), f"domain '{spec}'"
    finally:
        conn.close()


def connect(uri: str):
    try:
        import libvirt
    except ImportError:
        raise DataError("libvirt-python is not installed (pip install libvirt-python, or "
                        "install libvirt-arm-cpu[libvirt])") from None
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise DataError(f"cannot connect to libvirt at {uri}: {e.get_error_message()}") from None


def translate_domain(data: bytes, source: str, host: HostProfile) -> tuple[Domain, Resolution]:
    dom = Domain.parse(data, source)
    base = dom.original()
    cpu = base.cpu
    if cpu is None:
        raise UsageError(f"{source}: the domain has no <cpu>: nothing to translate")
    if dom.arch and dom.arch != "aarch64":
        raise UsageError(f"{source}: the domain is for {dom.arch}, not aarch64")
    r = resolve(cpu, host, registers.load(), features.load(), dependencies.load(), find_model)
    t = Translation("", r.values, r.properties, host.hostname, host.fingerprint.digest, r.model)
    return base.translated(t), r


def _notes(prog: str, r: Resolution) -> None:
    for low in r.lowered:
        print(f"{prog}: lowered {low}", file=sys.stderr)
    for u in r.unresolved:
        print(f"{prog}: warning: rule {u}", file=sys.stderr)
    for n in r.notes:
        print(f"{prog}: {n}", file=sys.stderr)


def _resolution_data(r: Resolution) -> dict:
    return {"model": r.model, "result": r.comparison.result,
            "qemu_cpu": qemu_cpu_argument(r.properties),
            "properties": {n: f"{v:#x}" for n, v in r.properties},
            "lowered": [vars(x) for x in r.lowered],
            "unresolved": [{"rule": u.rule.id, "reason": u.reason} for u in r.unresolved],
            "notes": r.notes}


# -- commands ----------------------------------------------------------------

class TranslateCommand(Command):
    name = "translate"
    help = "turn a domain's <cpu mode='custom'|'host-model'> into what aarch64 libvirt runs"
    description = """\
Resolve the domain's <cpu> against a host profile (this host by default) into
ID register values, following libvirt's feature policies (require, force,
optional, disable, forbid), made consistent with the feature-dependency
rules.  Prints a domain XML that libvirt on aarch64 accepts today:
<cpu mode='host-passthrough'>, the SYSREG_* properties as a second
'-cpu host,...' in <qemu:commandline> (only fields that differ from the
host), and the original <cpu> with the resolved values in <metadata>
(namespace urn:x-libvirt-arm-cpu:domain:1), so that 'dumpxml' gives the
original back and the hook can check the domain on every start and
migration.

<model> names a saved CPU model (cpu-baseline --save).  <feature name=...>
takes hwcap names (sve2), FEAT_* names, or SYSREG_<REG>_<FIELD> with value=."""
    epilog = """\
examples:
  libvirt-arm-cpu translate guest.xml > guest-arm.xml
  libvirt-arm-cpu translate guest.xml --host /srv/profiles/host-b.xml --qemu-args
  virsh dumpxml guest | libvirt-arm-cpu translate - --json

exit codes: 0 translated; 1 the CPU cannot run on the host (every responsible
feature or field is named) or bad data; 2 bad usage or an unknown model or
feature name; 3-8 the host profile could not be made (see libvirt-arm-cpu-helper)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain", metavar="DOMAIN.xml", help="domain XML file, '-' for stdin")
        parser.add_argument("--host", metavar="PROFILE",
                            help="resolve against this host profile (default: this host)")
        out = parser.add_mutually_exclusive_group()
        out.add_argument("--qemu-args", action="store_true",
                         help="print only the QEMU arguments (-cpu host,SYSREG_...)")
        out.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument("--output", "-o", metavar="FILE", help="write the domain XML to FILE")

    def run(self, args: argparse.Namespace) -> int:
        data = read_input(args.domain)
        translated, r = translate_domain(data, args.domain, host_profile(args.host))
        _notes("translate", r)
        xml = translated.tostring()
        if args.output:
            atomic_write(args.output, xml)
        if args.qemu_args:
            print(f"-cpu {qemu_cpu_argument(r.properties)}")
        elif args.json:
            print(json.dumps(_resolution_data(r), indent=2))
        elif not args.output:
            sys.stdout.write(xml.decode())
        return 0


class DefineCommand(Command):
    name = "define"
    help = "translate a domain XML and define it in libvirt"
    description = """\
'translate', then define the result in libvirt (as 'virsh define').  The
host profile is this host's unless --host names another (for a remote
connection, pass the profile of the host it reaches)."""
    epilog = """\
examples:
  libvirt-arm-cpu define guest.xml
  libvirt-arm-cpu define guest.xml -c qemu+ssh://host-b/system --host host-b.xml

exit codes: as translate; 1 also when libvirt refuses the definition."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain", metavar="DOMAIN.xml")
        parser.add_argument("--host", metavar="PROFILE")
        parser.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI",
                            help=f"libvirt URI (default {DEFAULT_URI})")

    def run(self, args: argparse.Namespace) -> int:
        translated, r = translate_domain(read_input(args.domain), args.domain,
                                         host_profile(args.host))
        _notes("define", r)
        conn = connect(args.connect)
        try:
            import libvirt
            try:
                dom = conn.defineXML(translated.tostring().decode())
            except libvirt.libvirtError as e:
                raise DataError(f"libvirt refused the translated domain: "
                                f"{e.get_error_message()}") from None
            print(f"Domain '{dom.name()}' defined from {args.domain} (CPU model '{r.model}', "
                  f"{len(r.properties)} SYSREG properties)")
        finally:
            conn.close()
        return 0


class ValidateCommand(Command):
    name = "validate"
    help = "can this host run a translated domain's CPU?"
    description = """\
Check a translated domain (a file, '-', or the name of a libvirt domain)
against a host profile, as the hook does before a start or an incoming
migration: the guest CPU in its metadata must be one the host can present,
with the SYSREG properties its QEMU takes."""
    epilog = """\
examples:
  libvirt-arm-cpu validate guest            # a defined domain, this host
  libvirt-arm-cpu validate guest-arm.xml --host host-b.xml --json

exit codes: 0 it can; 1 it cannot (every responsible field is named), or the
domain was not translated; 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain", metavar="DOMAIN", help="XML file, '-', or domain name")
        parser.add_argument("--host", metavar="PROFILE")
        parser.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        data, source = read_domain(args.domain, args.connect)
        dom = Domain.parse(data, source)
        t = dom.translation
        if t is None:
            raise DataError(f"{source} has no libvirt-arm-cpu metadata: translate it first")
        host = host_profile(args.host)
        v = validate(t.values, dom.cpu_arguments(), host, registers.load())
        if args.json:
            print(json.dumps({**v.comparison.as_dict(), "model": t.model,
                              "qemu_cpu": v.expected_argument or "host",
                              "needs_rewrite": v.needs_rewrite}, indent=2))
            return 0 if v.ok else 1
        if not v.ok:
            print(f"{source}: CPU model '{t.model}' cannot run on host {host.hostname}")
            for reason in v.reasons:
                print(f"  {reason}")
            return 1
        print(f"{source}: CPU model '{t.model}' can run on host {host.hostname} "
              f"({v.comparison.result}; -cpu {v.expected_argument or 'host'})")
        if v.needs_rewrite:
            print(f"  its QEMU arguments were made for host '{t.host}': the hook rewrites them "
                  f"on migration and restore; for a plain start, define it again here")
        return 0


class DumpxmlCommand(Command):
    name = "dumpxml"
    help = "a translated domain's original XML, with its original <cpu>"
    description = """\
Undo a translation: the domain XML with its original <cpu> back and this
project's metadata and QEMU arguments removed.  Reads a file, '-', or the
name of a libvirt domain (as virsh dumpxml does)."""
    epilog = """\
examples:
  libvirt-arm-cpu dumpxml guest
  libvirt-arm-cpu dumpxml guest-arm.xml > guest.xml"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain", metavar="DOMAIN", help="XML file, '-', or domain name")
        parser.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI")
        parser.add_argument("--inactive", action="store_true",
                            help="the persistent definition, not the running one")

    def run(self, args: argparse.Namespace) -> int:
        data, source = read_domain(args.domain, args.connect, args.inactive)
        dom = Domain.parse(data, source)
        if dom.translation is None:
            sys.stdout.write(data.decode())
            return 0
        sys.stdout.write(dom.original().tostring().decode())
        return 0

