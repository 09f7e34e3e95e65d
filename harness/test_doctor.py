"""`crbench doctor`: the report has every section, and its accelerator agrees with the KVM probe."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import crbench_bin, run_crbench


def doctor_json(env=None):
    p = run_crbench("doctor", "--json", timeout=300, env=env)
    assert p.returncode == 0, f"doctor must exit 0 (it is a report):\n{p.stderr}"
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def report():
    return doctor_json(env={"CRBENCH_ACCEL": ""})


def test_every_section_is_present(report):
    for key in ("schema", "crbench", "host", "accelerator", "qemu", "namespaces", "cgroup",
                "pagemap_scan", "userfaultfd", "libvirt", "engines"):
        assert key in report, key
    host = report["host"]
    for key in ("kernel", "cpu_model", "cpu_flags", "cores", "memory_mib", "root"):
        assert key in host, key
    for flag in ("avx512f", "vmx", "svm"):
        assert isinstance(host["cpu_flags"][flag], bool)
    assert host["cores"] >= 1
    for ns in ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup", "time"):
        entry = report["namespaces"][ns]
        assert entry["available"] or entry["error"], ns
    assert isinstance(report["cgroup"]["freezer"], bool)
    for section in ("pagemap_scan", "userfaultfd"):
        s = report[section]
        assert s["available"] or s["reason"], section
    assert "wp_async" in report["userfaultfd"]
    assert "daemon_running" in report["libvirt"] and "startable" in report["libvirt"]
    q = report["qemu"]
    assert q["version"] if q["available"] else q["reason"]


def test_every_engine_reports_capabilities_or_why_not(report):
    names = run_crbench("version", check=True).stdout.split("engines built in:")[1].split()
    assert sorted(report["engines"]) == sorted(names)
    for name, e in report["engines"].items():
        if e["available"]:
            assert isinstance(e["modes"], list), name
            assert e["runtimes"], name
        else:
            assert e["unavailable"], f"engine {name} is unavailable without a reason"


def test_accelerator_agrees_with_kvm_probe(report):
    a = report["accelerator"]
    assert a["accel"] in ("kvm", "tcg")
    assert not a["forced"]
    assert a["reason"]
    d = a["details"]
    assert a["accel"] == ("kvm" if d["kvm_usable"] else "tcg"), a
    if not os.path.exists("/dev/kvm"):
        assert a["accel"] == "tcg" and "does not exist" in a["reason"]
    elif a["accel"] == "tcg" and os.path.exists("/sys/module/kvm_pvm"):
        assert a["reason"].startswith("TCG because kvm_pvm loaded:"), a["reason"]


def test_environment_forces_accelerator():
    # The other direction (kvm) is covered by the unit test Accel.EnvironmentForcesAndIsRecorded.
    forced = "tcg"
    a = doctor_json(env={"CRBENCH_ACCEL": forced})["accelerator"]
    assert a["accel"] == forced and a["forced"]
    assert f"CRBENCH_ACCEL={forced}" in a["reason"]


def test_table_output():
    p = run_crbench("doctor", timeout=300)
    assert p.returncode == 0, p.stderr
    for word in ("accelerator", "qemu", "namespaces", "cgroup freezer", "PAGEMAP_SCAN", "userfaultfd",
                 "libvirt", "engines"):
        assert word in p.stdout, word


def test_unprivileged_user_gets_a_report_too():
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to user nobody")
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) not installed")
    p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", crbench_bin(),
                        "doctor", "--json"], capture_output=True, text=True, timeout=300)
    if "Permission denied" in p.stderr and p.returncode != 0:
        pytest.skip(f"user nobody cannot execute {crbench_bin()} (directory permissions)")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["host"]["root"] is False
