"""export nfd|traits|firecracker: the formats as their upstreams define them
(NFD's local feature file, placement's trait names and Nova's provider config
file, Firecracker's custom CPU template), from captured host profiles."""

from __future__ import annotations

import json
import re

import pytest

from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, compare
from libvirt_arm_cpu.errors import DataError
from libvirt_arm_cpu.formats import firecracker, nfd, traits
from libvirt_arm_cpu.model import CpuModel

from .conftest import assert_one_line_error
from .kvm_hosts import fixture_path, fixture_profile

MAX, MAX_NO_LPA2 = "max-qemu10.0-linux7.3", "max-lpa2-off-qemu10.0-linux7.3"
N1, N1_73 = "neoverse-n1-qemu7.2-linux6.12", "neoverse-n1-qemu7.2-linux7.3"


# -- node-feature-discovery ------------------------------------------------------

@pytest.mark.parametrize("key, value, ok", [
    ("feature.node.kubernetes.io/arm-cpu-model.n1-v1", "true", True),
    ("cpu-model.node.kubevirt.io/neoverse-n1", "true", True),
    ("no-namespace", "true", False),
    ("Upper.Case/x", "true", False),
    ("example.com/" + "a" * 64, "true", False),
    ("example.com/a+b", "true", False),
    ("example.com/-a", "true", False),
    ("example.com/a", "bad value", False),
])
def test_label_rules(key, value, ok):
    assert (nfd.label_problem(key, value) is None) == ok


def test_feature_file_format():
    text, notes = nfd.feature_file(["n1-v1", "a+b"], ["aes", "sve2"], ["made by a test", ""])
    assert text.splitlines() == [
        "# made by a test", "#",
        "feature.node.kubernetes.io/arm-cpu-model.n1-v1",
        "# CPU model a+b left out: 'arm-cpu-model.a+b' is not a label name (at most 63 "
        "letters, digits, '-', '_', '.', beginning and ending with a letter or digit)",
        "feature.node.kubernetes.io/arm-cpu-hwcap.aes",
        "feature.node.kubernetes.io/arm-cpu-hwcap.sve2"]
    assert len(notes) == 1 and notes[0].startswith("CPU model a+b left out")
    # NFD reads '# +...' as a directive: no comment of ours looks like one
    assert not any(line.startswith("# +") for line in text.splitlines())
    with pytest.raises(DataError, match="label prefix"):
        nfd.feature_file(["x"], [], model_prefix="Bad Prefix/")
    with pytest.raises(DataError, match="nfd-worker ignores one over 65536"):
        nfd.feature_file([f"m{i:05d}" for i in range(2000)], [])


