"""The native engine (`crbench cr`) on plain process trees: every self-checking test program and
real programs (busybox sh, python3) through dump -> restore; refusals; leave-running; a damaged
image; and the dumper SIGKILLed at random points leaving the workload running and unfrozen."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cr, crbench_bin, need_root, prog, wait_for

PROGS = ["tp_memory", "tp_threads", "tp_forktree", "tp_files", "tp_signals", "tp_mapshared",
         "tp_session", "tp_itimer"]


def start(argv, tmp_path):
    log = tmp_path / "out.log"
    f = open(log, "w")
    # A fresh session so the tree holds no terminal and no fd of pytest's.
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    f.close()
    return p, log


@pytest.mark.parametrize("name", PROGS)
def test_program_survives_dump_restore(name, tmp_path):
    need_root()
    go = tmp_path / "go"
    p, log = start([prog(name), str(go)], tmp_path)
    wait_for(log, "READY")
    d = cr("dump", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr
    assert p.wait(timeout=10) == -signal.SIGKILL  # stop-and-copy: the original is gone
    s = cr("show", tmp_path / "img")
    assert s.returncode == 0 and "all checksums verified" in s.stdout, s.stderr
    go.touch()
    r = cr("restore", "--images", tmp_path / "img")
    out = log.read_text()
    assert r.returncode == 0 and "PASS" in out, f"restore: {r.stderr}\nprogram: {out}"


def test_refuses_unsupported_and_leaves_tree_running(tmp_path):
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_refuse"), str(go)], tmp_path)
    wait_for(log, "READY")
    d = cr("dump", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode != 0
    for what in ["unsupported: fd 3", "socket:[", "SysV shm segment"]:
        assert what in d.stderr, d.stderr
    assert not (tmp_path / "img" / "inventory.img").exists()
    go.touch()
    assert p.wait(timeout=10) == 0 and "PASS" in log.read_text()


def test_leave_running_then_restore_the_copy(tmp_path):
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_signals"), str(go)], tmp_path)
    wait_for(log, "READY")
    d = cr("dump", "--leave-running", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr
    go.touch()
    assert p.wait(timeout=10) == 0, log.read_text()  # the original carried on, untouched
    r = cr("restore", "--images", tmp_path / "img")  # its pid is free again: restore the copy
    # The copy writes its PASS at the file offset it had at dump time, over the original's.
    assert r.returncode == 0 and "exited with status 0" in r.stderr, r.stderr + log.read_text()


def test_busybox_sh_loop_continues(tmp_path):
    need_root()
    bb = shutil.which("busybox")
    if not bb:
        pytest.skip("busybox not installed")
    count = tmp_path / "count"
    script = f'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i > {count}; sleep 0.02; done'
    p, _ = start([bb, "sh", "-c", script], tmp_path)
    wait_for(count, "5")
    d = cr("dump", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr
    p.wait(timeout=10)
    before = int(count.read_text())
    time.sleep(0.2)
    assert int(count.read_text()) == before
    r = cr("restore", "--detach", "--images", tmp_path / "img")
    assert r.returncode == 0, r.stderr
    try:
        end = time.monotonic() + 20
        while int(count.read_text() or 0) < before + 5 and time.monotonic() < end:
            time.sleep(0.05)
        now = int(count.read_text())
        assert now >= before + 5, f"counter stuck at {now} (dumped at {before})"
    finally:
        os.kill(p.pid, signal.SIGKILL)


PY = r'''
import sys, os, time, hashlib
go = sys.argv[1]
h = hashlib.sha256(); n = 0; data = {}
print("READY", os.getpid(), flush=True)
while not os.path.exists(go):
    n += 1; h.update(str(n).encode()); data[n % 1000] = n
    if n % 10000 == 0: time.sleep(0.001)
for _ in range(100000): n += 1; h.update(str(n).encode()); data[n % 1000] = n
ref = hashlib.sha256()
for i in range(1, n + 1): ref.update(str(i).encode())
ok = ref.hexdigest() == h.hexdigest() and all(data[k % 1000] == k for k in range(n - 999, n + 1))
print("PASS" if ok else "FAIL", n, flush=True)
sys.exit(0 if ok else 1)
'''


def test_python_computation_continues(tmp_path):
    need_root()
    (tmp_path / "comp.py").write_text(PY)
    go = tmp_path / "go"
    p, log = start(["/usr/bin/python3", str(tmp_path / "comp.py"), str(go)], tmp_path)
    wait_for(log, "READY")
    time.sleep(0.3)
    d = cr("dump", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr
    p.wait(timeout=10)
    go.touch()
    r = cr("restore", "--images", tmp_path / "img")
    assert r.returncode == 0 and "PASS" in log.read_text(), r.stderr + log.read_text()


def test_damaged_images_are_refused_naming_the_file(tmp_path):
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_memory"), str(go)], tmp_path)
    wait_for(log, "READY")
    d = cr("dump", "--leave-running", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr
    go.touch()
    p.wait(timeout=30)
    img = tmp_path / "img"
    pages = next(img.glob("pages-*.img"))
    bad = tmp_path / "bad"
    shutil.copytree(img, bad)
    with open(bad / pages.name, "r+b") as f:  # flip a byte in the page data
        f.seek(4096 * 10)
        b = f.read(1)
        f.seek(4096 * 10)
        f.write(bytes([b[0] ^ 0xff]))
    r = cr("restore", "--images", bad)
    assert r.returncode != 0 and pages.name in r.stderr and "corrupted" in r.stderr, r.stderr
    trunc = tmp_path / "trunc"
    shutil.copytree(img, trunc)
    core = next(trunc.glob("core-*.img"))
    os.truncate(core, core.stat().st_size // 2)
    for args in (["show", trunc], ["restore", "--images", trunc]):
        r = cr(*args)
        assert r.returncode != 0 and core.name in r.stderr and "truncated" in r.stderr, r.stderr
    # A restore that failed midway leaves no process behind (the pid is free again).
    assert not Path(f"/proc/{p.pid}").exists() or "Z" in Path(f"/proc/{p.pid}/stat").read_text().split()[2]


def thread_states(pid):
    """{tid: (State, SigBlk, TracerPid)} of every thread of pid."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            st = dict(l.split(":\t", 1) for l in Path(f"/proc/{pid}/task/{t}/status").read_text().splitlines()
                      if ":\t" in l)
        except FileNotFoundError:
            continue
        out[int(t)] = (st["State"], st["SigBlk"], st["TracerPid"])
    return out


