"""The criu engine end to end: `crbench run counter --runtime container --engine criu` in its modes,
pre-copy refused with CRIU's own reason, and an old CRIU forced through --engine-opt / CRBENCH_CRIU
reported unusable (by `crbench doctor`) with the precise reason and no canary left traced or stopped.
Skips (77) with the reason when not root or when no usable CRIU is set up."""
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, require_root, run_crbench

DEPS = ROOT / ".deps"


def criu_caps(env=None):
    p = run_crbench("doctor", "--json", timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["engines"]["criu"]


@pytest.fixture(scope="module")
def usable():
    require_root()
    caps = criu_caps()
    if not caps["available"]:
        pytest.skip(f"criu engine unavailable here: {caps['unavailable']}")
    return caps


def run_json(mode, results, *extra, expect=0):
    p = run_crbench("run", "counter", "--runtime", "container", "--engine", "criu", "--mode", mode,
                    "--param", "hz=50", "--param", "buffer_mib=2", "--results", results, "--json",
                    *extra, timeout=300)
    if p.returncode != expect and "outside of its pid namespace" in p.stdout + p.stderr:
        pytest.skip("the container runtime's init keeps the host session (no setsid()), which CRIU cannot "
                    "dump: the container runtime must call setsid() in its child")
    assert p.returncode == expect, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout)


def check_ok_run(rec, allowed_fidelity_failures=()):
    assert rec["status"] == "ok", rec.get("error")
    assert rec["downtime_ms"] is not None and rec["downtime_ms"] > 0
    ck = rec["engine_report"]["checkpoint"]
    stats = ck["engine_figures"]["stats_dump"]
    assert stats["frozen_time_us"] > 0 and stats["pages_written"] > 0
    assert "criu_dump" in ck["phases_ms"]
    assert "stats_restore" in rec["engine_report"]["restore"]["engine_figures"]
    assert rec["image"]["apparent_bytes"] > 0
    failed = [c["name"] for c in rec["fidelity"]["checks"] if c["result"] == "fail"]
    assert set(failed) <= set(allowed_fidelity_failures), rec["fidelity"]


def test_stop_and_copy(usable, results_dir):
    check_ok_run(run_json("stop-and-copy", results_dir))


def test_leave_running(usable, results_dir):
    check_ok_run(run_json("leave-running", results_dir))


def test_lazy_restore(usable, results_dir):
    if "lazy" not in usable["modes"]:
        pytest.skip(f"lazy unsupported: {usable['unsupported_modes'].get('lazy')}")
    rec = run_json("lazy", results_dir)
    # Observed here: after a lazy restore the kernel merges some of the workload's VMAs (40 -> 37
    # mappings, same size); the memory itself is verified by the scenario's own checks.
    check_ok_run(rec, allowed_fidelity_failures=("memory-maps",))
    assert "lazy_pages_served" in rec["engine_report"]["restore"]["phases_ms"]


def test_pre_copy_refused_with_criu_reason(usable, results_dir):
    why = usable["unsupported_modes"].get("pre-copy", "")
    if "CRIU says" not in why:
        pytest.skip(f"pre-copy not refused by CRIU here: {why}")
    assert "Dirty tracking" in why
    p = run_crbench("run", "counter", "--runtime", "container", "--engine", "criu", "--mode", "pre-copy",
                    "--results", results_dir, "--json", timeout=300)
    assert p.returncode == 3, p.stderr
    assert "Dirty tracking" in (p.stdout + p.stderr)


def canaries():
    """Probe canaries still alive (they name themselves in argv[0])."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            status = (d / "status").read_text()
        except OSError:
            continue
        if cmd.startswith(b"crbench-criu-canary"):
            found.append((d.name, status))
    return found


@pytest.mark.parametrize("prefix,version", [("criu-old", "3.17.1")])
def test_old_criu_is_reported_unusable(prefix, version, tmp_path):
    require_root()
    binary = DEPS / prefix / "bin" / "criu"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} absent: run scripts/setup.d/criu.sh")
    # A fresh cache so the probe really runs; the subprocess timeout bounds it.
    caps = criu_caps(env={"CRBENCH_CRIU": str(binary), "CRBENCH_CACHE": str(tmp_path / "cache")})
    assert not caps["available"]
    assert caps["versions"]["criu"] == version
    assert "criu >= 4.2 needed" in caps["unavailable"]
    assert "vdso" in caps["unavailable"].lower()
    for pid, status in canaries():
        assert "TracerPid:\t0" in status, f"canary {pid} left traced"
        assert "State:\tT" not in status and "State:\tt" not in status, f"canary {pid} left stopped"


def test_engine_opt_criu_selects_the_binary(usable, results_dir):
    old = DEPS / "criu-old" / "bin" / "criu"
    if not os.access(old, os.X_OK):
        pytest.skip(f"{old} absent: run scripts/setup.d/criu.sh")
    p = run_crbench("run", "counter", "--runtime", "container", "--engine", "criu", "--mode", "stop-and-copy",
                    "--engine-opt", f"criu={old}", "--results", results_dir, "--json", timeout=300)
    assert p.returncode != 0
    rec = json.loads(p.stdout)
    assert rec["status"] == "failed"
    assert "3.17.1" in json.dumps(rec) and "criu >= 4.2 needed" in json.dumps(rec)
    # The refused checkpoint left the workload running.
    assert rec.get("workload_after_failed_checkpoint", "").startswith("running")
