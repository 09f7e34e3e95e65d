"""The native engine restoring a whole container into fresh namespaces (issue #8):
`crbench run ... --engine native --engine-opt fresh_ns=1` dumps the container from its init (the
agent) with everything under it, records its mounts, host name and interfaces, destroys it (its
pid/mnt/ipc/uts namespaces die with its init) and restores it into new pid/mnt/ipc/uts namespaces
rebuilt from the image, joining the runtime's network namespace again. The programs must carry
on (their own PASS checks), every process keeps its pid inside the new pid namespace, and the
namespaces are new ones (the kernel's NS_GET_ID ids, never reused, differ; the inode numbers of
dead namespaces can be handed out again, so they prove nothing). A mount the restore cannot make
again is refused at dump time by name."""
import os
from pathlib import Path

import pytest

from conftest import ok_record, require_container_support, run_crbench
from test_native_container import TESTPROGS


@pytest.fixture(autouse=True)
def needs_container_support():
    require_container_support()


def run_fresh(results_dir, scenario, mode, *extra):
    p = run_crbench("run", scenario, "--runtime", "container", "--engine", "native", "--mode", mode,
                    "--engine-opt", "fresh_ns=1", "--results", results_dir, "--json", *extra, timeout=300)
    return ok_record(p)


def assert_fresh(rec):
    ck = rec["engine_report"]["checkpoint"]["engine_figures"]
    rs = rec["engine_report"]["restore"]["engine_figures"]
    assert ck["checkpointed"] == "whole container", ck
    before, after = ck["namespaces"], rs["namespaces"]
    if "id" not in before["pid"]:
        pytest.skip("this kernel has no NS_GET_ID: a new namespace cannot be told from a reused inode number")
    for ns in ("pid", "mnt", "ipc", "uts"):
        assert before[ns]["id"] != after[ns]["id"], (ns, before[ns], after[ns])
    # The runtime's network namespace (its veth carries the prober) is joined again.
    assert before["net"]["id"] == after["net"]["id"], (before["net"], after["net"])
    # The same pids inside the new pid namespace, the agent as its init.
    assert sorted(ck["pids_in_namespace"]) == sorted(rs["pids_in_namespace"]), (ck, rs)
    assert rs["restored_root_pid"] == 1 and 1 in rs["pids_in_namespace"], rs
    for c in rec["sandbox"]["cgroups"]:
        assert not Path(c).exists(), f"cgroup {c} left behind"


@pytest.mark.parametrize("mode", ["stop-and-copy", "leave-running"])
def test_testprogs_restored_into_fresh_namespaces(mode, results_dir):
    rec = run_fresh(results_dir, "native-testprogs", mode)
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    bad = [f"{n}: {checks.get('scenario:' + n, {}).get('detail', 'no check')}" for n in TESTPROGS
           if checks.get("scenario:" + n, {}).get("result") != "pass"]
    assert not bad, "\n".join(bad)
    for name in ("process-tree", "fd-table", "memory-maps", "cwd", "limits"):
        assert checks[name]["result"] == "pass", checks[name]
    assert_fresh(rec)


def test_redis_restored_into_fresh_namespaces(results_dir):
    """tcp-kv: redis-server and a client holding a loopback TCP connection; both ends restored
    (TCP_REPAIR) in the new namespaces, the round trips carry on on the same connection."""
    if not Path("/usr/bin/redis-server").exists():
        pytest.skip("redis-server not installed (scripts/packages)")
    rec = run_fresh(results_dir, "tcp-kv", "stop-and-copy")
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    for name in ("scenario:connection-kept", "scenario:round-trips-increase", "process-tree"):
        assert checks[name]["result"] == "pass", checks[name]
    assert_fresh(rec)


RAMFS = '''
name = "ns-ramfs"
description = "a ramfs mounted inside the container (a kind of mount the fresh-namespace restore does not make)"
binaries = []
[[programs]]
name = "holder"
argv = ["/bin/sh", "-c", "mkdir -p /tmp/r && mount -t ramfs ramfs /tmp/r && exec sleep 1000"]
'''


def test_unrecreatable_mount_is_refused_by_name(tmp_path, results_dir):
    scen = tmp_path / "ns-ramfs.toml"
    scen.write_text(RAMFS)
    p = run_crbench("run", scen, "--runtime", "container", "--engine", "native", "--mode", "stop-and-copy",
                    "--engine-opt", "fresh_ns=1", "--results", results_dir, "--json", timeout=300)
    assert p.returncode != 0, p.stdout
    assert "mount /tmp/r (ramfs" in p.stdout + p.stderr, p.stdout + p.stderr
    assert "cannot be recreated in a fresh mount namespace" in p.stdout + p.stderr
