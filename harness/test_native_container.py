"""The native engine through `crbench run counter --runtime container --engine native`, in
stop-and-copy and leave-running: the workload subtree (the agent's child) is checkpointed and
restored into the same container's namespaces with the same pid; the scenario's checks pass, the
prober's downtime is recorded, and nothing is left behind. The self-checking test programs of
host/engine/native/testprogs run the same way, all in one container (scenarios/native-testprogs.toml),
in both modes: each must print PASS after the restore."""
import json
from pathlib import Path

import pytest

from conftest import ok_record, require_container_support, run_crbench

@pytest.fixture(autouse=True)
def needs_container_support():
    require_container_support()


@pytest.mark.parametrize("mode", ["stop-and-copy", "leave-running"])
def test_counter_in_container(mode, results_dir):
    p = run_crbench("run", "counter", "--runtime", "container", "--engine", "native", "--mode", mode,
                    "--results", results_dir, "--json", timeout=300)
    rec = ok_record(p)
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    for name in ("scenario:count-increases", "scenario:memory-matches", "scenario:pid-same"):
        assert checks[name]["result"] == "pass", checks[name]
    assert isinstance(rec["downtime_ms"], (int, float)) and rec["downtime_ms"] > 0, rec["downtime_ms"]
    ck = rec["engine_report"]["checkpoint"]["engine_figures"]
    assert ck["checkpointed"] == "workload subtree" and ck["processes"] >= 1, ck
    rs = rec["engine_report"]["restore"]["engine_figures"]
    assert rs["restored_root_pid"] == ck["workload_root_pid"], (ck, rs)
    sb = rec["sandbox"]
    assert not Path(sb["runtime_dir"]).exists()
    for c in sb["cgroups"]:
        assert not Path(c).exists(), f"cgroup {c} left behind"


TESTPROGS = ["tp_memory", "tp_threads", "tp_forktree", "tp_files", "tp_signals", "tp_mapshared",
             "tp_session", "tp_itimer"]


def run_testprogs(engine, mode, results_dir):
    """One container running every test program under tp_launch, checkpointed and restored by
    `engine`; returns the run record."""
    p = run_crbench("run", "native-testprogs", "--runtime", "container", "--engine", engine, "--mode", mode,
                    "--results", results_dir, "--json", timeout=300)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON record (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")


@pytest.mark.parametrize("mode", ["stop-and-copy", "leave-running"])
def test_testprogs_in_container(mode, results_dir):
    rec = run_testprogs("native", mode, results_dir)
    assert rec["status"] == "ok", rec.get("error")
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    bad = [f"{n}: {checks.get('scenario:' + n, {}).get('detail', 'no check')}" for n in TESTPROGS
           if checks.get("scenario:" + n, {}).get("result") != "pass"]
    assert not bad, "\n".join(bad)
    # The engine's own view of the state also matches (tree, fds, offsets, maps, cwd, limits).
    for name in ("process-tree", "fd-table", "fd-offsets", "memory-maps", "cwd", "limits"):
        assert checks[name]["result"] == "pass", checks[name]
    for c in rec["sandbox"]["cgroups"]:
        assert not Path(c).exists(), f"cgroup {c} left behind"
