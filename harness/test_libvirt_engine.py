"""The libvirt engine end to end: `crbench run counter --runtime vm --engine libvirt`.

One TCG boot per checkpoint mode (stop-and-copy, leave-running, snapshot create/revert) and one for
the truncated (zstd-compressed) image, plus the daemon-unavailable case, which boots nothing.
After every run no crbench domain, QEMU or crbench-started libvirt daemon may remain.
"""
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, require_root, run_crbench

PRIVATE_DAEMON_DIR = Path(os.environ.get("CRBENCH_RUNTIME_DIR", "/run/crbench")) / "libvirtd"


def require_libvirt():
    require_root()
    for b in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd"):
        if not os.access(b, os.X_OK):
            pytest.skip(f"{b} is not installed (scripts/setup.d/libvirt.sh, libvirt-daemon-system)")
    kernel = Path(os.environ.get("CRBENCH_KERNEL", ROOT / ".deps" / "kernel" / "vmlinuz"))
    if not kernel.exists():
        pytest.skip(f"guest kernel {kernel} missing (run scripts/setup.d/kernel.sh)")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed")


def crbench_leftovers(rec=None):
    """QEMU processes of this run's libvirt domain (of any crbench domain when the record names
    none) and daemons crbench started, still alive."""
    domain = ((rec or {}).get("sandbox") or {}).get("domain") or "crbench-"
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    left = []
    daemon_in_use = private_daemon_in_use()
    for line in out.splitlines():
        if "qemu-system" in line and f"guest={domain}" in line:
            left.append(line.strip())
        if daemon_in_use:
            continue  # another crbench holds the private daemon; it stops it when it leaves
        if str(PRIVATE_DAEMON_DIR) in line and ("libvirtd" in line or "virtlogd" in line):
            left.append(line.strip())
    if not daemon_in_use and (PRIVATE_DAEMON_DIR / "libvirt-sock").exists():
        left.append(f"socket {PRIVATE_DAEMON_DIR / 'libvirt-sock'}")
    return left


def private_daemon_in_use():
    """True while some crbench holds <daemon dir>/users shared (it is connected to the daemon)."""
    users = PRIVATE_DAEMON_DIR / "users"
    if not users.exists():
        return False
    with open(users, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def run_libvirt(mode, results_dir, extra=()):
    p = run_crbench("run", "counter", "--runtime", "vm", "--engine", "libvirt", "--mode", mode,
                    "--results", results_dir, "--json", *extra, timeout=600)
    try:
        rec = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON record (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p, rec


@pytest.mark.parametrize("mode", ["stop-and-copy", "leave-running", "snapshot"])
def test_counter_checkpoint_restore(mode, results_dir):
    require_libvirt()
    p, rec = run_libvirt(mode, results_dir)
    detail = json.dumps(rec, indent=1)[:6000] + "\n" + p.stderr[-3000:]
    assert rec["status"] == "ok", detail
    assert p.returncode == 0, detail
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    # the guest continued: the agent answered after the restore (its process list was compared)
    assert checks["process-tree"]["result"] in ("pass", "fail"), detail
    assert checks["fd-table"]["result"] == "pass", detail
    assert isinstance(rec["downtime_ms"], (int, float)), detail
    assert rec["image"]["apparent_bytes"] > 1 << 20, detail
    ck = rec["engine_report"]["checkpoint"]
    figures = ck.get("engine_figures") or ck.get("engineFigures") or {}
    # libvirt's own job statistics are recorded beside the prober's downtime
    assert "job_completed" in figures, detail
    assert "downtime_ms" in figures, detail
    if mode == "snapshot":
        # libvirt's own revert brought the guest back, not a restore of the memory file.
        rs = rec["engine_report"]["restore"]["engine_figures"]
        assert rs["reverted_to"] == figures["flags"]["snapshot_name"], detail
    assert not crbench_leftovers(rec), crbench_leftovers(rec)
    # The workload itself continued: the scenario's checks (count grew, memory checksum, same
    # pid) and the workload digest.
    wanted = [n for n in checks if n.startswith("scenario:")] + ["workload-digest"]
    assert len(wanted) >= 4, detail
    for n in wanted:
        assert checks[n]["result"] == "pass", json.dumps(checks[n], indent=1)


def test_truncated_image_is_refused(results_dir):
    """A save image cut in half (--engine-opt damage=truncate, applied just before the restore) is
    refused with an error naming the file; the domain and everything else are cleaned up. The save
    is zstd-compressed (--engine-opt image_format=zstd), so that option is exercised too."""
    require_libvirt()
    p, rec = run_libvirt("stop-and-copy", results_dir,
                         ("--engine-opt", "damage=truncate", "--engine-opt", "image_format=zstd"))
    assert p.returncode != 0 and rec["status"] == "failed", rec.get("error")
    assert rec["error"]["phase"] == "restore"
    # The save itself went through, compressed by libvirt (virDomainSaveParams image_format).
    ck = rec["engine_report"]["checkpoint"]["engine_figures"]
    assert ck["flags"]["image_format"] == "zstd", ck["flags"]
    assert ck["image"]["apparent_bytes"] > 1 << 20
    msg = rec["error"]["message"]
    assert "domain.save" in msg and "truncated" in msg and "refused" in msg, msg
    assert not crbench_leftovers(rec), crbench_leftovers(rec)


def test_daemon_unavailable_is_reported(results_dir, tmp_path):
    require_root()
    env = {
        "CRBENCH_LIBVIRT_URI": f"qemu:///system?socket={tmp_path}/no-such.sock",
        "CRBENCH_LIBVIRTD": "/nonexistent/libvirtd",
        "CRBENCH_RUNTIME_DIR": str(tmp_path / "run"),
    }
    p = run_crbench("run", "counter", "--runtime", "vm", "--engine", "libvirt", "--mode",
                    "stop-and-copy", "--results", results_dir, "--json", env=env, timeout=120)
    rec = json.loads(p.stdout)
    assert rec["status"] == "unsupported", rec
    assert p.returncode == 3, (p.returncode, p.stderr)
    text = json.dumps(rec)
    assert "/nonexistent/libvirtd" in text, text[:3000]
    assert not (tmp_path / "run" / "libvirtd" / "libvirt-sock").exists()
