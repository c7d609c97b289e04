"""A live migration whose destination refuses leaves the source guest running.

One boot of an emulated Neoverse-N1 host (Linux 7.3, QEMU 10.0 inside).  The
source runs the ID-register payload with host-passthrough; the destination
listens with the loader keeping PMMIR_EL1 out of its guest's register list
(as a CPU model made with an older kernel does), so the source's stream
carries a register the destination's QEMU does not have.  QMP `migrate` over
a unix socket, with the return path on both sides, fails: the source QEMU
reports the failure and its guest is still running (QMP `query-status`), and
the destination QEMU exits without ever running it.  (Without the return
path a bare QEMU source cannot know: it reports "completed" and waits paused
in postmigrate, as seen here; libvirt's migration protocol confirms with the
destination before it gives the source up.)"""

from __future__ import annotations

import json

import pytest

from .testbed import run_in_guest

LOADER = "/usr/lib/aarch64-linux-gnu/qemu/libvirt-arm-cpu-loader.so"
QEMU = ("/usr/bin/qemu-system-aarch64 -accel kvm -M virt,gic-version=3 -cpu host -smp 1 -m 64 "
        "-nodefaults -display none -kernel /testbed/idregs-aarch64.bin")

QMP_PY = r'''
import json, socket, sys, time
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    for _ in range(300):
        try:
            s.connect(path); break
        except OSError:
            time.sleep(0.1)
    f = s.makefile("rw"); f.readline()
    def cmd(name, **args):
        f.write(json.dumps({"execute": name, "arguments": args}) + "\n"); f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                return msg
    cmd("qmp_capabilities")
    return cmd
src = connect(sys.argv[1])
dst = connect(sys.argv[3])
caps = [{"capability": "return-path", "state": True}]
out = {"caps": [src("migrate-set-capabilities", capabilities=caps),
                dst("migrate-set-capabilities", capabilities=caps)],
       "incoming": dst("migrate-incoming", uri="unix:" + sys.argv[2])}
time.sleep(0.5)
out["migrate"] = src("migrate", uri="unix:" + sys.argv[2])
for _ in range(600):
    st = src("query-migrate")["return"]
    if st.get("status") in ("completed", "failed", "cancelled"):
        break
    time.sleep(0.1)
out["migration"] = st
time.sleep(1)
out["source_status"] = src("query-status")["return"]
print(json.dumps(out))
'''

JOB = r"""
set -u
: > /out/dst.serial; : > /out/src.serial
LD_PRELOAD=%(loader)s LIBVIRT_ARM_CPU_ID_REGS="PMMIR_EL1@S3_0_C9_C14_6=absent" \
    %(qemu)s -serial file:/out/dst.serial -incoming defer \
    -qmp unix:/tmp/dst.qmp,server=on,wait=off 2>/out/dst.stderr &
dpid=$!
%(qemu)s -serial file:/out/src.serial -qmp unix:/tmp/src.qmp,server=on,wait=off \
    2>/out/src.stderr &
spid=$!
n=0; while ! grep -q '^IDREGS END' /out/src.serial && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
python3 /in/qmp.py /tmp/src.qmp /tmp/mig.sock /tmp/dst.qmp > /out/result.json 2> /out/qmp.err
n=0; while kill -0 $dpid 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
if kill -0 $dpid 2>/dev/null; then echo "destination: running"; kill $dpid; else
    wait $dpid; echo "destination: exited $?"; fi
if kill -0 $spid 2>/dev/null; then echo "source: alive"; kill $spid; else echo "source: gone"; fi
""" % {"loader": LOADER, "qemu": QEMU}


@pytest.mark.kvm
def test_a_refused_live_migration_leaves_the_source_guest_running():
    res = run_in_guest(kernel="7.3", qemu="7.2", cpu="neoverse-n1", image="libvirt",
                       files={"qmp.py": QMP_PY.encode()}, script=JOB, timeout=300)
    assert "result.json" in res.files, res.stdout + res.stderr
    out = json.loads(res.files["result.json"])
    assert out["migration"]["status"] == "failed", out
    assert out["source_status"]["status"] == "running" and out["source_status"]["running"], out
    assert "source: alive" in res.stdout, res.stdout
    assert "destination: exited" in res.stdout, res.stdout
    err = res.files["dst.stderr"].decode()
    assert "error while loading state for instance 0x0 of device 'cpu'" in err, err
    assert b"IDREGS" not in res.files["dst.serial"]        # the guest never ran there
