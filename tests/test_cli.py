"""The libvirt-arm-cpu command: output, JSON shape, exit codes, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import EXAMPLES, assert_one_line_error, run_installed


def test_decode_text(run):
    r = run("decode", "ID_AA64ISAR0_EL1", "0x0000100010211120")
    assert r.code == 0, r.err
    lines = {line.split()[0]: line for line in r.out.splitlines() if line.startswith("  ")}
    assert "[47:44] = 1" in lines["DP"] and "(IMP)" in lines["DP"]
    assert "asimddp" in lines["DP"] and "FEAT_DotProd" in lines["DP"]
    assert "[23:20] = 2" in lines["ATOMIC"] and "atomics" in lines["ATOMIC"]
    assert "[63:60] = 0" in lines["RNDR"] and "(NI)" in lines["RNDR"]
    assert "KVM id 0x603000000013c030" in r.out


def test_decode_json_shape(run):
    r = run("decode", "id_aa64isar0", "0x0000100010211120", "--json")
    assert r.code == 0
    data = json.loads(r.out)
    reg = data["registers"][0]
    assert reg["name"] == "ID_AA64ISAR0_EL1" and reg["value"] == "0x0000100010211120"
    assert reg["encoding"] == {"op0": 3, "op1": 0, "crn": 0, "crm": 6, "op2": 0}
    assert reg["kvm_id"] == "0x603000000013c030" and reg["mask_index"] == 48
    dp = next(f for f in reg["fields"] if f["name"] == "DP")
    assert dp == {"name": "DP", "msb": 47, "lsb": 44, "value": 1, "meaning": "IMP",
                  "kind": "unsigned-enum", "signed": False, "policy": "lower-safe",
                  "qemu_property": "SYSREG_ID_AA64ISAR0_EL1_DP",
                  "features": ["asimddp", "FEAT_DotProd"]}
    assert {"kind": "res0", "msb": 27, "lsb": 24, "value": 0} in reg["reserved"]
    assert reg["warnings"] == []
    assert "atomics" in data["features"]


def test_decode_midr_names_the_core(run):
    r = run("decode", "midr", "0x414fd0c1")
    assert r.code == 0
    assert "Arm Neoverse-N1 r4p1" in r.out
    r = run("decode", "midr", "0x414fd0c1", "--json")
    assert json.loads(r.out)["registers"][0]["implementation"] == "Arm Neoverse-N1 r4p1"


def test_decode_reserved_bits_warn(run):
    r = run("decode", "ID_AA64ISAR0_EL1", "0x0000100011211120")
    assert r.code == 0
    assert "warning: ID_AA64ISAR0_EL1[27:24] is RES0 but reads 0x1" in r.out


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.regs")))
def test_decode_every_example(run, example):
    r = run("decode", "--file", str(EXAMPLES / example), "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert any(reg["name"] == "ID_AA64PFR0_EL1" for reg in data["registers"])
    assert all(reg["warnings"] == [] for reg in data["registers"]), example
    assert "fp" in data["features"] and "asimd" in data["features"]


def test_decode_file_from_stdin():
    r = run_installed("libvirt-arm-cpu", "decode", "--file", "-", "--nonzero",
                      stdin="ID_AA64ISAR0_EL1=0x0000100010211120\n")
    assert r.code == 0, r.err
    assert "DP" in r.out and "RNDR" not in r.out


def test_features_list_and_one(run):
    r = run("features", "--kind", "hwcap")
    assert r.code == 0
    assert any(line.startswith("atomics ") and "ID_AA64ISAR0_EL1.ATOMIC >= 2" in line
               for line in r.out.splitlines())
    assert not any(line.startswith("FEAT_") for line in r.out.splitlines())
    r = run("features", "lse", "--json")
    assert json.loads(r.out) == {"name": "FEAT_LSE", "kind": "feat",
                                 "requires": "ID_AA64ISAR0_EL1.ATOMIC >= 2 (IMP)",
                                 "fields": ["ID_AA64ISAR0_EL1.ATOMIC"], "checkable": True,
                                 "llvm": "lse"}
    r = run("features", "FEAT_TME")
    assert r.code == 0 and "cannot be told from ID registers" in r.out


# -- bad input: one line, distinct exit code, no traceback -------------------

@pytest.mark.parametrize("argv, code, needles", [
    (["decode", "ID_AA64ISRA0_EL1", "1"], 2, ["unknown register 'ID_AA64ISRA0_EL1'",
                                              "did you mean ID_AA64ISAR0_EL1?"]),
    (["decode", "ID_AA64ISAR0_EL1", "0xzz"], 2, ["'0xzz' is not a number"]),
    (["decode", "ID_AA64ISAR0_EL1", "0x10000000000000000"], 2, ["does not fit in 64 bits"]),
    (["decode", "ID_AA64ISAR0_EL1", "-5"], 2, ["negative"]),
    (["decode", "ID_AA64ISAR0_EL1"], 2, ["give REGISTER VALUE"]),
    (["decode", "--file", "x", "midr", "1"], 2, ["not both"]),
    (["decode", "--bogus"], 2, ["unrecognized arguments: --bogus"]),
    (["nosuchcommand"], 2, ["libvirt-arm-cpu: error: unknown command 'nosuchcommand'"]),
    (["features", "atomic"], 2, ["unknown feature 'atomic'", "did you mean atomics?"]),
    (["decode", "--file", "/nonexistent/host.regs"], 1, ["/nonexistent/host.regs: cannot read"]),
])
def test_bad_input(run, argv, code, needles):
    assert_one_line_error(run(*argv), code, *needles)


def test_bad_dump_names_file_and_line(run, tmp_path):
    dump = tmp_path / "host.regs"
    dump.write_text("ID_AA64ISAR0_EL1=0x1\nID_AA64PFR9_EL1=0x1\n")
    assert_one_line_error(run("decode", "--file", str(dump)), 1,
                          f"{dump}:2: unknown register 'ID_AA64PFR9_EL1'",
                          "did you mean ID_AA64PFR")


def test_installed_entry_points():
    r = run_installed("libvirt-arm-cpu", "decode", "ID_AA64ISAR0_EL1", "0x0000100010211120")
    assert r.code == 0 and "DP" in r.out
    r = run_installed("libvirt-arm-cpu", "decode", "nosuch", "1")
    assert_one_line_error(r, 2, "libvirt-arm-cpu: error: unknown register 'nosuch'")
    r = run_installed("libvirt-arm-cpu", "--help")
    assert r.code == 0 and "decode" in r.out and "exit codes" in r.out
    r = run_installed("libvirt-arm-cpu-helper", "--version")
    assert r.code == 0 and "libvirt-arm-cpu-helper" in r.out


def test_no_command_prints_help(run):
    r = run()
    assert r.code == 2 and "COMMAND" in r.err


def test_broken_pipe_is_quiet():
    import subprocess
    import sys
    from pathlib import Path
    exe = Path(sys.executable).parent / "libvirt-arm-cpu"
    proc = subprocess.run(f"'{exe}' features | head -1", shell=True, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


# -- host: profiles captured in the test bed ---------------------------------

def test_host_shows_a_captured_profile(run):
    from .kvm_hosts import FIXTURES
    fixture = FIXTURES / "neoverse-n1-qemu7.2-linux6.12.xml"
    r = run("host", "--profile", str(fixture))
    assert r.code == 0, r.err
    assert "CPUs 0-1: Arm Neoverse-N1 r4p1 (MIDR 0x414fd0c1)" in r.out
    assert "QEMU: missing" in r.out and "vCPU features: pmu" in r.out
    dp = next(line for line in r.out.splitlines() if line.strip().startswith("DP "))
    assert dp.split()[2:6] == ["=", "1", "w", "(IMP)"]   # DotProd, and KVM lets it change
    midr_impl = next(line for line in r.out.splitlines()
                     if line.strip().startswith("Implementer "))
    assert "w" not in midr_impl.split()             # 6.12: MIDR is not writable
    data = json.loads(run("host", "--profile", str(fixture), "--json").out)
    assert data["writable_masks"] == "known" and data["heterogeneous"] is False
    assert data["cpus"] == [{"cpu": 0, "midr": "0x414fd0c1", "revidr": "0x0"},
                            {"cpu": 1, "midr": "0x414fd0c1", "revidr": "0x0"}]


def test_host_on_linux_7_3_marks_midr_writable(run):
    from .kvm_hosts import FIXTURES
    r = run("host", "--profile", str(FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml"))
    assert r.code == 0
    implementer = next(line for line in r.out.splitlines()
                       if line.strip().startswith("Implementer "))
    assert implementer.split()[2:5] == ["=", "0x41", "w"]


def test_host_refuses_a_non_profile(run, tmp_path):
    bad = tmp_path / "domain.xml"
    bad.write_text("<domain type='kvm'/>")
    assert_one_line_error(run("host", "--profile", str(bad)), 1, str(bad))


# -- cpu-baseline, cpu-compare, diff ------------------------------------------

def _fixture(name):
    from .kvm_hosts import FIXTURES
    return str(FIXTURES / f"{name}.xml")


def test_cpu_baseline_same_cpu_two_kernels(run, tmp_path, monkeypatch):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    r = run("cpu-baseline", _fixture("neoverse-n1-qemu7.2-linux6.12"),
            _fixture("neoverse-n1-qemu7.2-linux7.3"), "--save")
    assert r.code == 0, r.err
    import xml.etree.ElementTree as ET
    cpu = ET.fromstring(r.out)
    assert cpu.get("mode") == "custom" and cpu.get("match") == "exact"
    name = cpu.find("model").text
    feats = [f.get("name") for f in cpu.findall("feature")]
    assert {"atomics", "asimddp", "ssbs"} <= set(feats) and "FEAT_LSE" not in feats
    assert f"saved as {name}" in r.err
    # the saved model is found by name: identical to the older kernel; the newer
    # one gives it a lower PSCI version and hides a firmware register 6.12 lacks
    r = run("cpu-compare", name, _fixture("neoverse-n1-qemu7.2-linux6.12"))
    assert r.code == 0 and "is identical to the CPU provided by the host" in r.out
    r = run("cpu-compare", name, _fixture("neoverse-n1-qemu7.2-linux7.3"))
    assert r.code == 0 and "is a superset" in r.out
    assert r.out.splitlines()[1:] == ["  lowers firmware PSCI_VERSION PSCI 1.3 -> PSCI 1.1",
                                      "  lowers firmware VENDOR_HYP_BMAP_2 0x0 -> hidden"]
    r = run("cpu-baseline", _fixture("neoverse-n1-qemu7.2-linux6.12"), "--features", "--json")
    data = json.loads(r.out)
    assert "FEAT_LSE" in data["features"] and data["implementations"] == ["0x414fd0c1"]


def test_cpu_baseline_conflict_lists_every_field(run):
    r = run("cpu-baseline", _fixture("neoverse-n1-qemu7.2-linux6.12"),
            _fixture("cortex-a72-qemu7.2-linux6.12"))
    assert r.code == 1
    lines = r.err.splitlines()
    assert lines[0].startswith("libvirt-arm-cpu: error: no CPU model runs on all 2 hosts:")
    assert any(line.strip().startswith("MIDR_EL1: differs") and "capability 239" in line
               for line in lines[1:])
    assert any(line.strip().startswith("ID_AA64PFR0_EL1.FP:") for line in lines[1:])
    assert "Traceback" not in r.err


def test_cpu_compare_verdicts_and_exit_codes(run, tmp_path):
    model = tmp_path / "v1.xml"
    assert run("cpu-baseline", _fixture("neoverse-v1-qemu10.0-linux6.12"), "-o",
               str(model)).code == 0
    r = run("cpu-compare", str(model), _fixture("neoverse-n1-qemu7.2-linux6.12"))
    assert r.code == 1 and f"CPU described in {model} is incompatible with host CPU" in r.out
    assert "  ID_AA64ISAR0_EL1.RNDR: needs 1, host has 0; KVM refuses it (lower-safe)" in r.out
    r = run("cpu-compare", str(model), _fixture("neoverse-n1-qemu7.2-linux6.12"), "--error")
    assert_one_line_error(r, 1, "is incompatible with the host CPU", "more)")
    r = run("cpu-compare", str(model), _fixture("neoverse-n1-qemu7.2-linux6.12"), "--json",
            "--kvm-only")
    data = json.loads(r.out)
    assert data["result"] == "incompatible"
    assert {"register": "MIDR_EL1", "field": None, "kind": "needs-cap-239", "host": 0x414FD0C1,
            "wanted": 0x411FD402} == {k: v for k, v in next(
                x for x in data["reasons"] if x["register"] == "MIDR_EL1").items()
                if k != "message"}


def test_cpu_compare_superset_needs_sysreg_or_the_loader(run, tmp_path):
    from libvirt_arm_cpu.formats.cpumodel import to_xml
    from libvirt_arm_cpu.model import CpuModel
    from libvirt_arm_cpu.formats.profile import read_profile
    from libvirt_arm_cpu.kb.load import registers as load_kb
    kb = load_kb()
    p = read_profile(_fixture("neoverse-n1-qemu7.2-linux6.12"))
    m = CpuModel.from_profile(p, kb)
    dp = kb.field("ID_AA64ISAR0_EL1", "DP")
    m.values["ID_AA64ISAR0_EL1"] = dp.put(m.values["ID_AA64ISAR0_EL1"], 0)
    path = tmp_path / "lower.xml"
    path.write_bytes(to_xml(m, []))
    r = run("cpu-compare", str(path), _fixture("neoverse-n1-qemu7.2-linux6.12"), "--kvm-only")
    assert r.code == 0 and "Host CPU is a superset" in r.out and "lowers ID_AA64ISAR0_EL1.DP 1 -> 0" in r.out
    # the captured host has the loader: stock QEMU can be given the values
    r = run("cpu-compare", str(path), _fixture("neoverse-n1-qemu7.2-linux6.12"))
    assert r.code == 0 and "Host CPU is a superset" in r.out, r.out + r.err
    # without it (and without SYSREG_* in QEMU) nothing can change them
    from .domains import without_loader
    bare = without_loader(Path(_fixture("neoverse-n1-qemu7.2-linux6.12")), tmp_path / "bare.xml")
    r = run("cpu-compare", str(path), str(bare))
    assert r.code == 1 and "neither SYSREG_* in QEMU nor the loader installed" in r.out, r.out
    assert "libvirt-arm-cpu-loader.so) is missing" in r.out


def test_diff_shows_only_differing_fields(run):
    r = run("diff", _fixture("neoverse-n1-qemu7.2-linux6.12"), _fixture("cortex-a76-qemu7.2-linux6.12"))
    assert r.code == 0
    rows = {line.split()[0]: line.split()[1:] for line in r.out.splitlines()[1:]}
    assert rows["MIDR_EL1.PartNum"] == ["0xd0c", "0xd0b"]
    assert rows["ID_AA64PFR1_EL1.SSBS"] == ["2", "(SSBS2)", "1", "(IMP)"]
    assert "ID_AA64ISAR0_EL1.DP" not in rows           # equal on both
    r = run("diff", _fixture("neoverse-n1-qemu7.2-linux6.12"), _fixture("neoverse-n1-qemu7.2-linux7.3"))
    assert r.out.strip() == "no differences between 2 hosts"


@pytest.mark.parametrize("argv, code, needle", [
    (["cpu-baseline"], 2, "the following arguments are required: PROFILE"),
    (["cpu-compare", "no-such-model", "x.xml"], 2, "unknown CPU model 'no-such-model'"),
    (["cpu-compare", "../no/such/model", "x.xml"], 2, "no such file"),
    (["cpu-compare", "a..b", "x.xml"], 2, "not a CPU model name"),
    (["diff", "tests/data/hosts/a64fx-qemu7.2-linux6.12.xml"], 2, "at least two profiles"),
])
def test_cpu_commands_bad_usage(run, argv, code, needle):
    assert_one_line_error(run(*argv), code, needle)


def test_cpu_baseline_bad_profiles(run, tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(open(_fixture("a64fx-qemu7.2-linux6.12"), "rb").read().replace(
        b'writable-masks="known"', b'writable-masks="perhaps"'))
    # the reader refuses it itself (the schema is not read for a fleet)
    assert_one_line_error(run("cpu-baseline", str(bad)), 1, str(bad),
                          "<registers writable-masks='perhaps'>: expected known or unknown")
    # an element only the schema knows is wrong: --validate reads the schema
    extra = tmp_path / "extra.xml"
    extra.write_bytes(open(_fixture("a64fx-qemu7.2-linux6.12"), "rb").read().replace(
        b"</hostprofile>", b"<bogus/></hostprofile>"))
    assert run("cpu-baseline", str(extra)).code == 0
    assert_one_line_error(run("cpu-baseline", "--validate", str(extra)), 1, str(extra),
                          "not a valid host profile")
    x86 = tmp_path / "x86.xml"
    x86.write_bytes(open(_fixture("a64fx-qemu7.2-linux6.12"), "rb").read().replace(
        b'machine="aarch64"', b'machine="x86_64"'))
    assert_one_line_error(run("cpu-baseline", str(x86)), 1, "profile of a x86_64 machine")
    assert_one_line_error(run("cpu-baseline", str(tmp_path / "missing.xml")), 1, "cannot read")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("cpu-baseline", str(empty)), 2, "no *.xml host profiles")


def test_cpu_baseline_profile_disagreeing_with_the_kb(run, tmp_path):
    data = open(_fixture("neoverse-n1-qemu7.2-linux6.12"), "rb").read()
    renamed = tmp_path / "renamed.xml"
    renamed.write_bytes(data.replace(b'name="ID_AA64ISAR0_EL1"', b'name="ID_AA64ISAR9_EL1"'))
    assert_one_line_error(run("cpu-baseline", str(renamed)), 1, str(renamed),
                          "ID_AA64ISAR9_EL1 at encoding S3_0_C0_C6_0 is ID_AA64ISAR0_EL1")
    import re
    m = re.search(rb'name="CTR_EL0"[^>]*value="(0x[0-9a-f]+)"', data)
    ctr = int(m.group(1), 16)
    res1 = tmp_path / "res1.xml"
    res1.write_bytes(data.replace(m.group(1), f"0x{ctr & ~(1 << 31):016x}".encode(), 1))
    assert_one_line_error(run("cpu-baseline", str(res1)), 1, "CTR_EL0", "RES1 bits 0x80000000 clear")


def test_cpu_baseline_over_a_fleet_reads_each_cpu_once(run, tmp_path):
    """Many files with the same content but their own identity: each must
    still be checked (a broken identity is refused), and the result is the
    same as for one of them."""
    src = open(_fixture("neoverse-n1-qemu7.2-linux6.12"), "rb").read()
    for i in range(50):
        named = re.sub(rb'hostname="[^"]*"', f'hostname="h{i:02d}"'.encode(), src, count=1)
        (tmp_path / f"h{i:02d}.xml").write_bytes(named)
    many = run("cpu-baseline", str(tmp_path), "--json")
    one = run("cpu-baseline", _fixture("neoverse-n1-qemu7.2-linux6.12"), "--json")
    assert many.code == one.code == 0
    a, b = json.loads(many.out), json.loads(one.out)
    assert a["registers"] == b["registers"] and len(a["hosts"]) == 50
    # the whole model, not only its values: the copies keep the register
    # list, firmware and vCPU-feature effects the name digests (they were
    # dropped for every copy after the first)
    assert a["name"] == b["name"]
    (tmp_path / "h07.xml").write_bytes(src.replace(b"<identity ", b"<identiy ", 1))
    assert_one_line_error(run("cpu-baseline", str(tmp_path)), 1, "h07.xml")


def test_cpu_compare_refuses_unknown_feature_names(run, tmp_path):
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", _fixture("neoverse-n1-qemu7.2-linux6.12"), "-o", str(model)).code == 0
    model.write_text(model.read_text().replace('name="aes"', 'name="aess"'))
    assert_one_line_error(run("cpu-compare", str(model), _fixture("neoverse-n1-qemu7.2-linux6.12")),
                          1, str(model), "<feature name='aess'>", "did you mean aes")


# -- import -------------------------------------------------------------------

def test_import_text_dump_takes_part_in_baseline(run, tmp_path):
    out = tmp_path / "n1.xml"
    r = run("import", str(EXAMPLES / "qemu-neoverse-n1.regs"), "-o", str(out))
    assert r.code == 0 and "32 registers" in r.err
    from libvirt_arm_cpu.formats.profile import read_profile
    p = read_profile(str(out))                         # schema-valid
    assert p.values()["ID_AA64ISAR0_EL1"] == 0x0000100010211120
    assert p.masks_known and all(not r.writable for r in p.registers)    # --writable none
    assert p.cpus[0].midr == 0x414FD0C1 and p.hostname == "qemu-neoverse-n1"
    # TRM reset values are not what KVM shows a guest: the real N1 host cannot run them
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", str(out), "-o", str(model)).code == 0
    r = run("cpu-compare", str(model), _fixture("neoverse-n1-qemu7.2-linux6.12"), "--kvm-only")
    assert r.code == 1 and "ID_AA64PFR0_EL1.EL3: needs 1, host has 0" in r.out


def _firecracker_doc(profile_path, with_x=False):
    from libvirt_arm_cpu.formats.profile import read_profile
    p = read_profile(profile_path)
    mods = [{"addr": f"{r.kvm_id:#x}", "bitmap": "0b" + format(r.value, "064b")}
            for r in p.registers if r.value is not None]
    mods.append({"addr": "0x6030000000100000", "bitmap": "0b" + "0" * 64})   # a core register
    if with_x:
        mods[0]["bitmap"] = "0b" + "x" * 8 + "0" * 56
    return {"firecracker_version": "1.12.0", "kernel_version": "6.12.117",
            "guest_cpu_config": {"kvm_capabilities": [], "vcpu_features": [],
                                 "reg_modifiers": mods}}


def test_import_firecracker_fingerprint_with_reused_masks(run, tmp_path):
    fixture = _fixture("neoverse-n1-qemu7.2-linux6.12")
    dump = tmp_path / "fc.json"
    dump.write_text(json.dumps(_firecracker_doc(fixture)))
    out = tmp_path / "fc.xml"
    r = run("import", str(dump), "--writable", fixture, "-o", str(out))
    assert r.code == 0, r.err
    from libvirt_arm_cpu.formats.profile import read_profile
    imported, probed = read_profile(str(out)), read_profile(fixture)
    assert imported.kernel_release == "6.12.117"
    assert [(r.name, r.value, r.writable) for r in imported.registers] == \
        [(r.name, r.value, r.writable) for r in probed.registers]
    r = run("diff", str(out), fixture)
    assert r.out.strip() == "no differences between 2 hosts"


def test_import_all_known_is_an_announced_assumption(run, tmp_path):
    out = tmp_path / "a.xml"
    r = run("import", str(EXAMPLES / "qemu-cortex-a72.regs"), "--writable", "all-known",
            "-o", str(out))
    assert r.code == 0 and "ASSUMES" in r.err
    from libvirt_arm_cpu.formats.profile import read_profile
    p = read_profile(str(out))
    isar0 = p.register("ID_AA64ISAR0_EL1")
    assert isar0.writable & (0xF << 44) == 0xF << 44         # DP: lower-safe, so "writable"
    assert p.register("MIDR_EL1").writable == 0


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "not a Firecracker cpu-template-helper dump"),
    ('{"reg_modifiers": [{"addr": "0x603000000013c030", "bitmap": "0bxx01"}]}',
     "ID_AA64ISAR0_EL1: bit 63 is 'x' (keep host value): a template, not a dump"),
    ('{"reg_modifiers": [{"addr": "0x603000000013c030", "bitmap": "0b012"}]}',
     "is not a 0b... bit string"),
    ('{"reg_modifiers": [{"addr": "0x603000000013c030", "bitmap": "0b' + "0" * 64 + '"}, '
     '{"addr": "0x603000000013c030", "bitmap": "0b' + "1" * 64 + '"}]}',
     "reg_modifiers[1]: ID_AA64ISAR0_EL1 (0x603000000013c030) appears twice"),
    ("ID_AA64ISAR0_EL1=0x1\nFOO=2\n", ":2: unknown register 'FOO'"),
])
def test_import_bad_dumps(run, tmp_path, content, needle):
    dump = tmp_path / "bad"
    dump.write_text(content)
    assert_one_line_error(run("import", str(dump), "-o", str(tmp_path / "o.xml")), 1, needle)
    assert not (tmp_path / "o.xml").exists()


def test_cpu_baseline_exclude_incompatible_and_pools(run):
    hosts = [_fixture(n) for n in ("neoverse-n1-qemu7.2-linux6.12", "cortex-a72-qemu7.2-linux6.12",
                                   "neoverse-n1-qemu7.2-linux7.3", "cortex-a72-qemu7.2-linux7.3",
                                   "a64fx-qemu7.2-linux6.12")]
    r = run("cpu-baseline", *hosts, "--exclude-incompatible", "--json")
    assert r.code == 0
    assert "left out 3 of 5 hosts: cortex-a72-qemu7.2-linux6.12 cortex-a72-qemu7.2-linux7.3 " \
           "a64fx-qemu7.2-linux6.12" in r.err
    assert sorted(json.loads(r.out)["hosts"]) == ["neoverse-n1-qemu7.2-linux6.12",
                                                  "neoverse-n1-qemu7.2-linux7.3"]
    assert json.loads(r.out)["left_out"] == ["cortex-a72-qemu7.2-linux6.12",
                                             "cortex-a72-qemu7.2-linux7.3",
                                             "a64fx-qemu7.2-linux6.12"]
    # a fleet's many left out: ten named on stderr, all in --json
    from .kvm_hosts import FIXTURES
    many = [str(p) for p in sorted(FIXTURES.glob("*.xml"))]
    r = run("cpu-baseline", *many, "--exclude-incompatible", "--json")
    assert r.code == 0, r.err
    left = json.loads(r.out)["left_out"]
    assert len(left) > 10
    line = f"cpu-baseline: left out {len(left)} of {len(many)} hosts: {' '.join(left[:10])} " \
           f"and {len(left) - 10} more (--json lists them all)\n"
    assert r.err == line
    r = run("cpu-baseline", *hosts, "--pools", "--json")
    assert [p["hosts"] for p in json.loads(r.out)] == [
        ["neoverse-n1-qemu7.2-linux6.12", "neoverse-n1-qemu7.2-linux7.3"],
        ["cortex-a72-qemu7.2-linux6.12", "cortex-a72-qemu7.2-linux7.3"],
        ["a64fx-qemu7.2-linux6.12"]]


# -- cpu-compare against a libvirt host <cpu> (feature level) ----------------

def _capabilities(features: list[str], arch: str = "aarch64") -> str:
    feats = "".join(f"<feature name='{f}'/>" for f in features)
    return (f"<capabilities><host><uuid>00000000-0000-0000-0000-000000000000</uuid><cpu>"
            f"<arch>{arch}</arch><model>Neoverse-N1</model><vendor>ARM</vendor>"
            f"<topology sockets='1' dies='1' cores='2' threads='1'/>{feats}</cpu></host>"
            f"</capabilities>")


def test_compare_with_a_libvirt_host_cpu_is_feature_level(run, tmp_path):
    from libvirt_arm_cpu.model import CpuModel
    from libvirt_arm_cpu.formats.profile import read_profile
    from libvirt_arm_cpu.kb import load as kb_load
    fixture = _fixture("neoverse-n1-qemu7.2-linux6.12")
    model_path = tmp_path / "n1.xml"
    assert run("cpu-baseline", fixture, "-o", str(model_path)).code == 0
    m = CpuModel.from_profile(read_profile(fixture), kb_load.registers())
    hw = [f.key for f in kb_load.features().present(m.values) if f.kind == "hwcap"]
    assert "sha2" in hw and "asimddp" in hw
    caps = tmp_path / "caps.xml"
    caps.write_text(_capabilities(hw))
    r = run("cpu-compare", str(model_path), str(caps), "--json")
    assert r.code == 0 and json.loads(r.out)["result"] == "identical"
    assert json.loads(r.out)["precision"] == "features"
    caps.write_text(_capabilities(hw + ["sve"]))
    r = run("cpu-compare", str(model_path), str(caps))
    assert r.code == 0 and "superset" in r.out and "hides sve" in r.out
    assert "compared at feature level only" in r.out
    caps.write_text(_capabilities([f for f in hw if f != "sha2"]))
    r = run("cpu-compare", str(model_path), str(caps))
    assert r.code == 1 and "incompatible" in r.out
    assert "feature sha2 (ID_AA64ISAR0_EL1.SHA2)" in r.out
    r = run("cpu-compare", str(model_path), str(caps), "--error")
    assert_one_line_error(r, 1, "incompatible with the host CPU (feature level): feature sha2")
    caps.write_text(_capabilities(hw, arch="x86_64"))
    assert_one_line_error(run("cpu-compare", str(model_path), str(caps)), 1,
                          "host CPU of a x86_64 machine, not aarch64")
    caps.write_text("<?xml version='1.0'?><!DOCTYPE c [<!ENTITY a 'aaaa'>]><capabilities/>")
    assert_one_line_error(run("cpu-compare", str(model_path), str(caps)), 1,
                          "caps.xml:1: refused: a DOCTYPE")


def test_compare_reads_the_host_profile_from_stdin(tmp_path):
    """'-' is read once: the sniffing for a libvirt host <cpu> must not eat it."""
    from pathlib import Path
    fixture = _fixture("neoverse-n1-qemu7.2-linux7.3")
    model = tmp_path / "m.xml"
    assert run_installed("libvirt-arm-cpu", "cpu-baseline", fixture, "-o", str(model)).code == 0
    r = run_installed("libvirt-arm-cpu", "cpu-compare", str(model), "-",
                      stdin=Path(fixture).read_text())
    assert r.code == 0 and "is identical to the CPU provided by the host" in r.out, r.err
