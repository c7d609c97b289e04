"""The test bed's emulated hosts (contrib/testbed/hosts.txt) and the guest job
every boot runs: probe this host, then try-apply scenarios built from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTS_FILE = ROOT / "contrib" / "testbed" / "hosts.txt"
FIXTURES = ROOT / "tests" / "data" / "hosts"


@dataclass(frozen=True)
class Host:
    name: str
    kernel: str
    qemu: str
    cpu: str

    @property
    def fixture(self) -> Path:
        return FIXTURES / f"{self.name}-qemu{self.qemu}-linux{self.kernel}.xml"

    @property
    def id(self) -> str:
        return f"{self.name}-qemu{self.qemu}-linux{self.kernel}"


def fixture_path(name: str) -> str:
    """tests/data/hosts/NAME.xml (NAME: a test-bed host, e.g. max-qemu10.0-linux7.3)."""
    return str(FIXTURES / f"{name}.xml")


def fixture_profile(name: str):
    """That fixture's host profile (the reader's checks, not the schema's)."""
    from libvirt_arm_cpu.formats.profile import read_profile
    return read_profile(fixture_path(name), validate_schema=False)


def hosts() -> list[Host]:
    out = []
    for line in HOSTS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, kernel, qemu, cpu = line.split()
            out.append(Host(name, kernel, qemu, cpu))
    return out


def fidelity_requests(host: Host) -> dict[str, dict[str, str]]:
    """The CPU models to try on *host*'s real KVM (issue: compare must agree
    with the kernel): the baseline of *host* with every other fixture host
    (same CPU on other kernels included), the baseline of all hosts of its
    kernel, and every other host's own model.  Each request holds the vCPU
    features the model switches off ("off") and only the registers that
    differ from what *host* reads with them off ("regs")."""
    from libvirt_arm_cpu.engine.baseline import baseline
    from libvirt_arm_cpu.model import CpuModel
    from libvirt_arm_cpu.formats.profile import read_profile
    from libvirt_arm_cpu.kb import load as kb_load

    kb = kb_load.registers()
    profiles = {h.id: read_profile(str(h.fixture), validate_schema=False)
                for h in hosts() if h.fixture.exists()}
    if host.id not in profiles:
        return {}
    models = {k: CpuModel.from_profile(p, kb, k) for k, p in profiles.items()}
    mine = models[host.id]
    candidates: dict[str, CpuModel] = {}
    for other, m in models.items():
        if other == host.id:
            continue
        candidates[f"own:{other}"] = m
        pair = baseline([mine, m], kb, kb_load.dependencies(), [host.id, other])
        if pair.ok:
            candidates[f"pair:{other}"] = pair.model
        else:
            # No common model: the first conflict of each kind (a field; a
            # whole register such as MIDR or CLIDR) that blames this host must
            # be one its kernel really refuses (the other host's value there)
            kinds = set()
            for c in pair.conflicts:
                kind = "field" if c.field else "register"
                if kind in kinds or host.id not in c.reason:
                    continue
                kinds.add(kind)
                reg = kb.register(c.register)
                value = m.values.get(c.register, 0)
                if c.field is not None:
                    f = reg.field(c.field)
                    value = f.put(mine.values.get(c.register, 0), f.get(value))
                candidates[f"refused:{other}:{c.register}.{c.field or '*'}"] = CpuModel(
                    {**mine.values, c.register: value}, mine.writable)
        # the same, as if the two were one implementation: exercises every
        # other field's rule even where MIDR alone would refuse
        alike = CpuModel({**m.values, **{r: mine.values.get(r, 0) for r in IMPL_REGS}},
                         m.writable, m.imp_id_writable, m.hosts, m.implementations)
        pair = baseline([mine, alike], kb, kb_load.dependencies())
        if pair.ok:
            candidates[f"fields:{other}"] = pair.model
    for seed in range(6):
        candidates[f"lowered:{seed}"] = lowered(mine, kb, seed)
    for rule_id, model in repaired(mine, kb).items():
        candidates[f"repaired:{rule_id}"] = model
    same_kernel = [m for k, m in models.items() if k.endswith(f"linux{host.kernel}")]
    whole = baseline(same_kernel, kb, kb_load.dependencies())
    if whole.ok:
        candidates["all-on-kernel"] = whole.model
    me = profiles[host.id]
    out = {}
    for name, m in candidates.items():
        # a model that switches vCPU features off is tried on a vCPU with them
        # off, against what this host reads that way (the probe measured it)
        base = me.values(m.vcpu_off) if m.vcpu_off else mine.values
        out[name] = {"off": list(m.vcpu_off),
                     "regs": {r: f"{v:#x}" for r, v in m.values.items()
                              if base.get(r, 0) != v or r not in base}}
    return out


IMPL_REGS = ("MIDR_EL1", "REVIDR_EL1", "AIDR_EL1")


