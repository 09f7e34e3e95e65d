"""The native engine's fault safety for the kernel objects a dump changes in its tree (issue #8):
the dumper is SIGKILLed at a fault point (CRBENCH_NATIVE_FAULT) right after it changed a TCP
connection (netfilter DROP rules in, repair mode on), while a POSIX message queue is drained, while
a unix socket is half peeked with SO_PEEK_OFF moved, and right after it created a userfaultfd in
the target; each time the dump's guardian must put the object back before the tree runs again."""
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import cr, crbench_bin, need_root, prog, wait_for
from test_native_cr import kill_dumper, start


def drop_rules(port):
    """DROP rules of the host's netfilter naming `port` (the dump's are for 127.0.0.1)."""
    out = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout.splitlines()
    return [r for r in out if "DROP" in r and (f"--sport {port} " in r + " " or f"--dport {port} " in r + " ")]


def remove_rules(rules):
    for r in rules:
        subprocess.run(["iptables", *r.replace("-A ", "-D ", 1).split()], capture_output=True)


def test_dumper_killed_mid_change_puts_the_objects_back(tmp_path):
    """tp_fault_objects holds a TCP connection to this test, a POSIX queue of 8 messages of mixed
    priorities, and unix stream/dgram pairs with data queued. The dumper (--leave-running) kills
    itself at each point where it has changed one of them; after each kill no DROP rule for the
    connection is left and the guardian says what it put back; at the end the connection still
    carries data both ways, out of repair mode, the queue holds every message in its order and the
    unix sockets have SO_PEEK_OFF -1 and give their data from the start (the program checks)."""
    need_root()
    if subprocess.run(["iptables", "-S"], capture_output=True).returncode != 0:
        pytest.skip("iptables is not usable here (the dump of a TCP connection needs it)")
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    go = tmp_path / "go"
    p, log = start([prog("tp_fault_objects"), str(go), str(port)], tmp_path)
    conn = None
    try:
        lst.settimeout(30)
        conn, _ = lst.accept()
        conn.settimeout(30)
        wait_for(log, "READY")
        # fault point -> what the guardian must report having put back
        runs = [("guardian-command:1", "ran /usr/bin/nsenter"),
                ("guardian-command:2", "ran /usr/bin/nsenter"),
                ("tcp-lock:1", "ran /usr/bin/nsenter"),
                ("tcp-repair:1", "take TCP repair mode off"),
                ("mq-drain:1", "put back 8 message(s)"),
                ("peek:1", "set SO_PEEK_OFF back"),
                ("peek:2", "set SO_PEEK_OFF back")]
        rng = random.Random(int(os.environ.get("CRBENCH_TEST_SEED", "7")))
        runs += [(None, rng.uniform(0.02, 0.25)) for _ in range(6)]  # and at random times
        for i, (fault, said) in enumerate(runs):
            if fault:
                rc, err = kill_dumper(p.pid, tmp_path / f"img{i}", fault=fault)
            else:
                rc, err = kill_dumper(p.pid, tmp_path / f"img{i}", delay=said)
            what = f"run {i} (fault {fault}, delay {said}, dumper exit {rc})"
            assert p.poll() is None, f"{what}: the workload died: {log.read_text()}\n{err}"
            if not fault:
                said = None
            elif rc != -signal.SIGKILL:
                raise AssertionError(f"{what}: the fault point was not reached: {err}")
            if said:
                assert said in err, f"{what}: the guardian did not say '{said}': {err}"
            left = drop_rules(port)
            if left:
                remove_rules(left)
                raise AssertionError(f"{what}: DROP rules left in place: {left}\n{err}")
        # The guardian has exited (stderr closed) and ended the group stops.
        go.touch()
        conn.sendall(b"hello\n")
        f = conn.makefile("rb")
        assert f.readline() == b"echo hello\n", log.read_text()
        f.close()
        assert p.wait(timeout=30) == 0 and "PASS" in log.read_text(), log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if conn:
            conn.close()
        lst.close()
        remove_rules(drop_rules(port))


