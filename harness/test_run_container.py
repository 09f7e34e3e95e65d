"""crbench run on the container runtime with the pause engine: end to end, calibration, bad input,
and nothing left behind (processes, mounts, cgroups, netns/veth, runtime dir) after a run and after
a forced failure."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import crbench_bin, require_container_support, run_crbench

@pytest.fixture(autouse=True)
def needs_container_support():
    require_container_support()


def run_record(results_dir, *extra):
    p = run_crbench("run", "counter", "--runtime", "container", "--engine", "pause",
                    "--results", results_dir, "--json", *extra, timeout=300)
    try:
        rec = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON record (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p, rec


def assert_nothing_left(rec):
    sb = rec.get("sandbox")
    assert sb, f"the record has no sandbox facts: {rec.get('error')}"
    sid = sb["id"]
    rdir = Path(sb["runtime_dir"])
    assert not rdir.exists(), f"runtime dir {rdir} left behind"
    for c in sb["cgroups"]:
        assert not Path(c).exists(), f"cgroup {c} left behind"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(rdir) not in mounts, f"a mount under {rdir} is left"
    veth = sb["network"]["host_veth"]
    assert not Path("/sys/class/net", veth).exists(), f"veth {veth} left behind"
    init = sb["init_pid"]
    if Path(f"/proc/{init}").exists():
        # The pid may have been reused by an unrelated process; ours would still be the agent.
        comm = Path(f"/proc/{init}/comm").read_text().strip()
        assert comm != "crbench-agent", f"the container's init (pid {init}) is still running"
    leftovers = subprocess.run(["pgrep", "-f", "crb-counter --hz"], capture_output=True, text=True).stdout.split()
    for pid in leftovers:
        try:
            cg = Path(f"/proc/{pid}/cgroup").read_text()
        except FileNotFoundError:
            continue
        assert f"crbench/{sid}" not in cg, f"workload pid {pid} of sandbox {sid} survived"


def test_counter_with_pause_engine(results_dir):
    p, rec = run_record(results_dir)
    assert p.returncode == 0, f"{p.stderr}\n{rec.get('error')}"
    assert rec["status"] == "ok"
    assert rec["schema_version"] == 1
    assert rec["fidelity"]["verdict"] == "pass", json.dumps(rec["fidelity"], indent=1)
    names = {c["name"] for c in rec["fidelity"]["checks"]}
    assert {"process-tree", "scenario:count-increases", "scenario:pid-same"} <= names
    assert rec["sandbox"]["start_ms"] > 0
    assert rec["environment"]["accelerator"]["accel"] in ("kvm", "tcg")
    trace = rec["probe"]["trace"]
    assert len(trace["samples"]["send"]) == rec["probe"]["stats"]["sent"]
    marks = [m["name"] for m in trace["marks"]]
    for m in ("checkpoint-start", "frozen", "thawed", "restore-end"):
        assert m in marks
    written = Path(results_dir, rec["run_id"] + ".json")
    assert json.loads(written.read_text())["run_id"] == rec["run_id"]
    assert_nothing_left(rec)


def test_pause_calibration(results_dir):
    """The prober must measure a 200 ms cgroup freeze as a ~200 ms reply gap.

    Lower bound: the agent cannot answer while frozen, and the freeze is held 200 ms after the
    kernel reported FROZEN, so the gap is at least the held time (1 ms allowed for the two clock
    reads). Upper bound: the held time, plus the freeze and thaw transitions (measured in this run,
    the agent may stop early in the freeze and resume late in the thaw), plus one probe interval
    (1 ms at 1 kHz), plus 25 ms for scheduling delays on a loaded 2-core CI machine. A wrong unit,
    a missed pause or a mis-set clock falls far outside this.
    """
    p, rec = run_record(results_dir, "--engine-opt", "pause_ms=200")
    assert rec["status"] == "ok", rec.get("error")
    phases = rec["engine_report"]["checkpoint"]["phases_ms"]
    held, freeze, thaw = phases["held"], phases["freeze"], phases["thaw"]
    assert held >= 200
    down = rec["downtime_ms"]
    assert down is not None
    assert held - 1.0 <= down <= held + freeze + thaw + 1.0 + 25.0, \
        f"downtime {down:.2f} ms, held {held:.2f}, freeze {freeze:.2f}, thaw {thaw:.2f}"


def test_forced_checkpoint_failure_leaves_nothing_and_workload_ran(results_dir):
    p, rec = run_record(results_dir, "--engine-opt", "fail=checkpoint")
    assert p.returncode == 1
    assert rec["status"] == "failed"
    assert rec["error"]["phase"] == "checkpoint"
    assert "injected" in rec["error"]["message"]
    assert rec["workload_after_failed_checkpoint"].startswith("running")
    assert Path(results_dir, rec["run_id"] + ".json").exists(), "a failed run still writes its record"
    assert_nothing_left(rec)


def test_forced_restore_failure_leaves_nothing(results_dir):
    p, rec = run_record(results_dir, "--engine-opt", "fail=restore")
    assert p.returncode == 1 and rec["status"] == "failed"
    assert rec["error"]["phase"] == "restore"
    assert_nothing_left(rec)


def test_unknown_scenario(results_dir):
    p = run_crbench("run", "no-such-scenario", "--runtime", "container", "--results", results_dir)
    assert p.returncode != 0
    assert "no-such-scenario" in p.stderr


def test_malformed_scenario_file(results_dir, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[programs]]\nargv = 17\n')
    p = run_crbench("run", bad, "--runtime", "container", "--results", results_dir)
    assert p.returncode != 0
    assert "bad.toml" in p.stderr


def test_unknown_engine_and_mode(results_dir):
    p = run_crbench("run", "counter", "--runtime", "container", "--engine", "nope", "--results", results_dir)
    assert p.returncode == 2 and "nope" in p.stderr
    p = run_crbench("run", "counter", "--runtime", "container", "--mode", "teleport", "--results", results_dir)
    assert p.returncode == 2 and "teleport" in p.stderr


def test_bad_engine_option(results_dir):
    p, rec = run_record(results_dir, "--engine-opt", "pause_ms=soon")
    assert p.returncode != 0 and rec["status"] == "failed"
    assert "pause_ms" in rec["error"]["message"]
    assert_nothing_left(rec)


def test_unwritable_results_dir():
    p = run_crbench("run", "counter", "--runtime", "container", "--results", "/proc/crbench-results")
    assert p.returncode == 2
    assert "/proc/crbench-results" in p.stderr


def test_not_root(tmp_path):
    # The container runtime uses no host ports (each sandbox has its own netns and /30), so there
    # is no busy-port case here; "not root" is the other input error checked before anything starts.
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", crbench_bin(),
                        "run", "counter", "--runtime", "container"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "root" in p.stderr


def test_interrupt_tears_down(results_dir):
    import signal
    import time
    proc = subprocess.Popen([crbench_bin(), "run", "counter", "--runtime", "container", "--warmup-ms", "20000",
                             "--results", str(results_dir), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Interrupt once the sandbox exists (its runtime dir appears), i.e. during the warm-up.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(Path(results_dir).glob("*.json")):
            break
        rdirs = [d for d in Path("/run/crbench").glob("c*") if (d / "agent.log").exists()] \
            if Path("/run/crbench").exists() else []
        if rdirs:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    rec = json.loads(out)
    assert rec["status"] == "failed" and "interrupted" in rec["error"]["message"]
    assert_nothing_left(rec)