def repaired(model, kb, limit: int = 8) -> dict:
    """Up to *limit* models made by lowering, within what this host
    accepts, one field a dependency rule reads so that the rule breaks,
    then repairing with the consistency module: each must run on the host."""
    from libvirt_arm_cpu.engine.consistency import make_consistent
    from libvirt_arm_cpu.model import CpuModel
    from libvirt_arm_cpu.engine.rules import source_accepts
    from libvirt_arm_cpu.kb import load as kb_load
    book = kb_load.dependencies()
    out = {}
    for rule in book.enforced:
        if len(out) >= limit or rule.violated(model.values):
            continue
        for reg, name in sorted(rule.fields()):
            if name == "*" or reg not in model.values:
                continue
            f = kb.register(reg).field(name)
            cur = f.get(model.values[reg])
            lower = [v for v in range(f.max_value + 1) if f.order(v) < f.order(cur)
                     and source_accepts(model.values, model.writable, reg, f, v)]
            broken = [v for v in lower if rule.violated(
                {**model.values, reg: f.put(model.values[reg], v)})]
            if not broken:
                continue
            values = {**model.values, reg: f.put(model.values[reg], broken[0])}
            fixed = make_consistent(CpuModel(values, model.writable), [model], kb, book)
            if fixed.lowered and not rule.violated(fixed.model.values):
                out[rule.id] = fixed.model
                break
    return out


def lowered(model, kb, seed: int):
    """*model* with random fields moved by random amounts, most of them
    within what KVM allows (lower-safe fields lowered), some not: a mix of
    supersets and incompatible models, the same on every run."""
    import random

    from libvirt_arm_cpu.model import CpuModel
    from libvirt_arm_cpu.kb.registers import LOWER_SAFE
    from libvirt_arm_cpu.engine.rules import covers
    rnd = random.Random(seed)
    values = dict(model.values)
    for name in sorted(values):
        reg = kb.register(name)
        if reg.kind != "feature-id":
            continue
        for f in reg.fields:
            if rnd.random() > 0.12:
                continue
            cur = f.get(values[name])
            if seed % 3 != 2:       # within the rules: lower a writable lower-safe field
                if f.effective_policy != LOWER_SAFE or not covers(model.writable.get(name), f):
                    continue
                choices = [v for v in range(min(f.max_value + 1, 16))
                           if f.order(v) <= f.order(cur)]
            else:                   # anything, anywhere
                choices = list(range(min(f.max_value + 1, 16)))
            values[name] = f.put(values[name], rnd.choice(choices))
    return CpuModel(values, model.writable, model.imp_id_writable, model.hosts,
                    model.implementations)


FIDELITY_SNIPPET = """\
import json
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.host.probe import open_kvm
from libvirt_arm_cpu.host.tryapply import try_apply
kb = kb_load.registers()
requests = json.load(open("/tmp/fidelity-requests.json"))
out = {}
with open_kvm() as kvm:
    for name, req in requests.items():
        wanted = req["regs"]
        if not wanted:
            out[name] = {"ok": True, "not_accepted": []}
            continue
        r = try_apply(kvm, kb, {k: int(v, 16) for k, v in wanted.items()},
                      kvm.default_features().without(req["off"]))
        out[name] = {"ok": r.ok, "not_accepted": [
            f"{v.register}:{v.status}:{v.errno}" for v in r.verdicts
            if v.status not in ("unchanged", "accepted")]}
json.dump(out, open("/out/fidelity.json", "w"), indent=1)
"""


def guest_job(scenarios: bool = True, extra: str = "", host: Host | None = None,
              name: str | None = None) -> str:
    """The busybox-sh job: name the guest (*name*, or *host*'s id such as
    neoverse-n1-qemu7.2-linux6.12, so that its profile says which host it
    is; the test-bed guests have none), probe into /out/host.xml (exit code
    in /out/probe.rc, seconds in /out/probe.seconds), then the scenarios."""
    name = name or (host.id if host is not None else None)
    job = "set -u\n"
    if name is not None:
        job += f"hostname {name}\n"
    job += """\
up() { cut -d' ' -f1 /proc/uptime; }
t0=$(up)
python3 -m libvirt_arm_cpu.helper probe --output /out/host.xml --quiet 2>/out/probe.stderr
echo $? > /out/probe.rc
t1=$(up)
echo "$t0 $t1" > /out/probe.seconds
[ -f /out/host.xml ] && python3 - > /out/probe-timing.json 2>/out/probe-timing.stderr <<'TIMING_EOF'
# The probe's KVM part with and without the vCPU-feature-off variants, 3 runs each
import json, time
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.host.probe import open_kvm, probe_kvm
kb = kb_load.registers()
out = {"default_ms": [], "with_variants_ms": []}
with open_kvm() as kvm:
    for _ in range(3):
        for key, variants in (("default_ms", False), ("with_variants_ms", True)):
            t = time.perf_counter()
            probe_kvm(kvm, kb, variants)
            out[key].append(round((time.perf_counter() - t) * 1000, 1))
print(json.dumps(out))
TIMING_EOF
"""
    if scenarios:
        script = (ROOT / "tests" / "kvm_guest_scenarios.py").read_text()
        job += ("cat > /tmp/scenarios.py <<'SCENARIOS_EOF'\n" + script + "SCENARIOS_EOF\n"
                "[ -f /out/host.xml ] && python3 /tmp/scenarios.py 2>/out/scenarios.stderr\n"
                "echo $? > /out/scenarios.rc\n")
    if host is not None:
        import json
        job += ("cat > /tmp/fidelity-requests.json <<'FIDELITY_EOF'\n"
                + json.dumps(fidelity_requests(host)) + "\nFIDELITY_EOF\n"
                "cat > /tmp/fidelity.py <<'FIDELITY_EOF'\n" + FIDELITY_SNIPPET + "FIDELITY_EOF\n"
                "python3 /tmp/fidelity.py 2>/out/fidelity.stderr; echo $? > /out/fidelity.rc\n")
    return job + extra
