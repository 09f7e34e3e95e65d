"""The native engine (`crbench cr`) on event/timer files, terminals, inet sockets and namespaces:
one self-checking test program per kind through dump -> restore, real programs, and a test per
known gap that expects the dump's refusal naming the object."""
import os
import socket
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import crbench_bin
from test_native_cr import cr, need_root, prog, start, wait_for

PROGS = ["tp_epoll", "tp_timerfd", "tp_signalfd", "tp_inotify", "tp_pty", "tp_udp", "tp_tcp"]


def dump_restore(name, tmp_path, *argv):
    go = tmp_path / "go"
    p, log = start([prog(name), str(go), *argv], tmp_path)
    wait_for(log, "READY")
    d = cr("dump", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr + log.read_text()
    assert p.wait(timeout=10) == -signal.SIGKILL
    go.touch()
    r = cr("restore", "--images", tmp_path / "img")
    out = log.read_text()
    assert r.returncode == 0 and "PASS" in out, f"restore: {r.stderr}\nprogram: {out}"


@pytest.mark.parametrize("name", PROGS)
def test_program_survives_dump_restore(name, tmp_path):
    need_root()
    dump_restore(name, tmp_path)


def test_tcp_peer_outside_the_tree_keeps_its_connection(tmp_path):
    """pytest holds a TCP connection to the tree; the dump silences it (netfilter + TCP_REPAIR),
    what pytest sends while the tree is gone is retransmitted to the restored copy, which answers
    on the same connection."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_tcp"), str(go), "external"], tmp_path)
    wait_for(log, "PORT")
    port = int(log.read_text().split("PORT ")[1].split()[0])
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    assert f.readline() == b"hello\n"
    wait_for(log, "READY")
    d = cr("dump", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode == 0, d.stderr
    assert p.wait(timeout=10) == -signal.SIGKILL
    s.sendall(b"while-gone\n")  # dropped by the dump's rules, retransmitted to the copy
    go.touch()
    r = subprocess.Popen([crbench_bin(), "cr", "restore", "--images", str(tmp_path / "img")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert f.readline() == b"echo while-gone\n", log.read_text()
        s.sendall(b"after\n")
        assert f.readline() == b"echo after\n"
        f.close()  # the makefile holds the socket open too
        s.close()
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0 and "PASS" in log.read_text(), err + log.read_text()
    finally:
        if r.poll() is None:
            r.kill()
            r.wait()