def _nfd_labels(text: str) -> dict[str, str]:
    """NFD's local source's reading of a feature file: <key>[=<value>], '#'
    comments, the value 'true' when left out."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key] = value or "true"
    return out


def test_export_nfd_from_a_profile(run, models_dir, catalog):
    r = run("export", "nfd", "--profile", fixture_path(MAX_NO_LPA2))
    assert r.code == 0, r.err
    labels = _nfd_labels(r.out)
    assert all(nfd.label_problem(k, v) is None for k, v in labels.items())
    models = {k[len(nfd.MODEL_PREFIX):] for k in labels if k.startswith(nfd.MODEL_PREFIX)}
    # of the saved models (the named ones come with the package, and change)
    assert "max-no-lpa2" in models and not {"max-lpa2", "n1"} & models
    hwcaps = {k[len(nfd.FEATURE_PREFIX):] for k in labels if k.startswith(nfd.FEATURE_PREFIX)}
    assert {"aes", "atomics", "sve", "sve2"} <= hwcaps
    assert {f.key for f in catalog if f.kind == "hwcap"} >= hwcaps
    assert re.fullmatch(rf"# runs {len(models)} of \d+ saved and named CPU models",
                        r.out.splitlines()[1])
    # KubeVirt-style labels by prefix; to a file
    out = models_dir.parent / "features"
    r = run("export", "nfd", "--profile", fixture_path(MAX), "--model-prefix",
            "cpu-model.node.kubevirt.io/", "-o", str(out))
    assert r.code == 0 and r.out == ""
    assert "cpu-model.node.kubevirt.io/max-lpa2" in _nfd_labels(out.read_text())


# -- placement traits -----------------------------------------------------------

def test_trait_names():
    assert traits.model_trait("neoverse-n1-v1") == "CUSTOM_ARM_CPU_MODEL_NEOVERSE_N1_V1"
    assert traits.model_trait("arm64-1ae591bf1d2c") == "CUSTOM_ARM_CPU_MODEL_ARM64_1AE591BF1D2C"
    assert traits.feature_trait("asimddp") == "HW_CPU_AARCH64_ASIMDDP"
    assert traits.feature_trait("sve2") == "CUSTOM_ARM_CPU_HWCAP_SVE2"
    with pytest.raises(DataError, match="both become trait CUSTOM_ARM_CPU_MODEL_A_B"):
        traits.traits(["a.b", "a-b"], [])
    with pytest.raises(DataError, match="at most 255"):
        traits.model_trait("x" * 240)


def test_export_traits_every_name_is_valid(run, models_dir):
    r = run("export", "traits", "--profile", fixture_path(MAX))
    assert r.code == 0, r.err
    names = r.out.split()
    assert "CUSTOM_ARM_CPU_MODEL_MAX_LPA2" in names and len(set(names)) == len(names)
    assert "CUSTOM_ARM_CPU_MODEL_N1" not in names
    for name in names:
        assert len(name) <= traits.MAX_LENGTH
        if name.startswith("HW_CPU_AARCH64_"):
            assert name[len("HW_CPU_AARCH64_"):] in traits.OS_TRAITS_AARCH64
        else:
            assert re.fullmatch(r"^CUSTOM_[A-Z0-9_]+$", name), name
    assert {"HW_CPU_AARCH64_SVE", "HW_CPU_AARCH64_ATOMICS", "CUSTOM_ARM_CPU_HWCAP_SVE2"} \
        <= set(names)
    data = json.loads(run("export", "traits", "--profile", fixture_path(MAX), "--format",
                          "json").out)
    assert data["traits"] == names
    assert data["models"]["max-lpa2"] == "CUSTOM_ARM_CPU_MODEL_MAX_LPA2"
    assert set(data["models"].values()) <= set(names)


def test_nova_provider_config(run, models_dir):
    r = run("export", "traits", "--profile", fixture_path(MAX), "--format", "provider-yaml")
    assert r.code == 0, r.err
    body = [line for line in r.out.splitlines() if not line.startswith("#")]
    assert body[:7] == ["meta:", "  schema_version: '1.0'", "providers:", "  - identification:",
                        "      uuid: '$COMPUTE_NODE'", "    traits:", "      additional:"]
    items = [line.removeprefix("        - ") for line in body[7:]]
    # Nova takes custom traits only (nova/compute/provider_config.py)
    assert "CUSTOM_ARM_CPU_MODEL_MAX_LPA2" in items
    assert all(re.fullmatch(r"CUSTOM_[A-Z0-9_]+", t) for t in items)
    assert "CUSTOM_ARM_CPU_HWCAP_SVE2" in items
    empty = traits.provider_yaml(["HW_CPU_AARCH64_FP"],
                                 provider="5213b75d-9260-42a6-b236-f39b0fd10561")
    assert "      uuid: '5213b75d-9260-42a6-b236-f39b0fd10561'\n" in empty
    assert empty.endswith("      additional: []\n")
    r = run("export", "traits", "--profile", fixture_path(MAX), "--format", "provider-yaml",
            "--provider-uuid", "nope")
    assert_one_line_error(r, 1, "not a resource provider UUID")


# -- Firecracker ------------------------------------------------------------------

def _valid_template(data: dict, kb) -> None:
    """The shape of Firecracker's docs/cpu_templates/schema.json for aarch64."""
    assert set(data) <= {"kvm_capabilities", "vcpu_features", "reg_modifiers"}
    for m in data["reg_modifiers"]:
        assert set(m) == {"addr", "bitmap"}
        assert kb.by_kvm_id(int(m["addr"], 16)) is not None, m["addr"]
        assert re.fullmatch(r"0b[01x]{64}", m["bitmap"]), m["bitmap"]
    for f in data.get("vcpu_features", []):
        assert set(f) == {"index", "bitmap"} and isinstance(f["index"], int)
        assert re.fullmatch(r"0b[01x]{1,32}", f["bitmap"])


