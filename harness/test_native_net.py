"""The native engine (`crbench cr`) on event/timer files, terminals, inet sockets and namespaces:
one self-checking test program per kind through dump -> restore, real programs, and a test per
known gap that expects the dump's refusal naming the object."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_native_cr import cr, need_root, prog, start, wait_for

PROGS = ["tp_epoll", "tp_timerfd", "tp_signalfd", "tp_inotify", "tp_pty"]


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
