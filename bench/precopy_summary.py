#!/usr/bin/env python3
"""Summarise an issue-#9 benchmark run (bench/precopy_bench.sh OUT-DIR) as Markdown: every
combination's downtime figures from the compare summaries, native pre-copy/COW checkpoint
downtime with its ratio to QEMU's best mode in the same run and to the 10 ms target, per-round
pre-copy figures and COW figures from the run records. Every number comes from the records.

    bench/precopy_summary.py OUT-DIR [--target-ms 10] [--extra DIR]...

--extra DIR (repeatable) adds the scale-*.json compare summaries of another run directory (e.g. a
checked-in docs/results/<date>-vm-scaling-*/, whose records are .json.xz files or one
raw-records.tar.xz) to the scaling tables; a point measured in OUT-DIR wins over the same point in
an extra directory, and an earlier --extra over a later one.
"""
import argparse
import json
import lzma
import statistics
import sys
import tarfile
from pathlib import Path


def load(p):
    p = Path(p)
    try:
        if p.suffix == ".xz":
            return json.loads(lzma.decompress(p.read_bytes()))
        return json.loads(p.read_text())
    except (OSError, ValueError, lzma.LZMAError):
        return None


_tar_index = {}


def load_record(base, name, rid):
    """A run record of compare `name` under run directory `base`: <name>/runs/<rid>.json, the same
    .json.xz, or that member of <base>/raw-records.tar.xz."""
    runs = Path(base) / name / "runs"
    for f in (runs / f"{rid}.json", runs / f"{rid}.json.xz"):
        if f.exists():
            return load(f)
    tar = Path(base) / "raw-records.tar.xz"
    if not tar.exists():
        return None
    if tar not in _tar_index:
        t = tarfile.open(tar, "r:xz")
        _tar_index[tar] = (t, {m.name: m for m in t.getmembers()})
    t, members = _tar_index[tar]
    m = members.get(f"{name}/runs/{rid}.json")
    if m is None:
        return None
    try:
        return json.loads(t.extractfile(m).read())
    except ValueError:
        return None


def fmt(v, nd=1):
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if v < 100 else f"{v:.0f}"


def metric(row, mid):
    m = row.get("metrics", {}).get(mid)
    return (m["median"], m["min"], m["max"], m["n"]) if m else None


def records(out, name, row):
    for rid in row.get("run_ids", []):
        r = load_record(out, name, rid)
        if r and not r.get("compare", {}).get("warmup"):
            yield r


def accelerator(out, name, row):
    """The VM accelerator the row's runs used (from their records), "" for the container runtime."""
    if row.get("runtime") != "vm":
        return ""
    accels = set()
    for r in records(out, name, row):
        a = (r.get("sandbox") or {}).get("accelerator")
        if isinstance(a, dict):
            a = a.get("accel")
        if not a:
            a = (r.get("environment", {}).get("accelerator") or {}).get("accel")
        if a:
            accels.add(a.upper())
    return "/".join(sorted(accels)) or "accelerator not recorded"


