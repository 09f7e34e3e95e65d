"""The native engine's low-downtime memory modes on plain process trees (issue #9): a program
rewriting known patterns at a set rate (tp_precopy) goes through pre-copy (and COW) dumps and
checks every byte of every page after restore; the dumper SIGKILLed mid-round leaves the tree
running, untraced and with no write-protection left."""
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import start_program as start, cr, crbench_bin, need_root, ok_record, prog, require_container_support, run_crbench, wait_for


def wp_ranges(pid):
    """Mappings of pid carrying a userfaultfd write-protect registration (VmFlags 'uw')."""
    out, cur = [], None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and not line.startswith("VmFlags"):
            cur = line.split(" ", 1)[0]
        elif line.startswith("VmFlags:") and " uw" in line:
            out.append(cur)
    return out


def status(pid):
    return dict(l.split(":\t", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in l)


def need_uffd_wp(tmp_path):
    """Skip (77) on a kernel without UFFD WP-async + PAGEMAP_SCAN: the dump says which is missing."""
    go = tmp_path / "probe-go"
    p, log = start([prog("tp_precopy"), str(go), "4", "0"], tmp_path)
    try:
        wait_for(log, "READY")
        d = cr("dump", "--pre-copy", "--tree", p.pid, "--images", tmp_path / "probe-img")
        if d.returncode != 0 and ("WP_ASYNC" in d.stderr or "PAGEMAP_SCAN" in d.stderr or "userfaultfd()" in d.stderr):
            pytest.skip(f"no userfaultfd write-protect dirty tracking here: {d.stderr.strip()}")
        assert d.returncode == 0, d.stderr
    finally:
        p.kill()
        p.wait()


def restore_tree_and_check(p, kid, log, go, img):
    """restore_and_check() for a parent and its child: both killed (their group) and the child
    gone before the restore, which recreates its pid."""
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    end = time.monotonic() + 10
    while Path(f"/proc/{kid}").exists() and time.monotonic() < end:
        time.sleep(0.01)
    restore_and_check(p, log, go, img)


def restore_and_check(p, log, go, img):
    p.kill()  # pre-copy leaves the tree running: the copy replaces it
    p.wait(timeout=10)
    go.touch()
    r = cr("restore", "--images", img)
    out = log.read_text()
    assert r.returncode == 0 and "exited with status 0" in r.stderr, f"restore: {r.stderr}\nprogram: {out}"
    assert out.count("PASS") == 1 and "FAIL" not in out, out


@pytest.mark.parametrize("size_mib,rate", [(64, 16), (32, 200)])
def test_precopy_every_byte(size_mib, rate, tmp_path):
    """16 MiB/s converges in a few rounds; 200 MiB/s over 32 MiB does not shrink and hits a limit."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), str(size_mib), str(rate)], tmp_path)
    wait_for(log, "READY")
    time.sleep(0.3)
    img = tmp_path / "img"
    d = cr("dump", "--pre-copy", "--max-rounds", "6", "--json", "--tree", p.pid, "--images", img)
    assert d.returncode == 0, d.stderr
    fig = json.loads(d.stdout)
    mem = fig["memory"]
    assert mem["dirty_tracking"] == "uffd-wp-async+pagemap-scan"
    assert len(mem["rounds"]) >= 2 and mem["stop_reason"], mem
    assert mem["rounds"][0]["pages"] >= size_mib * 256, mem["rounds"][0]
    assert mem["rounds"][1]["dirty_pages"] > 0, "the writer ran during round 0, yet no page was found dirty"
    assert fig["pages_written"] >= size_mib * 256
    # The tree ran on, and nothing of the tracking is left on it.
    assert status(p.pid)["State"][0] in "RS" and status(p.pid)["TracerPid"] == "0"
    assert wp_ranges(p.pid) == []
    assert not list(img.glob(".precopy-*")), "the page store outlived the dump"
    s = cr("show", img)
    assert s.returncode == 0 and "all checksums verified" in s.stdout, s.stderr
    restore_and_check(p, log, go, img)


@pytest.mark.parametrize("kind", ["shared", "memfd", "memfd-open"])
def test_precopy_shared_memory_every_byte(kind, tmp_path):
    """Shared memory (shared anonymous, memfd) is pre-copied: two processes rewrite pages of one
    object (and its generation table, in the same object) through their own mappings; the freeze
    reads only what changed since the last round, and every byte is checked after the restore.
    memfd-open: the tree keeps the memfd's descriptor (write(2) through it would not be seen), so
    the object is copied in the freeze instead, and says why."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "32", "16", kind], tmp_path)
    wait_for(log, "READY")
    time.sleep(0.3)
    kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    assert len(kids) == 1, kids
    img = tmp_path / "img"
    d = cr("dump", "--pre-copy", "--max-rounds", "6", "--json", "--tree", p.pid, "--images", img)
    assert d.returncode == 0, d.stderr
    mem = json.loads(d.stdout)["memory"]
    shm = mem.get("shmem", [])
    assert mem["rounds"][0]["shmem_pages"] >= 32 * 256, mem["rounds"][0]
    if kind == "memfd-open":
        assert len(shm) == 1 and not shm[0]["precopied"] and "descriptor" in shm[0]["why"], shm
    else:
        assert len(shm) == 1 and shm[0]["precopied"], f"the shared object was not pre-copied: {shm}"
        assert sum(r["dirty_pages"] for r in mem["rounds"][1:]) > 0, "both writers ran, yet no shared page was found dirty"
        assert [u["pid"] for u in shm[0]["unprotected_pages"]] == [p.pid, int(kids[0])], shm[0]
    for pid in [p.pid, int(kids[0])]:
        assert wp_ranges(pid) == [], f"write-protection left on pid {pid}"
    restore_tree_and_check(p, kids[0], log, go, img)


def test_forced_dirty_tracking_method_fails_clearly_when_missing(tmp_path):
    """--dirty-tracking soft-dirty on a kernel without soft-dirty (and uffd-wp where it is missing)
    fails before touching the tree, naming what is missing; the tree runs on untraced."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "4", "0"], tmp_path)
    wait_for(log, "READY")
    tried = 0
    for method, missing in [("soft-dirty", "soft-dirty was asked for"), ("uffd-wp", "uffd-wp was asked for")]:
        img = tmp_path / f"img-{method}"
        d = cr("dump", "--pre-copy", "--dirty-tracking", method, "--json", "--tree", p.pid, "--images", img)
        if d.returncode == 0:
            assert json.loads(d.stdout)["memory"]["dirty_tracking"].startswith(method.split("-")[0]), d.stdout
            continue
        tried += 1
        assert missing in d.stderr and "hint:" in d.stderr, d.stderr
        assert not list(img.glob("*.img")), "a refused dump left an image"
        assert status(p.pid)["TracerPid"] == "0" and wp_ranges(p.pid) == []
    env = dict(os.environ, CRBENCH_DIRTY_TRACKING="dirty-bits")
    d = subprocess.run([crbench_bin(), "cr", "dump", "--pre-copy", "--tree", str(p.pid), "--images",
                        str(tmp_path / "img-env")], capture_output=True, text=True, env=env, timeout=60)
    assert d.returncode != 0 and "unknown dirty tracking method 'dirty-bits'" in d.stderr, d.stderr
    go.touch()
    assert p.wait(timeout=30) == 0


def test_precopy_soft_dirty_every_byte(tmp_path):
    """The soft-dirty fallback (clear_refs 4 + pagemap bit 55, the tree stopped for each read and
    clear): every byte checked after the restore. Needs CONFIG_MEM_SOFT_DIRTY."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "32", "16"], tmp_path)
    wait_for(log, "READY")
    time.sleep(0.3)
    img = tmp_path / "img"
    d = cr("dump", "--pre-copy", "--dirty-tracking", "soft-dirty", "--max-rounds", "6", "--json", "--tree", p.pid,
           "--images", img)
    if d.returncode != 0 and "soft-dirty was asked for" in d.stderr:
        pytest.skip(f"this kernel has no soft-dirty tracking: {d.stderr.strip()}")
    assert d.returncode == 0, d.stderr
    mem = json.loads(d.stdout)["memory"]
    assert mem["dirty_tracking"] == "soft-dirty", mem
    assert mem["rounds"][1]["dirty_pages"] > 0 and all("stopped_ms" in r for r in mem["rounds"]), mem["rounds"]
    assert status(p.pid)["TracerPid"] == "0"
    restore_and_check(p, log, go, img)


def test_dumper_killed_mid_round_leaves_tree_running_unprotected(tmp_path):
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "256", "16"], tmp_path)
    wait_for(log, "READY")
    rng = random.Random(int(os.environ.get("CRBENCH_SEED", "0")) or None)
    for attempt in range(3):
        img = tmp_path / f"img{attempt}"
        dumper = subprocess.Popen([crbench_bin(), "cr", "dump", "--pre-copy", "--tree", str(p.pid), "--images",
                                   str(img)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL, close_fds=True)
        # Wait until the tracker is registered (the rounds have begun), then kill at a random point.
        end = time.monotonic() + 30
        while not wp_ranges(p.pid) and dumper.poll() is None and time.monotonic() < end:
            time.sleep(0.005)
        assert dumper.poll() is None, "the dump finished before it could be killed"
        time.sleep(rng.uniform(0, 0.4))
        dumper.send_signal(signal.SIGKILL)
        dumper.wait()
        assert not (img / "inventory.img").exists()
        st = status(p.pid)
        assert st["State"][0] in "RS", f"attempt {attempt}: the tree is {st['State']}"
        assert st["TracerPid"] == "0", f"attempt {attempt}: still traced by {st['TracerPid']}"
        assert wp_ranges(p.pid) == [], f"attempt {attempt}: write-protect registration left on {wp_ranges(p.pid)}"
    # It still rewrites its pages and every byte matches its generation table.
    go.touch()
    assert p.wait(timeout=60) == 0, log.read_text()
    assert "PASS" in log.read_text()


def test_cow_every_byte(tmp_path):
    """Copy-on-write: the tree runs right after the freeze while its pages are copied; writes in
    that time must not reach the image (the old page is copied first)."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "128", "64"], tmp_path)
    wait_for(log, "READY")
    img = tmp_path / "img"
    d = cr("dump", "--cow", "--json", "--tree", p.pid, "--images", img)
    assert d.returncode == 0, d.stderr
    mem = json.loads(d.stdout)["memory"]
    assert mem["protected_pages"] >= 128 * 256, mem
    assert mem["background_pages"] + mem["copied_on_fault_pages"] >= 128 * 256, mem
    assert status(p.pid)["State"][0] in "RS" and status(p.pid)["TracerPid"] == "0"
    assert wp_ranges(p.pid) == []
    restore_and_check(p, log, go, img)


def test_dumper_killed_during_cow_copy_leaves_tree_running(tmp_path):
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "256", "32"], tmp_path)
    wait_for(log, "READY")
    rng = random.Random(int(os.environ.get("CRBENCH_SEED", "0")) or None)
    for attempt in range(2):
        img = tmp_path / f"img{attempt}"
        dumper = subprocess.Popen([crbench_bin(), "cr", "dump", "--cow", "--tree", str(p.pid), "--images", str(img)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  close_fds=True)
        end = time.monotonic() + 30
        while not wp_ranges(p.pid) and dumper.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        assert dumper.poll() is None, "the dump finished before it could be killed"
        time.sleep(rng.uniform(0, 0.2))
        dumper.send_signal(signal.SIGKILL)
        # Read to the end: the guardian holds the dumper's stderr until it has put the tree back
        # (a kill inside the freeze, now that the protection is armed before it, leaves it work).
        dumper.communicate(timeout=30)
        st = status(p.pid)
        assert st["TracerPid"] == "0", f"attempt {attempt}: still traced by {st['TracerPid']}"
        assert wp_ranges(p.pid) == [], f"attempt {attempt}: write-protect registration left on {wp_ranges(p.pid)}"
        # Not stuck on a write fault nobody serves: it makes progress.
        # (1 s: at 32 MiB/s it uses a few ms of CPU per second, and the counters move in 10 ms ticks)
        before = Path(f"/proc/{p.pid}/stat").read_text().split()[13:15]
        time.sleep(1.0)
        after = Path(f"/proc/{p.pid}/stat").read_text().split()[13:15]
        assert before != after, f"attempt {attempt}: the tree used no CPU after the dumper died (blocked?)"
    go.touch()
    assert p.wait(timeout=60) == 0, log.read_text()
    assert "PASS" in log.read_text()


@pytest.mark.parametrize("mode", ["pre-copy", "cow"])
def test_memory_scenario_in_container(mode, results_dir):
    """The engine modes through `crbench run memory` (64 MiB at 16 MiB/s): the workload's own
    page check passes after the restore, the figures are in the record."""
    require_container_support()
    p = run_crbench("run", "memory", "--runtime", "container", "--engine", "native", "--mode", mode,
                    "--param", "size_mib=64", "--results", results_dir, "--json", timeout=300)
    rec = ok_record(p)
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    assert checks["scenario:pages-intact"]["result"] == "pass", checks["scenario:pages-intact"]
    assert isinstance(rec["checkpoint_downtime_ms"], (int, float)), rec["checkpoint_downtime_ms"]
    mem = rec["engine_report"]["checkpoint"]["engine_figures"]["memory"]
    if mode == "pre-copy":
        assert mem["dirty_tracking"] == "uffd-wp-async+pagemap-scan" and len(mem["rounds"]) >= 2, mem
    else:
        assert mem["protected_pages"] >= 64 * 256, mem
    for c in rec["sandbox"]["cgroups"]:
        assert not Path(c).exists(), f"cgroup {c} left behind"


def test_cow_writes_between_arming_and_freeze_every_byte(tmp_path):
    """COW arms the write-protection while the tree runs; pages written between the arming and the
    freeze lose it and must be protected again in the freeze, or a write after the thaw would reach
    the image. A 300 ms window (CRBENCH_COW_ARM_DELAY_MS) at 64 MiB/s over 64 MiB rewrites a good
    share of the pages in it; the restored program checks every byte against its generation table."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "64", "64"], tmp_path)
    wait_for(log, "READY")
    img = tmp_path / "img"
    d = run_crbench("cr", "dump", "--cow", "--json", "--tree", p.pid, "--images", img, env={"CRBENCH_COW_ARM_DELAY_MS": "300"})
    assert d.returncode == 0, d.stderr
    mem = json.loads(d.stdout)["memory"]
    print(json.dumps(mem))
    assert mem["armed_before_freeze"] is True, mem
    assert mem["armed_write_faults"] > 0 and mem["freeze_reprotected_pages"] > 0, mem
    assert mem["background_pages"] + mem["copied_on_fault_pages"] >= 64 * 256, mem
    assert status(p.pid)["TracerPid"] == "0" and wp_ranges(p.pid) == []
    restore_and_check(p, log, go, img)


@pytest.mark.parametrize("kind", ["shared", "memfd"])
def test_cow_shared_memory_every_byte(kind, tmp_path):
    """COW of two processes (both armed before the freeze) rewriting one shared object (shared
    anonymous, memfd) and their own private pages: the shared object is copied in the freeze and the
    figures say so and why; every byte is checked after the restore."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "32", "16", kind], tmp_path)
    wait_for(log, "READY")
    time.sleep(0.3)
    kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    assert len(kids) == 1, kids
    img = tmp_path / "img"
    d = cr("dump", "--cow", "--json", "--tree", p.pid, "--images", img)
    assert d.returncode == 0, d.stderr
    mem = json.loads(d.stdout)["memory"]
    assert mem["armed_before_freeze"] is True, mem
    shm = mem["shared_memory_copied_in_freeze"]
    assert len(shm) == 1 and shm[0]["copied_in_freeze"] and shm[0]["why"], shm
    for pid in [p.pid, int(kids[0])]:
        assert wp_ranges(pid) == [], f"write-protection left on pid {pid}"
    restore_tree_and_check(p, kids[0], log, go, img)


def test_cow_fork_between_arming_and_freeze_every_byte(tmp_path):
    """A process forked after COW armed its write-protection has none (the kernel drops a
    registration the child would inherit): the freeze must protect it whole, while its parent keeps
    writing (copy-on-write breaks on top of the armed protection). The child checks its own copy
    after the restore, the parent checks its pages and that the child passed."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "32", "32", "spawn"], tmp_path)
    wait_for(log, "READY")
    img = tmp_path / "img"
    env = dict(os.environ, CRBENCH_COW_ARM_DELAY_MS="1000")
    dumper = subprocess.Popen([crbench_bin(), "cr", "dump", "--cow", "--json", "--tree", str(p.pid), "--images", str(img)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, close_fds=True,
                              env=env, text=True)
    end = time.monotonic() + 30
    while not wp_ranges(p.pid) and dumper.poll() is None and time.monotonic() < end:
        time.sleep(0.005)
    assert dumper.poll() is None, "the dump ended before it was armed"
    os.kill(p.pid, signal.SIGUSR1)
    while not Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split() and time.monotonic() < end:
        time.sleep(0.005)
    kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    assert len(kids) == 1, kids
    out, err = dumper.communicate(timeout=120)
    assert dumper.returncode == 0, err
    rec = json.loads(out)
    mem = rec["memory"]
    assert mem["armed_before_freeze"] is True and rec["processes"] == 2, (rec["processes"], mem)
    assert mem["protected_pages"] >= 2 * 32 * 256, mem  # the parent's armed pages and the child's, whole
    for pid in [p.pid, int(kids[0])]:
        assert wp_ranges(pid) == [], f"write-protection left on pid {pid}"
    restore_tree_and_check(p, kids[0], log, go, img)
