"""The scenario matrix: one test per scenario x runtime x engine, each through
`crbench compare <scenario> --quick --runtimes R --engines E` (one mode per engine). Where the
engine claims support the run must complete and its fidelity checks must hold; where it does not,
the refusal must carry a reason.

`meson test --suite scenario` runs the whole matrix. The `quick` test setup
(`meson test --setup quick`, what scripts/test.sh and CI use) sets CRBENCH_SCENARIO_QUICK=1: the
container rows of counter, compute and desktop-session, and counter on the VM with QEMU.

Rest-of-system checks (`rest:*`: an outside TCP peer, the guest's wall clock, a bus name) are
measurements of what a checkpoint does to the world around the workload, not claims an engine
makes: a VM's clock stops while it is paused, a leave-running dump resets an outside peer. They
are printed, not asserted here; harness/test_rest_of_system.py tests that they measure right."""
import json
import os

import pytest

from conftest import require_root, run_crbench

ALL = ["counter", "memory", "compute", "tcp-kv", "shared-ipc", "editor-tty", "desktop-session"]
ENGINES = {"container": ["pause", "criu", "native"], "vm": ["pause", "qemu", "libvirt"]}
QUICK = [("counter", "container", e) for e in ENGINES["container"]] + \
        [("compute", "container", e) for e in ENGINES["container"]] + \
        [("desktop-session", "container", e) for e in ENGINES["container"]] + \
        [("counter", "vm", "qemu")]

if os.environ.get("CRBENCH_SCENARIO_QUICK") == "1":
    MATRIX = QUICK
else:
    MATRIX = [(s, r, e) for s in ALL for r in ("container", "vm") for e in ENGINES[r]]


def failed_checks(record):
    return [c for c in record.get("fidelity", {}).get("checks", []) if c.get("result") == "fail"]


@pytest.mark.parametrize("scenario,runtime,engine", MATRIX, ids=[f"{s}-{r}-{e}" for s, r, e in MATRIX])
def test_scenario_matrix(scenario, runtime, engine, tmp_path):
    require_root()
    p = run_crbench("compare", scenario, "--quick", "--runtimes", runtime, "--engines", engine,
                    "--results", tmp_path, "--json", timeout=900)
    if p.returncode == 2:
        pytest.fail(f"compare refused the request:\n{p.stderr}")
    summary = json.loads(p.stdout)
    rows = summary["combinations"]
    assert rows, "compare produced no rows"
    records = {}
    for f in tmp_path.iterdir():
        if f.name.endswith(".json") and not f.name.endswith(".compare.json"):
            rec = json.loads(f.read_text())
            records[rec["run_id"]] = rec
    # Every run, refusals included, was written as a record.
    assert len(records) >= len(rows)
    problems, data = [], []
    for row in rows:
        key = row["key"]
        if row["planned"] != "run":
            if not row["reason"]:
                problems.append(f"{key}: {row['planned']} without a reason")
            continue
        if row["status"] == "unsupported":
            # The engine refused this workload at checkpoint time, naming what it cannot save.
            if not row.get("reason"):
                problems.append(f"{key}: refused at checkpoint time without a reason")
            else:
                print(f"{key}: refused: {row['reason']}")
            continue
        if row["status"] != "ok":
            problems.append(f"{key}: {row['status']}: {row.get('reason', '')}")
            continue
        runs = [records[i] for i in row.get("run_ids", []) if i in records]
        assert runs, f"{key}: no run record for the row (run_ids {row.get('run_ids')})"
        for r in runs:
            for c in failed_checks(r):
                line = f"{key} {r['run_id']}: {c['name']}: {c.get('detail', '')}"
                (data if c["name"].startswith("rest:") else problems).append(line)
    if data:
        print("rest-of-system findings (data, not asserted):\n" + "\n".join(data))
    assert not problems, "\n".join(problems) + "\n\nstderr:\n" + p.stderr[-3000:]


def test_bad_input_refused_before_anything_starts(tmp_path):
    require_root()
    for args, needle in [
        (["counter", "--engines", "no-such-engine"], "unknown engine 'no-such-engine'"),
        (["counter", "--repeats", "0"], "--repeats 0"),
        (["counter", "--modes", "teleport"], "mode 'teleport'"),
        (["counter", "--results", "/proc/crbench-cannot-write"], "--results"),
        (["no-such-scenario"], "unknown scenario"),
    ]:
        p = run_crbench("compare", *args, timeout=120)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert needle in p.stderr, (args, p.stderr)
