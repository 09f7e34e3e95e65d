"""Shared fixtures for the integration harness: the built crbench binary and helpers to run it."""
import json
import os
import subprocess
import time
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def crbench_bin() -> str:
    b = os.environ.get("CRBENCH_BIN")
    if not b:
        pytest.fail("CRBENCH_BIN is not set: run the harness through `meson test`")
    return b


def run_crbench(*args, timeout=600, check=False, env=None):
    """Run crbench with args; returns CompletedProcess (text)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run([crbench_bin(), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"crbench {' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def run_json(*args, timeout=600):
    p = run_crbench(*args, "--json", timeout=timeout, check=True)
    return json.loads(p.stdout)


@pytest.fixture
def crbench():
    return run_crbench


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    return d


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, cgroups)")


FREEZER = Path("/sys/fs/cgroup/freezer")


def require_container_support():
    """The container runtime needs root and the cgroup v1 freezer; skip (exit 77) without them."""
    require_root()
    if not (FREEZER / "cgroup.procs").exists():
        pytest.skip("the cgroup v1 freezer is not mounted at /sys/fs/cgroup/freezer")


# --- the native engine's tests (test_native_*.py) -------------------------------------------

def need_root():
    if os.geteuid() != 0:
        pytest.skip("the native engine needs root (ptrace of any process, clone3 set_tid)")


def prog(name):
    """Path of a native test program (host/engine/native/testprogs), built with crbench."""
    p = Path(os.environ.get("CRBENCH_BUILD", "")) / "host" / "engine" / "native" / name
    if not p.exists():
        pytest.skip(f"{p} not built (engines option without native?)")
    return str(p)


def cr(*args, timeout=120):
    """`crbench cr ...` with no inherited fds (they would be part of the dumped tree's world)."""
    return subprocess.run([crbench_bin(), "cr", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, close_fds=True)


def wait_for(path, text, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return True
        time.sleep(0.02)
    raise AssertionError(f"{path} never showed {text!r}: {path.read_text() if path.exists() else ''}")


def ok_record(p):
    """The run record a `crbench run ... --json` printed, asserted to be status ok."""
    try:
        rec = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON record (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    assert p.returncode == 0 and rec["status"] == "ok", rec.get("error")
    return rec


_started = []


def start_program(argv, tmp_path):
    """Start a test program in its own session, output to tmp_path/out.log; killed after the test."""
    log = tmp_path / "out.log"
    with open(log, "w") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True)
    _started.append(p)
    return p, log


@pytest.fixture(autouse=True)
def kill_started_programs():
    """A failing test must not leave its program running (or a restored copy of it, or a child it
    forked: the whole session goes)."""
    yield
    while _started:
        p = _started.pop()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if p.poll() is None:
            p.kill()
        p.wait()