def scaling_pivot(p, sources):
    """One table, size across: each cell the median checkpoint downtime with n, the compare run it
    comes from and (VM) the accelerator. `sources`: (run dir, summary name, summary), first wins."""
    cells, sizes, used = {}, set(), {}
    for base, name, summ in sources:
        size = int(params(summ).get("size_mib", 0))
        for row in summ["combinations"]:
            ck = metric(row, "checkpoint_downtime_ms")
            if not ck:
                continue
            key = (row["runtime"], row["engine"], row["mode"])
            if (key, size) in cells:
                continue
            sizes.add(size)
            acc = accelerator(base, name, row)
            cid = summ["id"]
            used[cid] = (base, name, summ)
            cells[(key, size)] = f"{fmt(ck[0], 2)} (n={ck[3]}, {cid.split('-')[0]}{', ' + acc if acc else ''})"
    if not cells:
        return
    sizes = sorted(sizes)
    keys = sorted({k for k, _ in cells}, key=lambda k: (k[0], k[1], k[2]))
    p("Scaling, one table: median checkpoint downtime in ms at each memory size (dirtying 16 MiB/s), "
      "with n, the compare run (its id's timestamp) and, for the VM runtime, the accelerator of its runs. "
      "`-`: not measured.\n")
    p("| runtime | engine | mode | " + " | ".join(f"{x} MiB" for x in sizes) + " |")
    p("|---|---|---|" + "---:|" * len(sizes))
    for k in keys:
        p(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells.get((k, x), "-") for x in sizes) + " |")
    p()
    p("Compare runs in that table:\n")
    for cid, (base, name, summ) in sorted(used.items()):
        commits = {(r.get("crbench") or {}).get("commit", "?") for row in summ["combinations"]
                   for r in records(base, name, row)}
        p(f"- `{cid}`: {base}/{name}.json, crbench {', '.join(sorted(c for c in commits if c)) or '?'}, "
          f"`{summ.get('command', '')}`")
    p()


def freeze_gap_ms(rec):
    """Longest probe-reply gap overlapping the checkpoint's own freeze: from the first "frozen" mark
    after checkpoint-start to the first "resumed" mark before checkpoint-end (engines that mark
    both inside the checkpoint: native pre-copy/cow/leave-running, QEMU background snapshot...).
    Gaps elsewhere in the checkpoint (CPU starvation during pre-copy rounds or the COW copy) are
    in checkpoint_downtime_ms, not here."""
    tr = rec.get("probe", {}).get("trace", {})
    marks = tr.get("marks", [])
    cs = next((m["ns"] for m in marks if m["name"] == "checkpoint-start"), None)
    ce = next((m["ns"] for m in marks if m["name"] == "checkpoint-end"), None)
    if cs is None or ce is None:
        return None
    fr = next((m["ns"] for m in marks if m["name"] == "frozen" and cs <= m["ns"] <= ce), None)
    rs = next((m["ns"] for m in marks if m["name"] == "resumed" and fr is not None and fr <= m["ns"] <= ce), None)
    if fr is None or rs is None:
        return None
    recv = sorted(r for r in tr.get("samples", {}).get("recv", []) if r is not None and r >= 0)
    best = None
    for a, b in zip(recv, recv[1:]):
        if a <= rs and b >= fr and (best is None or b - a > best):
            best = b - a
    return best / 1e6 if best is not None else None


def params(summary):
    p = summary.get("params", {})
    return p if isinstance(p, dict) else dict(x.split("=", 1) for x in p)


def native_lines(p, out, name, native, best_qemu, target_ms):
        for mode in ("pre-copy", "cow", "stop-and-copy"):
            row = native.get(mode)
            ck = metric(row, "checkpoint_downtime_ms") if row else None
            if not ck:
                p(f"- native {mode}: no successful run.")
                continue
            frozen = [r["engine_report"]["checkpoint"]["engine_figures"].get("frozen_ms") for r in records(out, name, row)
                      if r.get("status") == "ok"]
            frozen = [f for f in frozen if f is not None]
            fg = [freeze_gap_ms(r) for r in records(out, name, row) if r.get("status") == "ok"]
            fg = [x for x in fg if x is not None]
            ratio = f"{ck[0] / best_qemu[1]:.3f}× QEMU {best_qemu[0]}" if best_qemu else "no QEMU figure"
            p(f"- native {mode}: checkpoint downtime median **{fmt(ck[0], 2)} ms** (n={ck[3]}), {ratio}; "
              f"{ck[0] / target_ms:.2f}× the {target_ms:g} ms target "
              f"({'met' if ck[0] <= target_ms else 'not met'}); engine-measured freeze (frozen_ms) median "
              f"{fmt(statistics.median(frozen), 2) if frozen else '-'} ms; probe gap over the freeze alone "
              f"(frozen→resumed marks) median {fmt(statistics.median(fg), 2) if fg else '-'} ms"
              f"{' = ' + fmt(statistics.median(fg) / best_qemu[2], 3) + '× QEMU ' + best_qemu[0] + ' on the same measure' if fg and best_qemu and best_qemu[2] else ''}"
              f"; the workload's stop to set up tracking (pre-copy setup_pause_ms / cow arm_pause_ms; the agent is not "
              f"stopped then, so the probe cannot see it) median "
              f"{fmt(statistics.median(sp), 2) if (sp := setup_pauses(records(out, name, row))) else '-'} ms"
              f"; noise floor (longest reply gap in an equal window before the checkpoint and its state digest) median "
              f"{fmt(statistics.median(bl), 2) if (bl := baseline_gaps(records(out, name, row))) else '-'} ms")
        p()