def _apply(bitmap: str, value: int) -> int:
    """Firecracker's reading of a bitmap: 0 clears, 1 sets, x keeps."""
    bits = bitmap[2:].rjust(64, "x")
    for i, ch in enumerate(reversed(bits)):
        if ch == "0":
            value &= ~(1 << i)
        elif ch == "1":
            value |= 1 << i
    return value


def test_firecracker_template_gives_a_host_the_model(kb):
    """A model with DotProd lowered, on the host it came from: applying the
    template to the host's values gives every register of the model."""
    host = fixture_profile(N1)
    model = CpuModel.from_profile(host, kb)
    dp = kb.field("ID_AA64ISAR0_EL1", "DP")
    model.values["ID_AA64ISAR0_EL1"] = dp.put(model.values["ID_AA64ISAR0_EL1"], 0)
    assert compare(model, host, kb, check_qemu=False).result != INCOMPATIBLE
    data, notes = firecracker.template(model, kb)
    _valid_template(data, kb)
    assert "vcpu_features" not in data
    by_addr = {int(m["addr"], 16): m["bitmap"] for m in data["reg_modifiers"]}
    isar0 = kb.register("ID_AA64ISAR0_EL1")
    assert by_addr[isar0.kvm_id][2:][63 - dp.lsb - 3:64 - dp.lsb] == "0000"
    values = host.values()
    for name, want in model.values.items():
        reg = kb.register(name)
        if reg.kind in ("affinity", "implementation-id"):
            continue
        have = values.get(name, 0)      # 0: a register this kernel does not know
        got = _apply(by_addr[reg.kvm_id], have) if reg.kvm_id in by_addr else have
        assert got == want, name
    assert kb.register("MIDR_EL1").kvm_id not in by_addr     # Linux 6.12: the host's MIDR
    # Linux 7.3 (KVM capability 239): the model's MIDR too
    data, _ = firecracker.template(CpuModel.from_profile(fixture_profile(N1_73), kb), kb)
    midr = next(m["bitmap"] for m in data["reg_modifiers"]
                if int(m["addr"], 16) == kb.register("MIDR_EL1").kvm_id)
    assert int(midr[2:].replace("x", "0"), 2) == 0x414FD0C1


def test_firecracker_template_switches_vcpu_features_off(kb):
    model = CpuModel.from_profile(fixture_profile(MAX), kb, off=("sve",))
    data, _ = firecracker.template(model, kb)
    _valid_template(data, kb)
    assert data["vcpu_features"] == [{"index": 0, "bitmap": "0b0xxxx"}]   # KVM_ARM_VCPU_SVE = 4
    assert firecracker.bitmap(0b1010, 0b0110, 4) == "0bx01x"


def test_export_firecracker(run, models_dir, kb):
    r = run("export", "firecracker", "n1", "--profile", fixture_path(N1))
    assert r.code == 0, r.err
    _valid_template(json.loads(r.out), kb)
    assert "note: firmware pseudo-registers" in r.err
    r = run("export", "firecracker", "max-lpa2", "--profile", fixture_path(N1))
    assert_one_line_error(r, 1, "cannot run CPU model max-lpa2", "more)")
    assert_one_line_error(run("export", "firecracker"), 2, "needs the CPU MODEL")
    assert_one_line_error(run("export", "nfd", "n1"), 2, "takes no MODEL")
    assert_one_line_error(run("export", "firecracker", "n2"), 2, "unknown CPU model 'n2'")
