"""Incremental images (issue #9): `crbench cr dump --parent` stores only the pages that changed,
restore reads a chain of any depth, `crbench cr flatten` makes it self-contained, and a missing,
replaced or corrupt parent is refused naming it. tp_precopy rewrites known patterns at a set rate
between the dumps and checks every byte of every page after the restore."""
import json
import os
import shutil
import signal
from pathlib import Path

from conftest import start_program as start, cr, need_root, ok_record, prog, require_container_support, run_crbench, wait_for


def dump(p, img, *extra, leave=True):
    d = cr("dump", "--json", "--no-sync", "--tree", p.pid, "--images", img, *(["-R"] if leave else []), *extra)
    assert d.returncode == 0, d.stderr
    return json.loads(d.stdout)


def chain(tmp_path, depth, size_mib=32, rate=8):
    """A base and `depth` incremental dumps of tp_precopy (the last one stop-and-copy)."""
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), str(size_mib), str(rate)], tmp_path)
    wait_for(log, "READY")
    imgs = [tmp_path / "base"]
    figs = [dump(p, imgs[0])]
    for i in range(1, depth + 1):
        imgs.append(tmp_path / f"inc{i}")
        figs.append(dump(p, imgs[i], "--parent", imgs[i - 1], leave=i < depth))
    assert p.wait(timeout=10) == -signal.SIGKILL
    return go, log, imgs, figs


def restore_pass(go, log, img):
    log.write_text("")
    go.touch()
    r = cr("restore", "--images", img)
    out = log.read_text()
    assert r.returncode == 0 and "exited with status 0" in r.stderr, f"restore: {r.stderr}\nprogram: {out}"
    assert out.count("PASS") == 1 and "FAIL" not in out, out


def test_chain_of_depth_3_and_flatten(tmp_path):
    need_root()
    go, log, imgs, figs = chain(tmp_path, 3)
    pages = 32 * 256
    for f in figs[1:]:
        inc = f["memory"]["incremental"]
        # The writer rewrote some pages between the dumps, not all: only those are stored.
        assert 0 < inc["stored_pages"] < inc["pages"] and inc["pages"] >= pages, inc
        assert inc["stored_pages"] + inc["unchanged_pages"] == inc["pages"], inc
        assert f["bytes_written"] < figs[0]["bytes_written"] / 2, (f["bytes_written"], figs[0]["bytes_written"])
    s = cr("show", "--json", imgs[3])
    assert s.returncode == 0, s.stderr
    shown = json.loads(s.stdout)
    assert [Path(l["path"]).name for l in shown["chain"]] == ["inc3", "inc2", "inc1", "base"], shown["chain"]
    assert [l["incremental"] for l in shown["chain"]] == [True, True, True, False]
    flat = tmp_path / "flat"
    fl = cr("flatten", "--json", imgs[3], flat)
    assert fl.returncode == 0, fl.stderr
    assert json.loads(fl.stdout)["levels"] == 4
    sf = cr("show", "--json", flat)
    assert sf.returncode == 0 and "chain" not in json.loads(sf.stdout), sf.stderr
    assert [p["pages"] for p in json.loads(sf.stdout)["processes"]] == [p["pages"] for p in shown["processes"]]
    # The flattened image holds exactly the pages a restore from the chain writes.
    restore_pass(go, log, imgs[3])
    # Self-contained: with the chain gone, the flat copy restores the same state.
    for i in imgs:
        shutil.rmtree(i)
    go.unlink()
    restore_pass(go, log, flat)


def test_missing_replaced_or_corrupt_parent_is_refused(tmp_path):
    need_root()
    go, log, imgs, figs = chain(tmp_path, 1, size_mib=8, rate=16)
    base, inc = imgs
    go.touch()
    # Missing: the message names the parent and the image that needs it.
    moved = tmp_path / "moved-away"
    base.rename(moved)
    for cmd in (["restore", "--images", inc], ["show", inc], ["flatten", inc, tmp_path / "f1"]):
        r = cr(*cmd)
        assert r.returncode != 0 and f"parent image {base} of incremental image {inc} is missing" in r.stderr, r.stderr
    # Replaced: another image at the parent's path is refused by uuid.
    other_go = tmp_path / "other-go"
    q, qlog = start([prog("tp_precopy"), str(other_go), "4", "0"], tmp_path)
    wait_for(qlog, "READY")
    dump(q, base)
    r = cr("restore", "--images", inc)
    assert r.returncode != 0 and f"parent image {base} of {inc} is not the image it was dumped against" in r.stderr, r.stderr
    shutil.rmtree(base)
    moved.rename(base)
    # Corrupt: one byte of the parent's pages; the restore fails naming the file and leaves nothing.
    pages = next(base.glob("pages-*.img"))
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    r = cr("restore", "--images", inc)
    assert r.returncode != 0 and pages.name in r.stderr and "checksum" in r.stderr, r.stderr
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    # Put back, the chain restores and every byte is right.
    restore_pass(go, log, inc)


