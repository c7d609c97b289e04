"""translate, define, validate, dumpxml: libvirt domains with ARM CPU models."""

from __future__ import annotations

import argparse
import json
import os
import sys

from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.service import (host_profile, parse_domain, precheck_defined, translate_domain,
                                     validate_translated)
from libvirt_arm_cpu.formats.domain import PAUTH_LIBVIRT_VERSION
from libvirt_arm_cpu.model import HostProfile, METHOD_LOADER
from libvirt_arm_cpu.errors import DataError, Error, UsageError, closest, path_label
from libvirt_arm_cpu.fileio import atomic_write, read_input
from libvirt_arm_cpu.engine.translate import Resolution
from libvirt_arm_cpu.engine.validate import METHOD_CHOICES

DEFAULT_URI = "qemu:///system"


# -- shared ------------------------------------------------------------------

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
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                # as a missing file: the data (libvirt's domains), not the
                # command line, lacks it (virsh exits 1 too)
                near = _closest_domain(conn, spec)
                raise DataError(f"{spec}: no such file, and no domain of that name in libvirt "
                                f"at {uri}" + (f" (did you mean {near}?)" if near else "")) \
                    from None
            raise DataError(f"{spec}: no such file, and libvirt at {uri} says: "
                            f"{e.get_error_message()}") from None
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return dom.XMLDesc(flags).encode(), f"domain '{spec}'"
    finally:
        conn.close()


def _closest_domain(conn, name: str) -> str | None:
    import libvirt
    try:
        names = [d.name() for d in conn.listAllDomains()]
    except libvirt.libvirtError:
        return None
    return closest(name, names)


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt's error callback: say nothing (each error is one line of ours)."""


def connect(uri: str):
    """A libvirt connection, with libvirt's default error handler (which
    prints every error to stderr, before ours) silenced."""
    try:
        import libvirt
    except ImportError:
        raise DataError("libvirt-python is not installed (pip install libvirt-python, or "
                        "install libvirt-arm-cpu[libvirt])") from None
    libvirt.registerErrorHandler(_quiet, None)
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise DataError(f"cannot connect to libvirt at {uri}: {e.get_error_message()}") from None


def check_libvirt_version(conn, r: Resolution) -> None:
    """libvirt must have an element for each vCPU feature switched off:
    pointer authentication ('pauth') is one since libvirt 10.6 (NEWS);
    older ones refuse the start ("unknown CPU feature: pauth").

    :raise DataError: naming the version."""
    if "ptrauth" not in r.vcpu_off:
        return
    version = conn.getLibVersion()
    if version < PAUTH_LIBVIRT_VERSION:
        v = f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
        raise DataError(f"CPU model '{r.model}' switches pointer authentication off, but "
                        f"libvirt {v} has no element for it (<feature name='pauth'> needs "
                        f"libvirt 10.6): not defined (a second -cpu would drop libvirt's "
                        f"own options)")


def _host(path: str | None) -> HostProfile:
    """--host PROFILE, else this host's profile."""
    with or_give_a_profile("--host PROFILE"):
        return host_profile(path)


def _notes(prog: str, r: Resolution) -> None:
    for low in r.lowered:
        print(f"{prog}: lowered {low}", file=sys.stderr)
    for u in r.unresolved:
        print(f"{prog}: warning: rule {u}", file=sys.stderr)
    for n in r.notes:
        print(f"{prog}: {n}", file=sys.stderr)


def _resolution_data(r: Resolution) -> dict:
    return {"model": r.model, "result": r.comparison.result, "method": r.method,
            "qemu_cpu": r.qemu_cpu,
            "properties": {n: f"{v:#x}" for n, v in r.properties},
            "env": r.env, "vcpu_off": list(r.vcpu_off),
            "lowered": [vars(x) for x in r.lowered],
            "unresolved": [{"rule": u.rule.id, "reason": u.reason} for u in r.unresolved],
            "notes": r.notes}


def method_summary(r: Resolution) -> str:
    if r.method == METHOD_LOADER:
        n = len(r.env.get("LIBVIRT_ARM_CPU_ID_REGS", "").split())
        return f"loader, {n} registers"
    if r.method == "sysreg" and r.properties:
        return f"{len(r.properties)} SYSREG properties"
    return "the host's own CPU, plain host-passthrough"


def add_method_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHOD_CHOICES, default="auto",
                        help="how QEMU gets the guest's ID registers: SYSREG_* properties or "
                             "the loader (default auto: sysreg where the host's QEMU takes "
                             "them, else the loader where it is installed)")


# -- commands ----------------------------------------------------------------