def kill_dumper(pid, img, delay=None, fault=None, cgroup=None):
    """One dump of pid --leave-running, SIGKILLed after `delay` seconds or by itself at the fault
    point `fault` (CRBENCH_NATIVE_FAULT). Returns stderr of the dumper and its guardian, read to its
    end: the guardian holds it until it has put the workload back, so this also waits for it."""
    env = dict(os.environ)
    if fault:
        env["CRBENCH_NATIVE_FAULT"] = fault
    extra = ["--freeze-cgroup", str(cgroup)] if cgroup else []
    d = subprocess.Popen([crbench_bin(), "cr", "dump", "--leave-running", "--no-sync", *extra, "--tree", str(pid),
                          "--images", str(img)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         close_fds=True, env=env, text=True)
    if delay is not None:
        time.sleep(delay)
        d.kill()
    try:
        _, err = d.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        d.kill()
        raise AssertionError(f"the dumper or its guardian still runs 30 s later (fault {fault}, delay {delay})")
    return d.returncode, err


def test_dumper_killed_at_random_points_leaves_workload_running(tmp_path):
    """The dumper SIGKILLed at random times (20 runs) and, deterministically, inside each kind of
    window where it has changed the workload (14 runs: an injected system call's registers set, at
    its entry and exit stops, the group stop being set up, the tree's cgroup frozen): every time the
    workload keeps running, untraced, unstopped, its cgroup thawed, with its original signal masks,
    and at the end its threads' registers (AVX-512 included) and state check out (PASS). Half of
    the runs freeze the workload's cgroup during the seize (`--freeze-cgroup`, as a container dump
    does) when the cgroup v1 freezer is there."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_threads"), str(go)], tmp_path)
    wait_for(log, "READY")
    freezer = Path("/sys/fs/cgroup/freezer")
    cg = freezer / f"crbench-test-{os.getpid()}" if (freezer / "cgroup.procs").exists() else None
    try:
        if cg:
            cg.mkdir()
            (cg / "cgroup.procs").write_text(str(p.pid))
        before = thread_states(p.pid)
        assert len(before) >= 3, before
        rng = random.Random(int(os.environ.get("CRBENCH_TEST_SEED", "7")))
        runs = [("delay", rng.uniform(0, 0.15)) for _ in range(20)]
        runs += [("fault", f"{pt}:{rng.randint(1, 14)}") for pt in ("inject-set", "inject-entry", "inject-exit")
                 for _ in range(3)]
        runs += [("fault", "safety-stop:1"), ("fault", "inject-set:1"), ("fault", "inject-exit:1")]
        if cg:
            runs += [("fault", "frozen:1"), ("fault", "frozen:1")]
        put_back = 0
        for i, (kind, arg) in enumerate(runs):
            use_cg = cg if cg and (i % 2 == 0 or arg == "frozen:1") else None
            rc, err = kill_dumper(p.pid, tmp_path / f"img{i}", cgroup=use_cg,
                                  **({"delay": arg} if kind == "delay" else {"fault": arg}))
            what = f"run {i} ({kind} {arg}{', frozen cgroup' if use_cg else ''}, dumper exit {rc})"
            assert p.poll() is None, f"{what}: the workload died ({p.returncode}): {log.read_text()}\n{err}"
            if kind == "fault":
                assert rc == -signal.SIGKILL, f"{what}: the fault point was not reached: {err}"
                want = "thawed" if arg == "frozen:1" else "put back the registers"
                assert want in err, f"{what}: {err}"
                put_back += 1
            if cg:
                assert (cg / "freezer.state").read_text().strip() == "THAWED", f"{what}: cgroup left frozen\n{err}"
            # The guardian has exited (stderr closed); give the SIGCONT a moment to reach every thread.
            end = time.monotonic() + 5
            while time.monotonic() < end:
                now = thread_states(p.pid)
                if not any(s[0].startswith(("t", "T")) for s in now.values()):
                    break
                time.sleep(0.02)
            now = thread_states(p.pid)
            for tid, (state, blk, tracer) in now.items():
                assert tracer == "0", f"{what}: thread {tid} still traced by {tracer}\n{err}"
                assert not state.startswith(("t", "T")), f"{what}: thread {tid} is {state}\n{err}"
                assert blk == before[tid][1], f"{what}: thread {tid} signal mask {blk}, was {before[tid][1]}\n{err}"
        assert put_back == (14 if cg else 12)
        go.touch()
        rc = p.wait(timeout=20)
        assert rc == 0 and "PASS" in log.read_text(), log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if cg and cg.exists():
            (cg / "freezer.state").write_text("THAWED")
            for _ in range(100):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


def test_restore_failing_midway_leaves_no_process(tmp_path):
    """A fork tree whose last process's page data is corrupted: the restore has already created
    every process and reshaped the first ones when it finds the damage; all of them must go."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_forktree"), str(go)], tmp_path)
    wait_for(log, "READY")
    img = tmp_path / "img"
    d = cr("dump", "--tree", p.pid, "--images", img)
    assert d.returncode == 0, d.stderr
    p.wait(timeout=10)
    s = cr("show", "--json", img)
    assert s.returncode == 0, s.stderr
    import json
    procs = [q for q in json.loads(s.stdout)["processes"] if not q["zombie"]]
    assert len(procs) >= 3, procs
    last = procs[-1]
    pages = img / f"pages-{last['pid']}.img"
    with open(pages, "r+b") as f:  # flip a byte in the last page of data
        f.seek(-100, os.SEEK_END)
        b = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xff]))
    go.touch()
    r = cr("restore", "--images", img)
    assert r.returncode != 0 and pages.name in r.stderr, r.stderr
    assert "PASS" not in log.read_text()
    for q in procs:
        path = Path(f"/proc/{q['pid']}/stat")
        if path.exists():
            fields = path.read_text().rsplit(")", 1)[1].split()
            comm = path.read_text().split("(", 1)[1].rsplit(")", 1)[0]
            assert comm != q["comm"] or fields[0] == "Z", f"half-restored process {q['pid']} ({comm}) survived"