def setup_pauses(recs):
    """The pause before the freeze in which the workload (not the agent) is stopped to get its
    userfaultfds: memory.setup_pause_ms (pre-copy) or memory.arm_pause_ms (cow), ok records."""
    out = []
    for r in recs:
        if r.get("status") != "ok":
            continue
        m = r["engine_report"]["checkpoint"]["engine_figures"].get("memory") or {}
        v = m.get("setup_pause_ms", m.get("arm_pause_ms"))
        if v is not None:
            out.append(v)
    return out


def baseline_gaps(recs):
    """probe.longest_gap_before_checkpoint.gap_ms of the ok records (crbench from session 5 on)."""
    out = []
    for r in recs:
        b = (r.get("probe") or {}).get("longest_gap_before_checkpoint") if r.get("status") == "ok" else None
        if isinstance(b, dict) and b.get("gap_ms") is not None:
            out.append(b["gap_ms"])
    return out


def freeze_table(p, out, name, native):
    """Where the engine's freeze went, step by step (engine_figures.freeze_ms), median per step."""
    cols = {}
    for mode in ("pre-copy", "cow", "stop-and-copy"):
        row = native.get(mode)
        if not row:
            continue
        runs = [r["engine_report"]["checkpoint"]["engine_figures"] for r in records(out, name, row)
                if r.get("status") == "ok"]
        runs = [f for f in runs if f.get("freeze_ms")]
        if runs:
            cols[mode] = runs
    if not cols:
        return
    steps = []
    for runs in cols.values():
        for f in runs:
            steps += [k for k in f["freeze_ms"] if k not in steps]
    p("Native freeze by step (engine_figures.freeze_ms, median over the ok runs, ms; `layout_*` are parts of "
      "`memory_layout`):\n")
    p("| step | " + " | ".join(f"{m} (n={len(r)})" for m, r in cols.items()) + " |")
    p("|---|" + "---:|" * len(cols))
    order = ["seize", "process_state", "ns_pids", "files", "memory_layout", "layout_read_maps", "layout_page_scan",
             "sysv_ipc", "pipes_files_shmem", "final_pages", "pages", "undo", "release"]
    for st in sorted(steps, key=lambda k: order.index(k) if k in order else 99):
        vals = []
        for runs in cols.values():
            xs = [f["freeze_ms"][st] for f in runs if st in f["freeze_ms"]]
            vals.append(fmt(statistics.median(xs), 2) if xs else "-")
        p(f"| {st} | " + " | ".join(vals) + " |")
    vals = []
    for runs in cols.values():
        xs = [f["frozen_ms"] for f in runs if f.get("frozen_ms") is not None]
        vals.append(fmt(statistics.median(xs), 2) if xs else "-")
    p("| **frozen_ms** | " + " | ".join(vals) + " |")
    p()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--target-ms", type=float, default=10)
    ap.add_argument("--extra", action="append", default=[], metavar="DIR",
                    help="another run directory whose scale-*.json points join the scaling tables")
    a = ap.parse_args()
    for d in a.extra:
        if not Path(d).is_dir():
            sys.exit(f"--extra {d}: not a directory (pass a run directory holding scale-*.json)")
    out = Path(a.out)
    cmds = (out / "commands.txt").read_text() if (out / "commands.txt").exists() else ""
    main = load(out / "main.json")
    if not main:
        sys.exit(f"{out}/main.json: no compare summary (the main run did not finish)")
    p = print
    p(f"Commands ({out}/commands.txt):\n\n```\n{cmds.strip()}\n```\n")
    p(f"Main run: compare `{main['id']}`, finished {main['finished_at']}, params {json.dumps(main['params'])}, "
      f"{main['repeats']} repeats, warm-up {'yes' if main['warmup'] else 'no'}.\n")
    p("Noise floor: the longest gap between probe replies in a window as long as the checkpoint, ending where the "
      "state digest before the checkpoint began (probe.longest_gap_before_checkpoint): what the machine alone did "
      "to the agent's replies.\n")
    p("| runtime | engine | mode | n | checkpoint downtime ms median (min–max) | downtime incl. restore ms median "
      "| noise floor ms median | checkpoint ms | restore ms | image MiB | fidelity | status |")
    p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    best_qemu = None
    native = {}
    for row in main["combinations"]:
        ck = metric(row, "checkpoint_downtime_ms")
        dt = metric(row, "downtime_ms")
        cp = metric(row, "checkpoint_ms")
        rs = metric(row, "restore_ms")
        im = metric(row, "image_bytes")
        fid = row.get("fidelity", {})
        status = row.get("status", "")
        if row.get("reason"):
            status += ": " + row["reason"][:160].replace("|", "/")
        p(f"| {row['runtime']} | {row['engine']} | {row['mode']} | {row.get('n', 0)} | "
          f"{fmt(ck[0]) + ' (' + fmt(ck[1]) + '–' + fmt(ck[2]) + ')' if ck else '-'} | {fmt(dt[0]) if dt else '-'} | "
          f"{fmt(statistics.median(bl)) if (bl := baseline_gaps(records(out, 'main', row))) else '-'} | "
          f"{fmt(cp[0]) if cp else '-'} | {fmt(rs[0]) if rs else '-'} | {fmt(im[0] / 2**20) if im else '-'} | "
          f"{str(fid.get('passed', '-')) + '/' + str(fid.get('total', '-')) if fid else '-'} | {status} |")
        if row["engine"] == "qemu" and ck and (best_qemu is None or ck[0] < best_qemu[1]):
            qg = [freeze_gap_ms(r) for r in records(out, "main", row) if r.get("status") == "ok"]
            qg = [x for x in qg if x is not None]
            best_qemu = (row["mode"], ck[0], statistics.median(qg) if qg else None)
        if row["engine"] == "native":
            native[row["mode"]] = row
    p()
    if best_qemu:
        p(f"QEMU's best mode by median checkpoint downtime in this run: **{best_qemu[0]}**, {fmt(best_qemu[1])} ms.\n")
    native_lines(p, out, "main", native, best_qemu, a.target_ms)
    freeze_table(p, out, "main", native)
    row = native.get("pre-copy")
    if row:
        ok = [r for r in records(out, "main", row) if r.get("status") == "ok"]
        if ok:
            ok.sort(key=lambda r: r.get("checkpoint_downtime_ms") or 0)
            r = ok[len(ok) // 2]
            m = r["engine_report"]["checkpoint"]["engine_figures"]["memory"]
            p(f"Native pre-copy, the median run ({r['run_id']}): tracking `{m.get('dirty_tracking')}`, set-up pause "
              f"{fmt(m.get('setup_pause_ms'), 2)} ms, stop: {m.get('stop_reason')}; final round {m.get('final')}.\n")
            p("| round | pages copied | MiB | ms | dirty pages found | dirty MiB/s | est. final copy ms |")
            p("|---:|---:|---:|---:|---:|---:|---:|")
            for x in m.get("rounds", []):
                p(f"| {x['round']} | {x['pages']} | {fmt(x['bytes'] / 2**20)} | {fmt(x['ms'])} | {x['dirty_pages']} | "
                  f"{fmt(x.get('dirty_mib_per_s'))} | {fmt(x.get('estimated_final_copy_ms'), 2)} |")
            p()
    row = native.get("cow")
    if row:
        ok = [r for r in records(out, "main", row) if r.get("status") == "ok"]
        for r in ok:
            m = r["engine_report"]["checkpoint"]["engine_figures"]
            mm = m["memory"]
            p(f"- cow run {r['run_id']}: checkpoint downtime {fmt(r.get('checkpoint_downtime_ms'), 2)} ms, frozen "
              f"{fmt(m.get('frozen_ms'), 2)} ms (protect {fmt(mm.get('protect_ms'), 2)} ms for "
              f"{mm.get('protected_pages')} pages), {mm.get('write_faults')} write faults served "
              f"(max {fmt(mm.get('max_fault_service_us'))} µs), {mm.get('background_pages')} pages copied in "
              f"{fmt(mm.get('background_ms'))} ms after the thaw")
        p()
    for f in sorted(out.glob("native-*.json")):
        s2 = load(f)
        if not s2:
            continue
        nat = {r["mode"]: r for r in s2["combinations"] if r["engine"] == "native"}
        p(f"Native-only compare `{s2['id']}` ({f.stem}, {s2['repeats']} repeats, finished {s2['finished_at']}); ratios "
          f"to QEMU's best mode of the main run:\n")
        native_lines(p, out, f.stem, nat, best_qemu, a.target_ms)
        p()
    # Scaling: every scale-* summary present, here and in the --extra directories.
    rows = []
    sources = [(out, "main", main)]
    for d, files in [(out, sorted(out.glob("scale-*.json")) + sorted(out.glob("native-*.json")))] + \
            [(Path(x), sorted(Path(x).glob("scale-*.json"))) for x in a.extra]:
        for f in files:
            s = load(f)
            if not s:
                continue
            sources.append((d, f.stem, s))
            size = params(s).get("size_mib")
            src = f.stem if d == out else f"{d}/{f.stem}"
            for row in s["combinations"]:
                ck = metric(row, "checkpoint_downtime_ms")
                dt = metric(row, "downtime_ms")
                rows.append((int(size), row["runtime"], row["engine"], row["mode"], row.get("n", 0), ck, dt,
                             row.get("status", ""), src, metric(row, "image_bytes")))
    scaling_pivot(p, sources)
    for row in main["combinations"]:
        ck = metric(row, "checkpoint_downtime_ms")
        dt = metric(row, "downtime_ms")
        rows.append((int(params(main).get("size_mib", 0)), row["runtime"], row["engine"], row["mode"],
                     row.get("n", 0), ck, dt, row.get("status", ""), "main", metric(row, "image_bytes")))
    if rows:
        p("Scaling (checkpoint downtime ms, median of n; 1 GiB from the main run):\n")
        p("Image MiB (min–max) is what was resident at the checkpoint: a workload still filling its memory "
          "when the checkpoint began has a smaller image than its size parameter.\n")
        p("| MiB | runtime | engine | mode | n | image MiB (min–max) | checkpoint downtime ms | downtime incl. restore ms "
          "| status | compare run |")
        p("|---:|---|---|---|---:|---:|---:|---:|---|---|")
        for size, rt, en, mo, n, ck, dt, st, src, im in sorted(rows, key=lambda x: (x[2], x[3], x[0], x[8])):
            if n == 0 and not ck:
                continue
            ims = f"{fmt(im[1] / 2**20)}–{fmt(im[2] / 2**20)}" if im else "-"
            p(f"| {size} | {rt} | {en} | {mo} | {n} | {ims} | {fmt(ck[0], 2) if ck else '-'} | {fmt(dt[0]) if dt else '-'} "
              f"| {st} | {src} |")


if __name__ == "__main__":
    main()
