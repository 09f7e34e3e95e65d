"""The scenario matrix: every scenario x runtime through `crbench compare --quick`, which runs
each engine built in (one mode each). For every row: where the engine claims support the run must
complete and its fidelity checks must hold; where it does not, the refusal must carry a reason.

Default is the quick subset (CI budget): counter and compute on the container runtime. Set
CRBENCH_SCENARIO_FULL=1 for every scenario on both runtimes (`meson test --suite scenario`)."""
import json
import os

import pytest

from conftest import require_root, run_crbench

ALL = ["counter", "memory", "compute", "tcp-kv", "shared-ipc", "editor-tty", "desktop-session"]
QUICK = [("counter", "container"), ("compute", "container")]

if os.environ.get("CRBENCH_SCENARIO_FULL") == "1":
    MATRIX = [(s, r) for s in ALL for r in ("container", "vm")]
else:
    MATRIX = QUICK


@pytest.mark.parametrize("scenario,runtime", MATRIX, ids=[f"{s}-{r}" for s, r in MATRIX])
def test_scenario_matrix(scenario, runtime, tmp_path):
    require_root()
    p = run_crbench("compare", scenario, "--quick", "--runtimes", runtime, "--results", tmp_path,
                    "--json", timeout=1500)
    if p.returncode == 2:
        pytest.fail(f"compare refused the request:\n{p.stderr}")
    summary = json.loads(p.stdout)
    rows = summary["combinations"]
    assert rows, "compare produced no rows"
    problems = []
    for row in rows:
        key = row["key"]
        if row["planned"] != "run":
            if not row["reason"]:
                problems.append(f"{key}: {row['planned']} without a reason")
            continue
        if row["status"] != "ok":
            problems.append(f"{key}: {row['status']}: {row.get('reason', '')}")
            continue
        fid = row["fidelity"]
        if fid["passed"] != fid["total"]:
            problems.append(f"{key}: fidelity {fid['passed']}/{fid['total']}")
    # Every run, refusals included, was written as a record.
    records = [f for f in tmp_path.iterdir() if f.name.endswith(".json") and not f.name.endswith(".compare.json")]
    assert len(records) >= len(rows)
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