def test_dumper_killed_after_creating_a_userfaultfd_leaves_none_in_the_target(tmp_path):
    """Dirty tracking creates a userfaultfd inside the target and closes it there once crbench
    holds it; a dumper killed between the two leaves the target holding it, unless the guardian
    closes it (it does, and says so)."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "4", "0"], tmp_path)
    try:
        wait_for(log, "READY")

        def uffds():
            out = []
            for fd in Path(f"/proc/{p.pid}/fd").iterdir():
                try:
                    if "userfaultfd" in os.readlink(fd):
                        out.append(fd.name)
                except FileNotFoundError:
                    pass
            return out

        assert uffds() == []
        env = dict(os.environ, CRBENCH_NATIVE_FAULT="uffd:1")
        d = subprocess.run([crbench_bin(), "cr", "dump", "--pre-copy", "--tree", str(p.pid), "--images",
                            str(tmp_path / "img")], capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL, close_fds=True)
        if d.returncode != -signal.SIGKILL and ("WP_ASYNC" in d.stderr or "userfaultfd()" in d.stderr):
            pytest.skip(f"no userfaultfd dirty tracking here: {d.stderr.strip()}")
        assert d.returncode == -signal.SIGKILL, f"the fault point was not reached: {d.stderr}"
        assert "closed the dumper's descriptor" in d.stderr, d.stderr
        end = time.monotonic() + 5
        while uffds() and time.monotonic() < end:
            time.sleep(0.05)
        assert uffds() == [], f"the target still holds the dumper's userfaultfd: {d.stderr}"
        go.touch()
        assert p.wait(timeout=30) == 0 and "PASS" in log.read_text(), log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_precopy_dump_gives_tcp_back_before_the_tree_runs(tmp_path):
    """A pre-copy dump releases the tree before it writes the image; the connections it silenced
    must be out of repair mode and unlocked by then. tp_tcp_stream sends a numbered line every
    millisecond to this test through the dump: every number arrives, in order, and nothing of its
    own comes back into its receive queue (a write in repair mode goes there)."""
    need_root()
    from test_native_precopy import need_uffd_wp
    need_uffd_wp(tmp_path)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    go = tmp_path / "go"
    p, log = start([prog("tp_tcp_stream"), str(go), str(port), "64"], tmp_path)
    conn = None
    try:
        lst.settimeout(30)
        conn, _ = lst.accept()
        conn.settimeout(60)
        lines, buf = [], b""
        done = threading.Event()

        def reader():
            nonlocal buf
            while not done.is_set():
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                *full, buf = buf.split(b"\n")
                lines.extend(full)
                if b"end" in full:
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        wait_for(log, "READY")
        d = cr("dump", "--pre-copy", "--json", "--tree", p.pid, "--images", tmp_path / "img")
        assert d.returncode == 0, d.stderr
        assert p.poll() is None, log.read_text()
        time.sleep(0.2)  # lines sent after the dump, too
        go.touch()
        assert p.wait(timeout=30) == 0 and "PASS" in log.read_text(), log.read_text()
        t.join(timeout=30)
        done.set()
        assert lines and lines[-1] == b"end", f"the stream did not end: {lines[-3:]}"
        nums = [int(x) for x in lines[:-1]]
        gaps = [(a, b) for a, b in zip(nums, nums[1:]) if b != a + 1]
        assert nums[0] == 0 and not gaps, f"lines missing: {gaps[:5]} ({len(nums)} received)"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if conn:
            conn.close()
        lst.close()
        remove_rules(drop_rules(port))


def test_cow_dumper_killed_between_arming_and_freeze_leaves_tree_unprotected(tmp_path):
    """COW arms write-protection while the tree runs, then freezes it. A dumper killed in between
    (inside the arming's injection of the userfaultfd, after part of the memory is protected, after
    all of it is) must leave the tree running, untraced, with no userfaultfd and no write-protect
    registration, still writing (a write to a protected page nobody serves would block it), and
    every byte of its memory as its own generation table says (the program checks at the end)."""
    need_root()
    from test_native_precopy import need_uffd_wp, status, wp_ranges
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "64", "32"], tmp_path)
    try:
        wait_for(log, "READY")
        for i, fault in enumerate(["uffd:1", "cow-arm:1", "cow-armed:1"]):
            env = dict(os.environ, CRBENCH_NATIVE_FAULT=fault)
            d = subprocess.run([crbench_bin(), "cr", "dump", "--cow", "--no-sync", "--tree", str(p.pid), "--images",
                                str(tmp_path / f"img{i}")], capture_output=True, text=True, timeout=60, env=env,
                               stdin=subprocess.DEVNULL, close_fds=True)
            assert d.returncode == -signal.SIGKILL, f"{fault}: the fault point was not reached: {d.stderr}"
            end = time.monotonic() + 5
            while (wp_ranges(p.pid) or status(p.pid)["TracerPid"] != "0") and time.monotonic() < end:
                time.sleep(0.05)
            assert p.poll() is None, f"{fault}: the workload died: {log.read_text()}"
            assert status(p.pid)["TracerPid"] == "0", f"{fault}: still traced"
            assert wp_ranges(p.pid) == [], f"{fault}: write-protect registration left on {wp_ranges(p.pid)}"
            fds = [f for f in Path(f"/proc/{p.pid}/fd").iterdir() if "userfaultfd" in os.readlink(f)]
            assert fds == [], f"{fault}: the tree holds a userfaultfd: {d.stderr}"
            before = Path(f"/proc/{p.pid}/stat").read_text().split()[13:15]
            time.sleep(1.0)
            after = Path(f"/proc/{p.pid}/stat").read_text().split()[13:15]
            assert before != after, f"{fault}: the tree used no CPU after the dumper died (blocked on a fault?)"
        go.touch()
        assert p.wait(timeout=60) == 0 and "PASS" in log.read_text(), log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
