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


def tcp_kv_run(results, *extra, expect=0):
    p = run_crbench("run", "tcp-kv", "--runtime", "container", "--engine", "criu", "--mode", "stop-and-copy",
                    "--results", results, "--json", *extra, timeout=300)
    assert p.returncode == expect, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout)


def check_named(rec, name):
    found = [c for c in rec["fidelity"]["checks"] if c["name"] == name]
    assert found, f"no {name} check in {[c['name'] for c in rec['fidelity']['checks']]}"
    return found[0]


def test_tcp_established_keeps_outside_peer(usable, results_dir):
    """The host keeps one connection to redis inside the container across dump -> restore: CRIU's
    --tcp-established (turned on automatically because the container holds established
    connections) restores the socket with its sequence numbers, so the host's same socket goes on
    getting the right answers to sequence-numbered ECHOs, and redis still calls it the same client."""
    rec = tcp_kv_run(results_dir)
    assert rec["status"] == "ok", rec.get("error")
    tcp = rec["engine_report"]["checkpoint"]["engine_figures"]["tcp_established"]
    assert tcp["enabled"] and tcp["why"].startswith("auto:"), tcp
    assert "--tcp-established" in rec["engine_report"]["restore"]["engine_figures"]["criu_command"]
    peer = check_named(rec, "rest:tcp-peer")
    assert peer["result"] == "pass", peer
    f = peer["figures"]
    assert f["survived"] and f["error"] is None
    assert f["round_trips_after_restore"] >= 1 and f["round_trips"] > f["round_trips_after_restore"]
    assert f["server_connection_id"]["before"] == f["server_connection_id"]["after"]
    assert f["via"].startswith("container veth")
    # The longest silence began before the restore ended: the peer waited through the checkpoint
    # on the same socket rather than on some later hiccup.
    assert f["longest_gap_from_checkpoint_start_ms"] <= f["checkpoint_to_restore_end_ms"]
    # The in-container client's own connection came through too.
    assert check_named(rec, "scenario:connection-kept")["result"] == "pass"


def test_tcp_established_off_is_refused_by_criu(usable, results_dir):
    """Without --tcp-established CRIU refuses the established connections (which proves the test
    above really had one open during the dump), and the workload is left running."""
    rec = tcp_kv_run(results_dir, "--engine-opt", "tcp-established=off", expect=1)
    assert rec["status"] == "failed"
    assert rec["error"]["phase"] == "checkpoint"
    assert "tcp" in rec["error"]["message"].lower(), rec["error"]
    assert rec.get("workload_after_failed_checkpoint", "").startswith("running")
