"""crbench run on the vm runtime (QEMU guest) with the pause engine: boot, agent answers, the
200 ms QMP stop/cont calibration, nothing left behind; and the bad-input errors that need no boot
(QEMU missing, guest kernel missing, busy port). One boot in total: TCG boots take seconds."""
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from conftest import require_root, run_crbench

ROOT = Path(os.environ.get("CRBENCH_ROOT", Path(__file__).resolve().parent.parent))
KERNEL = ROOT / ".deps" / "kernel" / "vmlinuz"


@pytest.fixture(autouse=True)
def needs_vm_support():
    require_root()
    if not shutil.which(os.environ.get("CRBENCH_QEMU", "qemu-system-x86_64")):
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs it)")
    if not KERNEL.exists() and not os.environ.get("CRBENCH_KERNEL"):
        pytest.skip(f"guest kernel {KERNEL} is missing: run scripts/setup.d/kernel.sh")


def run_vm(results_dir, *extra, env=None):
    p = run_crbench("run", "counter", "--runtime", "vm", "--results", results_dir, "--json", *extra,
                    timeout=400, env=env)
    try:
        rec = json.loads(p.stdout)
    except json.JSONDecodeError:
        rec = None
    return p, rec


def assert_workload_checks_pass(rec):
    """The scenario's own checks and the workload digest must pass. The generic per-process checks
    (process-tree, fd-table, memory-maps) are reported but not asserted here: inside a VM they also
    cover guest kernel threads (kworker names change on their own) and the agent's heap, which
    differ between any two samples of a running guest, restored or not (see the report)."""
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    wanted = [n for n in checks if n.startswith("scenario:")] + ["workload-digest"]
    assert wanted, json.dumps(rec["fidelity"], indent=1)
    for n in wanted:
        assert checks[n]["result"] == "pass", json.dumps(checks[n], indent=1)


def assert_no_vm_left(rec):
    sb = rec.get("sandbox")
    assert sb, f"the record has no sandbox facts: {rec.get('error')}"
    assert not Path(sb["run_dir"]).exists(), f"runtime dir {sb['run_dir']} (QMP socket, logs) left behind"
    # Every QEMU of the sandbox (boot, restore, migration target) carries -name crbench-<id>.
    tag = f"crbench-{sb['id']},".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        assert tag not in cmd, f"QEMU pid {proc.name} of sandbox {sb['id']} is still running"


def test_counter_vm_pause_calibration(results_dir):
    """One boot: the agent answers, the run completes with a pass, and a 200 ms QMP stop/cont is
    measured by the prober as a ~200 ms reply gap.

    Lower bound: while the vCPUs are stopped the guest cannot answer, and the hold starts after
    `stop` returned, so the gap is at least the held time (1 ms for the clock reads). Upper bound:
    held + the measured `stop` and `cont` command latencies (the guest may stop answering as soon
    as `stop` is sent and answer only after `cont` returned) + one probe interval (1 ms) + a
    scheduling allowance: 25 ms with KVM, 60 ms under TCG, where after `cont` the emulated vCPU
    must take the virtio-net interrupt and run the agent at ~1/10 native speed on a loaded 2-core
    host (its normal echo p99 is ~1 ms, so the allowance covers tail latency, not a missed pause).
    """
    p, rec = run_vm(results_dir, "--engine", "pause", "--engine-opt", "pause_ms=200")
    assert rec is not None, f"no JSON record (exit {p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert p.returncode == 0 and rec["status"] == "ok", f"{p.stderr}\n{rec.get('error')}"
    sb = rec["sandbox"]
    assert sb["runtime"] == "vm"
    assert sb["boot_ms"] > 0, "the VM boot time (exec -> agent answers) is reported"
    assert sb["accelerator"] in ("kvm", "tcg") and sb["accelerator_reason"]
    assert sb["qemu_version"]
    assert_workload_checks_pass(rec)
    phases = rec["engine_report"]["checkpoint"]["phases_ms"]
    held, stop, cont = phases["held"], phases["stop"], phases["cont"]
    assert held >= 200
    down = rec["downtime_ms"]
    assert down is not None
    allowance = 25.0 if sb["accelerator"] == "kvm" else 60.0
    assert held - 1.0 <= down <= held + stop + cont + 1.0 + allowance, \
        f"downtime {down:.2f} ms, held {held:.2f}, stop {stop:.2f}, cont {cont:.2f} ({sb['accelerator']})"
    assert_no_vm_left(rec)


def test_qemu_missing(results_dir):
    # The qemu engine reports its unavailability with the reason; the pause engine only says that
    # it has no working backend for the vm runtime.
    p, rec = run_vm(results_dir, "--engine", "qemu", env={"CRBENCH_QEMU": "/nonexistent/qemu-system-x86_64"})
    assert p.returncode != 0
    text = p.stderr + (json.dumps(rec) if rec else "")
    assert "/nonexistent/qemu-system-x86_64" in text
    assert "setup" in text


def test_guest_kernel_missing(results_dir):
    p, rec = run_vm(results_dir, env={"CRBENCH_KERNEL": "/nonexistent/vmlinuz"})
    assert p.returncode != 0
    text = p.stderr + (json.dumps(rec) if rec else "")
    assert "/nonexistent/vmlinuz" in text and "missing" in text
    assert "--kernel" in text


def test_busy_port(results_dir):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        p, rec = run_vm(results_dir, env={"CRBENCH_VM_UDP_PORT": str(port)})
    finally:
        s.close()
    assert p.returncode != 0
    text = p.stderr + (json.dumps(rec) if rec else "")
    assert str(port) in text and "busy" in text