class TranslateCommand(Command):
    name = "translate"
    help = "turn a domain's <cpu mode='custom'|'host-model'> into what aarch64 libvirt runs"
    description = """\
Resolve the domain's <cpu> against a host profile (this host by default) into
ID register values, following libvirt's feature policies (require, force,
optional, disable, forbid), made consistent with the feature-dependency
rules.  Prints a domain XML that libvirt on aarch64 accepts today:
<cpu mode='host-passthrough'> (vCPU features the model switches off as
libvirt's own <feature policy='disable' name='sve|pauth'/> and
<features><pmu state='off'/>), the guest's registers for QEMU by one of two
methods, and the original <cpu> with the resolved values in <metadata>
(namespace urn:x-libvirt-arm-cpu:domain:1), so that 'dumpxml' gives the
original back and the hook can check the domain on every start and
migration.

methods (--method; auto: sysreg where the host's QEMU takes SYSREG_*
properties, else loader where the loader is installed):
  sysreg  a second '-cpu host,<vCPU options>,SYSREG_...' in <qemu:commandline>
          (only fields that differ from the host; QEMU keeps the last -cpu)
  loader  <qemu:env> LD_PRELOAD=<the loader> and LIBVIRT_ARM_CPU_ID_REGS=<every
          register>: stock QEMU 7.2+, values written into KVM after each vCPU
          init; MIDR/REVIDR/AIDR may differ where KVM has capability 239

<model> names a saved CPU model (cpu-baseline --save).  <feature name=...>
takes hwcap names (sve2), FEAT_* names, or SYSREG_<REG>_<FIELD> with value=."""
    epilog = """\
examples:
  libvirt-arm-cpu translate guest.xml > guest-arm.xml
  libvirt-arm-cpu translate guest.xml --host /srv/profiles/host-b.xml --qemu-args
  virsh dumpxml guest | libvirt-arm-cpu translate - --json

  libvirt-arm-cpu translate guest.xml --method loader --qemu-args

exit codes: 0 translated; 1 the CPU cannot run on the host (every responsible
feature or field is named), the method asked for is not available there, or
bad data; 2 bad usage or an unknown model or feature name; 3-8 the host
profile could not be made (see libvirt-arm-cpu-helper)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain", metavar="DOMAIN.xml", help="domain XML file, '-' for stdin")
        parser.add_argument("--host", metavar="PROFILE",
                            help="resolve against this host profile (default: this host)")
        add_method_argument(parser)
        out = parser.add_mutually_exclusive_group()
        out.add_argument("--qemu-args", action="store_true",
                         help="print only what QEMU gets: -cpu host,SYSREG_... (sysreg) or "
                              "the environment (loader)")
        out.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument("--output", "-o", metavar="FILE", help="write the domain XML to FILE")

    def run(self, args: argparse.Namespace) -> int:
        data = read_input(args.domain)
        translated, r = translate_domain(data, args.domain, _host(args.host), args.method)
        _notes("translate", r)
        xml = translated.tostring()
        if args.output:
            atomic_write(args.output, xml)
        if args.qemu_args:
            if r.env:
                for name, value in r.env.items():
                    print(f"{name}='{value}'")
            else:
                print(f"-cpu {r.qemu_cpu or 'host'}")
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
connection, pass the profile of the host it reaches).  On a local
connection it then makes the libvirt hook's check of the domain's start,
with the hook's settings: the hook remembers it (the first start costs no
check), and a start the hook would refuse is named now, as a warning."""
    epilog = """\
examples:
  libvirt-arm-cpu define guest.xml
  libvirt-arm-cpu define guest.xml -c qemu+ssh://host-b/system --host host-b.xml

exit codes: as translate; 1 also when libvirt refuses the definition."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain", metavar="DOMAIN.xml")
        parser.add_argument("--host", metavar="PROFILE")
        add_method_argument(parser)
        parser.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI",
                            help=f"libvirt URI (default {DEFAULT_URI})")

    def run(self, args: argparse.Namespace) -> int:
        translated, r = translate_domain(read_input(args.domain), args.domain,
                                         _host(args.host), args.method)
        _notes("define", r)
        conn = connect(args.connect)
        try:
            import libvirt
            check_libvirt_version(conn, r)
            try:
                dom = conn.defineXML(translated.tostring().decode())
            except libvirt.libvirtError as e:
                raise DataError(f"libvirt refused the translated domain: "
                                f"{e.get_error_message()}") from None
            print(f"Domain '{dom.name()}' defined from {path_label(args.domain)} (CPU model "
                  f"'{r.model}', {method_summary(r)})")
            # the hook's check of its start, made now: the first start is
            # answered from the hook's memory, and a refusal is said here
            try:
                refusal = precheck_defined(conn, dom)
            except Error as e:
                print(f"define: warning: its start was not checked now: {e}", file=sys.stderr)
            else:
                if refusal:
                    print(f"define: warning: {refusal} (the libvirt hook will refuse its "
                          f"start on this host)", file=sys.stderr)
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
        dom = parse_domain(data, source)
        t = dom.translation
        if t is None:
            raise DataError(f"{path_label(source)} has no libvirt-arm-cpu metadata: translate it "
                            f"first")
        host = _host(args.host)
        v = validate_translated(dom, host)
        if args.json:
            print(json.dumps({**v.comparison.as_dict(), "model": t.model,
                              "method": v.method, "current_method": t.method,
                              "qemu_cpu": v.expected_argument or "host", "env": v.env,
                              "needs_rewrite": v.needs_rewrite}, indent=2))
            return 0 if v.ok else 1
        if not v.ok:
            print(f"{path_label(source)}: CPU model '{t.model}' cannot run on host "
                  f"{host.hostname}")
            for reason in v.reasons:
                print(f"  {reason}")
            return 1
        how = (f"loader, {len(v.env.get('LIBVIRT_ARM_CPU_ID_REGS', '').split())} registers"
               if v.method == METHOD_LOADER else f"-cpu {v.expected_argument or 'host'}")
        print(f"{path_label(source)}: CPU model '{t.model}' can run on host {host.hostname} "
              f"({v.comparison.result}; {how})")
        if v.needs_rewrite:
            print(f"  its QEMU input ({t.method}) was made for host '{t.host}': the hook "
                  f"rewrites it on migration and restore; for a plain start, define it "
                  f"again here")
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
        dom = parse_domain(data, source)
        if dom.translation is None:
            sys.stdout.write(data.decode())
            return 0
        sys.stdout.write(dom.original().tostring().decode())
        return 0

