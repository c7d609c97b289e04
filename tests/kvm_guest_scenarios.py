"""Runs INSIDE the arm64 test-bed guest (as /tmp/scenarios.py), after the probe.

Builds requests from this host's probed profile (/out/host.xml), runs the
real helper on each, and writes what happened to /out/scenarios.json:
{scenario: {"rc": int, "stderr": str, "result": <try-apply --json> | null}}.
"""

import json
import os
import subprocess
import sys

from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.kb.load import registers as load_kb

kb = load_kb()
profile = read_profile("/out/host.xml", validate_schema=False)
values = profile.values()
masks = {r.name: r.writable for r in profile.registers}
isar0_reg = kb.register("ID_AA64ISAR0_EL1")
isar0 = values["ID_AA64ISAR0_EL1"]
mask = masks["ID_AA64ISAR0_EL1"] or 0
out = {}


def helper(name, argv, dump=None, as_user=None):
    path = f"/tmp/{name}.regs"
    if dump is not None:
        with open(path, "w") as f:
            f.write("".join(f"{k}={v:#018x}\n" for k, v in dump.items()))
    cmd = [sys.executable, "-m", "libvirt_arm_cpu.helper", *argv]
    cmd = [a.replace("@DUMP", path) for a in cmd]
    pre = None
    if as_user is not None:
        def pre():
            os.setgid(as_user)
            os.setuid(as_user)
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pre, timeout=120)
    try:
        result = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        result = None
    out[name] = {"rc": proc.returncode, "stderr": proc.stderr, "result": result,
                 "request": {k: f"{v:#018x}" for k, v in (dump or {}).items()}}


dp = isar0_reg.field("DP")
if dp.get(isar0):
    helper("lower_dp", ["try-apply", "@DUMP", "--json"],
           {"ID_AA64ISAR0_EL1": dp.put(isar0, 0)})
    helper("lower_dp_after_run", ["try-apply", "@DUMP", "--json", "--run-first"],
           {"ID_AA64ISAR0_EL1": dp.put(isar0, 0)})

# raise the first fully writable lower-safe ISAR0 field that can go up
for f in isar0_reg.fields:
    v = f.get(isar0)
    if (mask & f.mask) == f.mask and f.effective_policy == "lower-safe" and v < 7:
        helper("raise_field", ["try-apply", "@DUMP", "--json"],
               {"ID_AA64ISAR0_EL1": f.put(isar0, v + 1)})
        out["raise_field"]["field"] = f.name
        break

outside = ~mask & ((1 << 64) - 1)
if outside:
    bit = (outside & -outside).bit_length() - 1
    helper("outside_mask", ["try-apply", "@DUMP", "--json"],
           {"ID_AA64ISAR0_EL1": isar0 ^ (1 << bit)})
    out["outside_mask"]["bit"] = bit

midr = values["MIDR_EL1"]
helper("midr_change", ["try-apply", "@DUMP", "--json"], {"MIDR_EL1": midr ^ (1 << 20)})
helper("whole_profile", ["try-apply", "/out/host.xml", "--json"])

# permission denied: /dev/kvm only for root, the helper as nobody
os.chmod("/dev/kvm", 0o600)
helper("as_nobody", ["probe", "--output", "-", "--quiet"], as_user=65534)
os.chmod("/dev/kvm", 0o666)

with open("/out/scenarios.json", "w") as f:
    json.dump(out, f, indent=1)
