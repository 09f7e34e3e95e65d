"""`crbench compare` stopped by SIGTERM in the middle of a run.

It must stop what it started (the workload and its sandbox: processes, cgroups, veth, runtime
directory; a libvirt domain and the private libvirtd/virtlogd crbench started for it), write the
records it has with the cut run marked interrupted and not counted, write the summary, and exit
with 128 + SIGTERM = 143. Before this was handled, SIGTERM killed compare outright (exit -15) and
left the sandbox and crbench's private virtlogd behind.

Two cases: the container runtime (pause engine: quick) and a TCG guest through the libvirt engine.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import crbench_bin, require_container_support
from test_libvirt_engine import crbench_leftovers, require_libvirt

# Printed (with -v) once the sandbox is up and its warm-up is over: the run is mid-way.
MID_RUN = "measuring the workload's dirty rate"


def proc_children():
    """pid -> (ppid, start time) of every process now."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(d.name)] = (int(fields[1]), fields[19])
    return out


def descendants(pid):
    """(pid, start time) of every process below pid."""
    procs = proc_children()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for c, (pp, start) in procs.items():
            if pp == p and (c, start) not in found:
                found.add((c, start))
                todo.append(c)
    return found


def still_alive(procs):
    now = proc_children()
    return [p for p, start in procs if p in now and now[p][1] == start]


def interrupt_compare(tmp_path, *args, timeout=240):
    """Start `crbench -v compare ...`, SIGTERM it mid-run, return (exit code, stderr, records,
    summary, processes it had below it at the signal)."""
    results = tmp_path / "results"
    results.mkdir()
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        p = subprocess.Popen([crbench_bin(), "-v", "compare", *args, "--no-warmup", "--results", str(results)],
                             stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, close_fds=True)
    try:
        end = time.monotonic() + timeout
        while MID_RUN not in err_path.read_text():
            if p.poll() is not None:
                raise AssertionError(f"compare ended (exit {p.returncode}) before the run was mid-way:\n"
                                     + err_path.read_text()[-3000:])
            if time.monotonic() > end:
                raise AssertionError("the run never got mid-way:\n" + err_path.read_text()[-3000:])
            time.sleep(0.05)
        below = descendants(p.pid)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    records = [json.loads(f.read_text()) for f in results.glob("*.json") if not f.name.endswith(".compare.json")]
    summaries = [json.loads(f.read_text()) for f in results.glob("*.compare.json")]
    return rc, err_path.read_text(), records, summaries, below


def check_common(rc, err, records, summaries, below):
    detail = err[-4000:]
    assert rc == 128 + signal.SIGTERM, f"exit {rc}\n{detail}"
    assert not still_alive(below), f"processes left from the interrupted compare: {still_alive(below)}\n{detail}"
    cut = [r for r in records if r.get("interrupted")]
    assert len(cut) == 1, f"expected one record marked interrupted: {[r.get('error') for r in records]}\n{detail}"
    rec = cut[0]
    assert rec["status"] == "failed" and "interrupted" in rec["error"]["message"], rec["error"]
    assert rec["downtime_ms"] is None, "an interrupted run must not carry a figure"
    assert len(summaries) == 1, detail
    s = summaries[0]
    assert s["interrupted"]["signal"] == "SIGTERM", s.get("interrupted")
    for row in s["combinations"]:
        # the cut run is neither a figure nor a failure of the engine
        assert row["failed"] == 0, row
        assert row["n"] == 0, row
    assert any(row.get("interrupted") == 1 and row["status"] == "interrupted" for row in s["combinations"]), s
    return rec


def test_container_run_interrupted(tmp_path):
    require_container_support()
    rc, err, records, summaries, below = interrupt_compare(
        tmp_path, "counter", "--engines", "pause", "--runtimes", "container", "--modes", "pause", "--repeats", "2")
    rec = check_common(rc, err, records, summaries, below)
    sb = rec["sandbox"]
    assert sb and sb["runtime"] == "container", rec
    for cg in sb["cgroups"]:
        assert not Path(cg).exists(), f"cgroup {cg} left behind"
    assert not Path(sb["runtime_dir"]).exists(), f"{sb['runtime_dir']} left behind"
    veth = sb["network"]["host_veth"]
    link = subprocess.run(["ip", "link", "show", "dev", veth], capture_output=True, text=True)
    assert link.returncode != 0, f"host veth {veth} left behind:\n{link.stdout}"
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    for needle in (veth, sb["network"]["container_address"]):
        assert needle not in rules, f"iptables rule naming {needle} left behind:\n{rules}"


def test_libvirt_run_interrupted(tmp_path):
    require_libvirt()
    rc, err, records, summaries, below = interrupt_compare(
        tmp_path, "counter", "--engines", "libvirt", "--runtimes", "vm", "--modes", "stop-and-copy", "--repeats", "1")
    rec = check_common(rc, err, records, summaries, below)
    domain = (rec.get("sandbox") or {}).get("domain")
    assert domain, rec
    # the guest's QEMU and, unless another crbench still shares it, the private libvirtd/virtlogd
    assert not crbench_leftovers(rec), crbench_leftovers(rec)
    assert not Path(f"/etc/libvirt/qemu/{domain}.xml").exists(), f"domain {domain} is still defined"
    assert not Path(f"/run/libvirt/qemu/{domain}.xml").exists(), f"domain {domain} still has run state"
