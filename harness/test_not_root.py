"""Commands that need root refuse a normal user with one clear line, before touching anything."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import crbench_bin, run_crbench

# Subcommands that create namespaces, cgroups, mounts or VMs, with arguments that would otherwise run.
NEEDS_ROOT = [
    ["run", "counter", "--runtime", "container", "--engine", "pause"],
    ["run", "counter", "--runtime", "vm", "--engine", "pause"],
    ["compare", "counter"],
]


def subcommands():
    out = run_crbench("--help").stdout
    section = out.split("SUBCOMMANDS:")[-1]
    return set(re.findall(r"^\s+([a-z][a-z0-9-]*)\s", section, re.M))


@pytest.mark.parametrize("args", NEEDS_ROOT, ids=lambda a: "-".join(a[:1] + a[3:4]))
def test_refuses_non_root_clearly(args, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to user nobody")
    if args[0] not in subcommands():
        pytest.skip(f"crbench {args[0]} is not built in yet")
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) not installed")
    os.chmod(tmp_path, 0o777)
    p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", crbench_bin(), *args],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if p.returncode == 126 or "Permission denied" in p.stderr and "crbench:" not in p.stderr:
        pytest.skip(f"user nobody cannot execute {crbench_bin()} (directory permissions)")
    assert p.returncode != 0, f"crbench {' '.join(args)} ran as nobody:\n{p.stdout}\n{p.stderr}"
    assert "needs root" in p.stderr, f"no clear 'needs root' message:\n{p.stderr}"
    assert "Traceback" not in p.stderr and "terminate called" not in p.stderr
