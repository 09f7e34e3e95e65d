"""crbench report, looked at as a person would: the page renders in headless Chromium with its
tables and SVG charts, without network access. Uses synthetic run records (the renderer is what is
under test here, not the engines)."""
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import run_crbench


def record(i, engine, downtime, status="ok"):
    r = {
        "schema": "crbench-run", "schema_version": 1, "run_id": f"t-{engine}-{i}",
        "crbench": {"version": "test", "commit": "test"},
        "environment": {"cpu_model": "synthetic", "cores": 2, "kernel": "Linux test",
                        "accelerator": {"accel": "tcg", "reason": "synthetic"}},
        "status": status, "runtime": "container", "engine": engine, "mode": "stop-and-copy",
        "scenario": {"name": "counter", "params": {"hz": 100}},
        "timings_ms": {"checkpoint": downtime * 0.7, "restore": downtime * 0.4,
                       "first_reply_after_restore": 1.0},
        "downtime_ms": downtime if status == "ok" else None,
        "image": {"apparent_bytes": 3 << 20, "allocated_bytes": 3 << 20},
        "fidelity": {"verdict": "pass", "checks": [{"name": "pid-same", "result": "pass", "detail": ""}]},
        "probe": {"trace": {"samples": {"send": [k * 1_000_000 for k in range(40)],
                                        "recv": [None if 15 <= k < 25 else k * 1_000_000 + 80_000
                                                 for k in range(40)]},
                            "marks": [{"name": "checkpoint-start", "ns": 15_000_000},
                                      {"name": "restore-end", "ns": 24_000_000}]}},
    }
    if status != "ok":
        r["error"] = {"message": "synthetic failure", "phase": "restore"}
    return r


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/packages/report.txt)")
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, d in enumerate([10, 11, 12, 13, 9, 10.5]):
        (runs / f"a{i}.json").write_text(json.dumps(record(i, "criu", d)))
        (runs / f"b{i}.json").write_text(json.dumps(record(i, "pause", d * 20)))
    (runs / "f.json").write_text(json.dumps(record(9, "native", 0, "failed")))
    out = tmp_path / "report"
    p = run_crbench("report", runs, "-o", out, check=True)
    html = out / "report.html"
    assert html.exists() and (out / "report.md").exists(), p.stdout
    profile = tempfile.mkdtemp(prefix="crb-chromium-")
    try:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", html.as_uri()],
            capture_output=True, text=True, timeout=120)
        shot = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
             f"--screenshot={tmp_path / 'report.png'}", "--window-size=1200,2400", html.as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    # The browser parsed the page: tables and charts are in its DOM.
    assert text.count('<table class="metric"') >= 5
    assert text.count("<svg") >= 5
    assert 'class="chart trace"' in text
    assert 'class="fidelity"' in text
    assert "synthetic failure" in text
    assert shot.returncode == 0 and (tmp_path / "report.png").stat().st_size > 10_000


def test_report_bad_inputs_are_named_and_rest_rendered(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "good.json").write_text(json.dumps(record(1, "criu", 10)))
    (runs / "trunc.json").write_text(json.dumps(record(2, "criu", 10))[:100])
    v2 = record(3, "criu", 10)
    v2["schema_version"] = 2
    (runs / "v2.json").write_text(json.dumps(v2))
    p = run_crbench("report", runs, "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "trunc.json" in p.stderr and "truncated" in p.stderr
    assert "schema version 2 is not 1" in p.stderr
    assert "Input problems" in (tmp_path / "out" / "report.html").read_text()


def test_report_without_any_record_is_an_error(tmp_path):
    p = run_crbench("report", tmp_path / "nothing-here", "-o", tmp_path / "out")
    assert p.returncode != 0
    assert "no readable run records" in p.stderr