def test_multithreaded_cpp_pbzip2_continues(tmp_path):
    """A real multi-threaded C++ program: pbzip2 (pthreads, a reader, compressor threads and a
    writer) compressing a file is dumped mid-way, restored, and must finish with an archive that
    decompresses to exactly the input."""
    need_root()
    pbz = shutil.which("pbzip2")
    if not pbz:
        pytest.skip("pbzip2 not installed (scripts/packages/native.txt)")
    import bz2
    import hashlib
    data = os.urandom(1 << 20) * 6 + os.urandom(12 << 20)  # ~18 MiB, a few seconds of work
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    out = tmp_path / "out.bz2"
    with open(out, "wb") as f:
        p = subprocess.Popen([pbz, "-p2", "-c", str(src)], stdout=f, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    end = time.monotonic() + 30
    while out.stat().st_size == 0 and p.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    if p.poll() is not None:
        pytest.skip("pbzip2 finished before it could be dumped (machine too fast for this input)")
    threads = len(os.listdir(f"/proc/{p.pid}/task"))
    d = cr("dump", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr
    assert p.wait(timeout=10) == -signal.SIGKILL
    assert threads >= 3, f"pbzip2 ran {threads} threads at the dump"
    r = cr("restore", "--images", tmp_path / "img", timeout=300)
    assert r.returncode == 0 and "exited with status 0" in r.stderr, r.stderr
    assert hashlib.sha256(bz2.decompress(out.read_bytes())).digest() == hashlib.sha256(data).digest()
