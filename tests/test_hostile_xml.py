"""Hostile and broken XML (issue 12): every reader refuses it with one
ParseError line naming the file (and the line where known), never a
traceback.

The documents are real ones mutated: a captured host profile
(tests/data/hosts), the CPU model cpumodel.to_xml makes of it, and a
libvirt host <cpu> (virsh capabilities) with that host's hwcaps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from libvirt_arm_cpu.formats import cpumodel, fleet, hostcpu, profile
from libvirt_arm_cpu import xmlsafe
from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.service import model_features

from .conftest import ROOT, assert_one_line_error

HOST = ROOT / "tests" / "data" / "hosts" / "neoverse-n1-qemu7.2-linux6.12.xml"
PATH = "bad.xml"


# -- the documents and their mutations ---------------------------------------

def _model(kb) -> bytes:
    m = cpumodel.CpuModel.from_profile(profile.read_profile(str(HOST)), kb)
    return cpumodel.to_xml(m, model_features(m, all_names=False))


def _capabilities(kb) -> bytes:
    """virsh capabilities of that host, as libvirt describes it (its hwcaps)."""
    m = cpumodel.CpuModel.from_profile(profile.read_profile(str(HOST)), kb)
    feats = "".join(f"      <feature name='{f}'/>\n" for f in model_features(m, False))
    return (f"<capabilities>\n  <host>\n    <cpu>\n      <arch>aarch64</arch>\n"
            f"      <model>Neoverse-N1</model>\n      <vendor>ARM</vendor>\n{feats}"
            f"    </cpu>\n  </host>\n</capabilities>\n").encode()


@pytest.fixture(scope="module")
def documents(kb) -> dict[str, bytes]:
    return {"model": _model(kb), "profile": HOST.read_bytes(), "hostcpu": _capabilities(kb)}


# reader -> (which document it reads, how it is called)
READERS: dict[str, tuple[str, Callable[[bytes, str], object]]] = {
    "cpumodel.from_xml": ("model", cpumodel.from_xml),
    "profile.from_xml": ("profile", profile.from_xml),
    "profile.validate": ("profile", profile.validate),
    "fleet.check_identity": ("profile", fleet.check_identity),
    "hostcpu.from_xml": ("hostcpu", hostcpu.from_xml),
}


def _split_declaration(data: bytes) -> tuple[bytes, bytes]:
    if data.startswith(b"<?xml"):
        end = data.index(b"?>") + 2
        return data[:end], data[end:].lstrip()
    return b"", data


def with_encoding(data: bytes, encoding: str) -> bytes:
    """*data* declaring *encoding* (its own declaration replaced)."""
    return (f"<?xml version='1.0' encoding='{encoding}'?>\n".encode()
            + _split_declaration(data)[1])


def with_doctype(data: bytes, doctype: str) -> bytes:
    """*data* with a document type declaration ({root}: its root's name)
    after its XML declaration, on a line of its own."""
    decl, rest = _split_declaration(data)
    root = re.match(rb"<([\w:.-]+)", rest)
    assert root is not None
    dtd = doctype.format(root=root.group(1).decode()).encode()
    return (decl + b"\n" if decl else b"") + dtd + b"\n" + rest


def mutate(data: bytes, pattern: bytes, repl: bytes) -> bytes:
    out, n = re.subn(pattern, repl, data, count=1)
    assert n == 1, pattern
    return out


def refused(reader: str, data: bytes, *needles: str) -> ParseError:
    """The reader's ParseError: one line, naming the file and *needles*."""
    with pytest.raises(ParseError) as info:
        READERS[reader][1](data, PATH)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{PATH}"), message
    for needle in needles:
        assert needle in message, (needle, message)
    return info.value


# -- 1. unknown encodings ------------------------------------------------------

ENCODINGS = [
    ("x", "unknown encoding 'x'"),                  # no such codec
    ("rot13", "unknown encoding 'rot13'"),          # a codec, not a text encoding
    ("utf-32", "unsupported encoding 'utf-32'"),    # multi-byte: pyexpat cannot map it
    ("idna", "unsupported encoding 'idna'"),        # fails to decode the byte table
    ("cp037", "unsupported encoding 'cp037'"),      # EBCDIC: expat refuses the table
]


@pytest.mark.parametrize("encoding, needle", ENCODINGS, ids=[e for e, _ in ENCODINGS])
@pytest.mark.parametrize("reader", READERS)
def test_an_unknown_encoding_is_a_parse_error(documents, reader, encoding, needle):
    data = with_encoding(documents[READERS[reader][0]], encoding)
    err = refused(reader, data, needle, "XML declaration")
    assert err.line == 1


@pytest.mark.parametrize("reader", READERS)
def test_a_known_single_byte_encoding_is_still_read(documents, reader):
    """latin-1 and UTF-8 declarations are fine (ASCII documents)."""
    for encoding in ("ISO-8859-1", "utf-8", "US-ASCII"):
        READERS[reader][1](with_encoding(documents[READERS[reader][0]], encoding), PATH)


# -- 3. DOCTYPE and entities (the safe reader everywhere) -------------------------

DOCTYPES = {
    "internal-entity": "<!DOCTYPE {root} [<!ENTITY e 'boom'>]>",
    "external-entity": "<!DOCTYPE {root} [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>",
    "parameter-entity": "<!DOCTYPE {root} [<!ENTITY % p SYSTEM 'http://example.invalid/x'> %p;]>",
    "billion-laughs": ("<!DOCTYPE {root} [<!ENTITY a 'aaaaaaaaaa'>"
                       "<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
                       "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]>"),
    "external-dtd": "<!DOCTYPE {root} SYSTEM 'http://example.invalid/cpu.dtd'>",
    "bare": "<!DOCTYPE {root}>",
}


@pytest.mark.parametrize("doctype", DOCTYPES)
@pytest.mark.parametrize("reader", READERS)
def test_a_doctype_is_refused(documents, reader, doctype):
    data = with_doctype(documents[READERS[reader][0]], DOCTYPES[doctype])
    err = refused(reader, data, "refused: a DOCTYPE")
    assert err.line is not None and err.line <= 2


UNDEFINED_ENTITY = {   # a reference without a DOCTYPE: not well-formed
    "model": (rb'<model fallback="forbid">', b'<model fallback="&e;">'),
    "profile": (rb'hostname="[^"]*"', b'hostname="&e;"'),
    "hostcpu": (rb"<vendor>ARM</vendor>", b"<vendor>&e;</vendor>"),
}


@pytest.mark.parametrize("reader", READERS)
def test_an_undefined_entity_is_not_well_formed(documents, reader):
    kind = READERS[reader][0]
    data = mutate(documents[kind], *UNDEFINED_ENTITY[kind])
    refused(reader, data, "not well-formed XML: undefined entity")


@pytest.mark.parametrize("reader", READERS)
def test_a_document_over_the_size_limit_is_refused(documents, reader):
    data = documents[READERS[reader][0]] + b" " * (xmlsafe.MAX_BYTES + 1)
    refused(reader, data, "larger than the")


@pytest.mark.parametrize("reader", READERS)
def test_the_unmutated_documents_are_read(documents, reader):
    READERS[reader][1](documents[READERS[reader][0]], PATH)


# -- 2. a CPU model's elements ---------------------------------------------------

_REG = rb'<arm:register name="ID_AA64ISAR0_EL1"'
MODEL_CASES = {
    "register-without-name": (_REG, b"<arm:register", "<register> lacks 'name'"),
    "register-empty-name": (_REG, b'<arm:register name=""',
                            "<register name=''>: expected a register name"),
    "register-name-with-newline": (_REG, b'<arm:register name="ID&#10;AA64ISAR0_EL1"',
                                   "<register name='ID\\nAA64ISAR0_EL1'>: expected a register"),
    "register-without-value": (_REG + rb' value="[^"]*"', _REG,
                               "<register name='ID_AA64ISAR0_EL1'> lacks 'value'"),
    "register-value-not-hex": (_REG + rb' value="[^"]*"', _REG + b' value="zz"',
                               "<register name='ID_AA64ISAR0_EL1'>: value 'zz' is not a hex "
                               "number"),
    "register-value-65-bit": (_REG + rb' value="[^"]*"', _REG + b' value="0x10000000000000000"',
                              "value '0x10000000000000000' does not fit a 64-bit register"),
    "register-value-negative": (_REG + rb' value="[^"]*"', _REG + b' value="-0x1"',
                                "value '-0x1' does not fit a 64-bit register"),
    "register-value-with-newline": (_REG + rb' value="[^"]*"', _REG + b' value="0x1&#10;zz"',
                                    "value '0x1\\nzz' is not a hex number"),
    "writable-mask-65-bit": (_REG + rb'( value="[^"]*") writable="[^"]*"',
                             _REG + rb'\1 writable="0x1ffffffffffffffff"',
                             "writable '0x1ffffffffffffffff' does not fit a 64-bit register"),
    "register-twice": (rb'(  <arm:register name="ID_AA64ISAR0_EL1"[^\n]*\n)', rb"\1\1",
                       "<register name='ID_AA64ISAR0_EL1'> appears twice"),
    "implementation-midr-not-hex": (rb'<arm:implementation midr="[^"]*"',
                                    b'<arm:implementation midr="zz"',
                                    "<implementation>: midr 'zz' is not a hex number"),
    "implementation-midr-65-bit": (rb'<arm:implementation midr="[^"]*"',
                                   b'<arm:implementation midr="0x10000000000000000"',
                                   "<implementation>: midr '0x10000000000000000' does not fit"),
    "implementation-without-midr": (rb'<arm:implementation midr="[^"]*"',
                                    b"<arm:implementation", "<implementation> lacks 'midr'"),
    "host-without-name": (rb'<arm:host name="[^"]*"', b"<arm:host", "<host> lacks 'name'"),
    "host-name-with-newline": (rb'<arm:host name="[^"]*"', b'<arm:host name="a&#10;b"',
                               "<host name='a\\nb'>: expected a name without control"),
    "switch-value-without-register": (rb'<arm:value register="[^"]*"', b"<arm:value",
                                      "<value> lacks 'register'"),
    "switch-value-65-bit": (rb'(<arm:value register="[^"]*") value="[^"]*"',
                            rb'\1 value="0x10000000000000000"',
                            "<switch feature='pmu'><value register=",
                            ),
    "firmware-value-65-bit": (rb'<arm:firmware name="PSCI_VERSION" value="[^"]*"',
                              b'<arm:firmware name="PSCI_VERSION" value="0x10000000000000000"',
                              "<firmware name='PSCI_VERSION'>: value '0x10000000000000000' "
                              "does not fit"),
    "register-list-65-bit": (rb"<arm:register-list>", b"<arm:register-list>0x10000000000000000 ",
                             "<register-list>: expected KVM register ids (64-bit)"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_a_broken_model_element_is_a_parse_error(documents, case):
    pattern, repl, needle = MODEL_CASES[case]
    refused("cpumodel.from_xml", mutate(documents["model"], pattern, repl), needle)


def test_a_model_register_takes_every_64_bit_value(documents):
    top = mutate(documents["model"], _REG + rb' value="[^"]*" writable="[^"]*"',
                 _REG + b' value="0xffffffffffffffff" writable="0xffffffffffffffff"')
    m = cpumodel.from_xml(top, PATH)
    assert m.values["ID_AA64ISAR0_EL1"] == m.writable["ID_AA64ISAR0_EL1"] == (1 << 64) - 1


def test_a_model_round_trips_unchanged(documents, kb):
    m = cpumodel.from_xml(documents["model"], PATH)
    assert m == cpumodel.CpuModel.from_profile(profile.read_profile(str(HOST)), kb)


# -- a host profile's values (the hook reads profiles without the schema) ----------

PROFILE_CASES = {   # (pattern, replacement, needle, does the schema refuse it too?)
    "register-value-65-bit": (rb'(<register name="ID_AA64ISAR0_EL1"[^>]*?) value="[^"]*"',
                              rb'\1 value="0x10000000000000000"', "does not fit a 64-bit", True),
    "writable-mask-negative": (rb'(<register name="ID_AA64ISAR0_EL1"[^>]*?) writable="[^"]*"',
                               rb'\1 writable="-0x1"', "does not fit a 64-bit", True),
    "kvm-id-with-newline": (rb'(<register name="ID_AA64ISAR0_EL1"[^>]*?) kvm-id="[^"]*"',
                            rb'\1 kvm-id="0x1&#10;2"', "kvm-id='0x1\\n2'> is not a number", True),
    "machine-with-newline": (rb'machine="aarch64"', b'machine="x86&#10;64"',
                             "<identity machine='x86\\n64'>: control characters", False),
    "hostname-with-carriage-return": (rb'hostname="[^"]*"', b'hostname="a&#13;b"',
                              "<identity hostname='a\\rb'>: control characters", False),
}


@pytest.mark.parametrize("case", PROFILE_CASES)
def test_a_broken_profile_value_is_a_parse_error(documents, case):
    pattern, repl, needle, schema_refuses = PROFILE_CASES[case]
    data = mutate(documents["profile"], pattern, repl)
    refused("profile.from_xml", data, needle)
    if schema_refuses:
        refused("profile.validate", data, "not a valid host profile")


def test_the_cli_prints_one_line_for_a_profile_with_a_newline_in_a_name(run, documents,
                                                                          tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(mutate(documents["profile"], *PROFILE_CASES["machine-with-newline"][:2]))
    assert_one_line_error(run("cpu-baseline", str(bad)), 1, str(bad), "control characters")


# -- the fleet fast path ------------------------------------------------------------

def test_the_fleet_fast_path_checks_the_whole_file(documents):
    """A copy with the same shared content takes the fast path (only its
    identity parsed); what sits outside that content is still checked."""
    data = documents["profile"]
    key = fleet.profile_key(data)
    for bad in (with_encoding(data, "x"), with_doctype(data, DOCTYPES["external-entity"]),
                data + b"<junk/>", data.replace(b"</hostprofile>", b"</hostprofile", 1)):
        assert fleet.profile_key(bad) == key
        refused("fleet.check_identity", bad)
    # laid out otherwise but well-formed: read whole, and accepted
    assert fleet.check_identity(data + b"<!-- a comment -->\n", PATH) == HOST.stem


# -- through the command line: one line, exit code 1 ----------------------------------

CLI_MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "encoding": lambda d: with_encoding(d, "x"),
    "doctype": lambda d: with_doctype(d, DOCTYPES["external-entity"]),
    "billion-laughs": lambda d: with_doctype(d, DOCTYPES["billion-laughs"]),
}
CLI_NEEDLES = {"encoding": "unknown encoding 'x'", "doctype": "refused: a DOCTYPE",
               "billion-laughs": "refused: a DOCTYPE"}
# how the command line reaches each reader: argv with {bad} for the broken file
CLI_ROUTES = {
    "cpu-compare-model": ("model", ["cpu-compare", "{bad}", str(HOST)]),
    "host-profile": ("profile", ["host", "--profile", "{bad}"]),
    "cpu-compare-profile": ("profile", ["cpu-compare", "{model}", "{bad}"]),
    "cpu-baseline-fleet": ("profile", ["cpu-baseline", str(HOST), "{bad}"]),
    "cpu-compare-hostcpu": ("hostcpu", ["cpu-compare", "{model}", "{bad}"]),
}


@pytest.mark.parametrize("mutation", CLI_MUTATIONS)
@pytest.mark.parametrize("route", CLI_ROUTES)
def test_the_cli_prints_one_line(run, documents, tmp_path: Path, route, mutation):
    kind, argv = CLI_ROUTES[route]
    bad = tmp_path / "bad.xml"
    bad.write_bytes(CLI_MUTATIONS[mutation](documents[kind]))
    model = tmp_path / "model.xml"
    model.write_bytes(documents["model"])
    r = run(*[a.format(bad=bad, model=model) for a in argv])
    assert_one_line_error(r, 1, f"{bad}:", CLI_NEEDLES[mutation])


@pytest.mark.parametrize("case", ["register-without-name", "register-value-65-bit",
                                  "writable-mask-65-bit", "implementation-midr-not-hex",
                                  "host-without-name", "register-name-with-newline"])
def test_the_cli_prints_one_line_for_a_broken_model(run, documents, tmp_path, case):
    pattern, repl, needle = MODEL_CASES[case]
    bad = tmp_path / "bad.xml"
    bad.write_bytes(mutate(documents["model"], pattern, repl))
    assert_one_line_error(run("cpu-compare", str(bad), str(HOST)), 1, str(bad), needle)
