"""Shared fixtures for the integration harness: the built crbench binary and helpers to run it."""
import json
import os
import subprocess
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