def test_memory_scenario_in_container(results_dir):
    """Engine mode incremental through `crbench run memory` (64 MiB at 16 MiB/s): the workload's own page
    check passes after the restore and the figures are in the record."""
    require_container_support()
    p = run_crbench("run", "memory", "--runtime", "container", "--engine", "native", "--mode", "incremental",
                    "--param", "size_mib=64", "--results", results_dir, "--json", timeout=300)
    rec = ok_record(p)
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    assert checks["scenario:pages-intact"]["result"] == "pass", checks["scenario:pages-intact"]
    chain = rec["engine_report"]["checkpoint"]["engine_figures"]["image_chain"]
    assert 0 < chain["incremental_bytes"] < chain["base_bytes"], chain
    # Tracked from the base dump on (uffd-wp), unwritten pages are not even read again.
    inc = rec["engine_report"]["checkpoint"]["engine_figures"]["memory"]["incremental"]
    if "tracking_failure" not in chain:
        assert chain["method"].startswith("uffd-wp-async+pagemap-scan") and inc["unchanged_not_read_pages"] > 0, inc
    for c in rec["sandbox"]["cgroups"]:
        assert not Path(c).exists(), f"cgroup {c} left behind"


def test_precopy_and_cow_children_store_only_changed_pages(tmp_path):
    """base (stop-and-copy, left running) -> pre-copy child -> COW child while tp_precopy rewrites
    pages at 2 MiB/s (slow enough that a loaded machine still leaves most pages unchanged): each child stores only the pages that differ from its parent's, whichever way
    they were captured; the restore from the chain checks every byte."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "32", "2"], tmp_path)
    wait_for(log, "READY")
    base, pc, cw = tmp_path / "base", tmp_path / "precopy", tmp_path / "cow"
    full = dump(p, base)
    f_pc = dump(p, pc, "--pre-copy", "--parent", base, leave=False)
    f_cw = dump(p, cw, "--cow", "--parent", pc, leave=False)
    for f in (f_pc, f_cw):
        inc = f["memory"]["incremental"]
        assert 0 < inc["stored_pages"] < inc["pages"] and inc["pages"] >= 32 * 256, inc
        assert inc["stored_pages"] + inc["unchanged_pages"] == inc["pages"], inc
        assert f["bytes_written"] < full["bytes_written"] / 2, (f["bytes_written"], full["bytes_written"])
    assert "rounds" in json.dumps(f_pc["memory"]) and "cow" in f_cw["memory"]["method"], (f_pc["memory"], f_cw["memory"])
    s = cr("show", "--json", cw)
    assert s.returncode == 0, s.stderr
    shown = json.loads(s.stdout)["chain"]
    assert [Path(l["path"]).name for l in shown] == ["cow", "precopy", "base"], shown
    assert [l.get("capture") for l in shown] == ["cow", "pre-copy", None], shown
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    restore_pass(go, log, cw)


def test_precopy_with_a_tampered_parent_is_refused_before_the_rounds(tmp_path):
    """A parent whose pages were changed after its dump is refused by name before any pre-copy round
    (nothing is write-protected or frozen): the program runs on and passes its own check."""
    need_root()
    go = tmp_path / "go"
    p, log = start([prog("tp_precopy"), str(go), "8", "4"], tmp_path)
    wait_for(log, "READY")
    base = tmp_path / "base"
    dump(p, base)
    pages = next(base.glob("pages-*.img"))
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0x01
    pages.write_bytes(bytes(data))
    for mode in ("--pre-copy", "--cow"):
        r = cr("dump", "--no-sync", "--tree", p.pid, "--images", tmp_path / mode.strip("-"), mode, "--parent", base)
        assert r.returncode != 0 and str(pages) in r.stderr and "checksum" in r.stderr, r.stderr
        assert not list((tmp_path / mode.strip("-")).glob("*.img"))
    go.touch()
    assert p.wait(timeout=20) == 0, log.read_text()
    out = log.read_text()
    assert "PASS" in out and "FAIL" not in out, out
