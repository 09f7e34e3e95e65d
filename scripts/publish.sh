#!/bin/bash
# Run a published comparison and render it into docs/results/<UTC date>-<host>/.
#
#   scripts/publish.sh [options] [SCENARIO[:RUNTIMES[:REPEATS]]...]
#
# Each argument is one `crbench compare` call: the scenario, the runtimes it runs on (comma list,
# default container,vm) and its repeats (default --repeats). The same scenario may appear twice
# (e.g. counter:container:5 counter:vm:3): both feed one report. Default plan:
#   counter:container,vm  desktop-session:container  memory:container
# Options:
#   --repeats N    measured repeats per combination where an argument gives none (default 5)
#   --quick        pass --quick to every compare (1 run, one mode per engine, no warm-up): a smoke test
#   --host LABEL   host part of the directory name (default: <short hostname>-<cores>cpu)
#   --out DIR      output directory (default: docs/results/<UTC date of the start>-<host>)
#   --force        write into an existing output directory (its raw records are kept and merged)
#   --render-only  run nothing: re-render the reports of --out DIR from its raw records (after a
#                  change to crbench report); publish.json is left as it is
# Environment: CRBENCH_BUILD_DIR (default build), as for scripts/run.sh.
#
# Layout of the output:
#   <scenario>/report.html, <scenario>/report.md   crbench report of that scenario's runs
#   <scenario>/raw/*.json.xz                        every run record (warm-ups and failures too), xz
#   <scenario>/raw/*.compare.json                   the compare summaries
#   publish.json                                    what ran (every invocation): command, commit,
#                                                   times, load before/after each compare, exit codes
# The reading of the results (README.md there) is written by a person: this script only measures.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${CRBENCH_BUILD_DIR:-build}"
crbench="$build_dir/crbench"

repeats=5 repeats_given=0 quick=0 host="" out="" force=0 render_only=0
plan=()
orig_args=("$@")
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repeats) repeats="${2:?--repeats needs a number}"; repeats_given=1; shift 2 ;;
    --quick) quick=1; shift ;;
    --host) host="${2:?--host needs a label}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --force) force=1; shift ;;
    --render-only) render_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "publish: unknown option '$1' (see scripts/publish.sh --help)" >&2; exit 2 ;;
    *) plan+=("$1"); shift ;;
  esac
done
if [[ $render_only -eq 1 ]]; then
  [[ -n "$out" && -f "$out/publish.json" ]] || { echo "publish: --render-only needs --out DIR of an earlier publication (with publish.json)" >&2; exit 2; }
  plan=()
  for d in "$out"/*/raw; do [[ -d "$d" ]] && plan+=("$(basename "$(dirname "$d")")"); done
fi
[[ ${#plan[@]} -gt 0 ]] || plan=(counter:container,vm desktop-session:container memory:container)
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "publish: --repeats '$repeats' is not a positive number" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "publish: run as root (crbench compare starts containers and VMs)" >&2; exit 2; }
[[ -x "$crbench" ]] || { echo "publish: $crbench is not built (run scripts/setup.sh, or set CRBENCH_BUILD_DIR)" >&2; exit 2; }

for entry in "${plan[@]}"; do
  IFS=: read -r sc rts rep extra <<<"$entry"
  [[ -z "${extra:-}" && -n "$sc" ]] || { echo "publish: '$entry' is not SCENARIO[:RUNTIMES[:REPEATS]]" >&2; exit 2; }
  [[ -f "scenarios/$sc.toml" ]] || { echo "publish: no scenario '$sc' (scenarios/$sc.toml)" >&2; exit 2; }
  [[ -z "${rep:-}" || "$rep" =~ ^[1-9][0-9]*$ ]] || { echo "publish: repeats '$rep' in '$entry' is not a positive number" >&2; exit 2; }
done

if [[ -z "$host" ]]; then host="$(hostname -s)-$(nproc)cpu"; fi
[[ "$host" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "publish: host label '$host' may only use [A-Za-z0-9._-] (pass --host)" >&2; exit 2; }
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
[[ -n "$out" ]] || out="docs/results/$(date -u +%Y-%m-%d)-$host"
if [[ -e "$out" && $force -eq 0 && $render_only -eq 0 ]]; then
  echo "publish: $out exists; pass --force to add to it, or --out another directory" >&2
  exit 2
fi
mkdir -p "$out"

# The exact command, as one can paste it: the published directory is the one just written.
reproduce="scripts/publish.sh"
for a in "${orig_args[@]}"; do reproduce+=" $(printf '%q' "$a")"; done
[[ " ${orig_args[*]-} " == *" --host "* ]] || reproduce+=" --host $host"

commit="$("$crbench" version 2>/dev/null | grep -oE '[0-9a-f]{7,}(-dirty)?' | head -1 || true)"
if [[ "$commit" == *-dirty ]]; then
  echo "publish: warning: $crbench was built from a tree with uncommitted changes ($commit); the report says so" >&2
fi

declare -A scenarios_seen=()
order=()
runs_json="["
for entry in "${plan[@]}"; do
  if [[ $render_only -eq 1 ]]; then order+=("$entry"); continue; fi
  IFS=: read -r sc rts rep_in <<<"$entry"
  rts="${rts:-container,vm}"
  rep="${rep_in:-$repeats}"
  raw="$out/$sc/raw"
  mkdir -p "$raw"
  [[ -n "${scenarios_seen[$sc]:-}" ]] || { scenarios_seen[$sc]=1; order+=("$sc"); }
  args=(compare "$sc" --runtimes "$rts" --results "$raw")
  if [[ $quick -eq 1 ]]; then args+=(--quick); fi
  # --quick means one repeat unless a count was given (in the entry or with --repeats).
  if [[ $quick -eq 0 || -n "$rep_in" || $repeats_given -eq 1 ]]; then args+=(--repeats "$rep"); fi
  load0="$(cut -d' ' -f1 /proc/loadavg)"
  t0="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "publish: [$t0] $crbench ${args[*]}   (1-min load $load0)" >&2
  set +e
  "$crbench" "${args[@]}"
  rc=$?
  set -e
  t1="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  load1="$(cut -d' ' -f1 /proc/loadavg)"
  # Exit 1 = nothing of this compare completed (its rows carry the reasons): still rendered.
  [[ $rc -le 1 ]] || echo "publish: warning: compare $entry exited $rc" >&2
  runs_json+="$( [[ "$runs_json" == "[" ]] || echo ,){\"entry\":\"$entry\",\"args\":\"${args[*]}\",\"started\":\"$t0\",\"finished\":\"$t1\",\"load_1m_start\":$load0,\"load_1m_end\":$load1,\"exit\":$rc}"
done
runs_json+="]"

# Run records are kept xz-compressed (the probe traces make them ~250 KB each; xz shrinks them
# about sixfold); the compare summaries stay plain. `xz -dk raw/*.xz` gives back the JSON files.
# The report is rendered from a decompressed copy, so records kept from an earlier --force run count.
finished="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [[ $render_only -eq 0 ]]; then
# publish.json lists every invocation that wrote into this directory (--force adds one), so the
# Reproduce section of each page can name all of them.
this="$(printf '{"command":"%s","crbench_commit":"%s","host":"%s","started":"%s","finished":"%s","compares":%s}' \
  "${reproduce//\"/\\\"}" "$commit" "$host" "$started" "$finished" "$runs_json")"
tmp="$(mktemp "$out/.publish.json.XXXXXX")"
python3 - "$out/publish.json" "$this" >"$tmp" <<'PY'
import json, sys
path, this = sys.argv[1], json.loads(sys.argv[2])
try:
    doc = json.load(open(path))
except FileNotFoundError:
    doc = {"invocations": []}
if "invocations" not in doc:  # written by an earlier publish.sh as one object
    doc = {"invocations": [doc]}
doc["invocations"].append(this)
print(json.dumps(doc, indent=1))
PY
chmod 0644 "$tmp"
mv "$tmp" "$out/publish.json"
fi
wrapper="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("\n".join(i["command"] for i in d.get("invocations", [d])))' "$out/publish.json")"

for sc in "${order[@]}"; do
  render="$(mktemp -d /tmp/crb-publish-render.XXXXXX)"
  cp "$out/$sc/raw/"*.json "$render/" 2>/dev/null || true
  for f in "$out/$sc/raw/"*.json.xz; do [[ -e "$f" ]] && xz -dc "$f" >"$render/$(basename "${f%.xz}")"; done
  set +e
  "$crbench" report "$render" -o "$out/$sc" --title "crbench: $sc on $host (published comparison)" \
    --wrapper-command "$wrapper" >/dev/null
  rc=$?
  set -e
  rm -rf "$render"
  [[ $rc -eq 0 ]] || echo "publish: warning: crbench report for $sc exited $rc" >&2
  for f in "$out/$sc/raw/"*.json; do
    [[ -e "$f" && "$f" != *.compare.json ]] && xz -9 -f "$f"
  done
done


echo
echo "published into $out:"
for sc in "${order[@]}"; do echo "  $out/$sc/report.html  $out/$sc/report.md  ($(ls "$out/$sc/raw" | wc -l) raw files)"; done
if [[ $render_only -eq 1 ]]; then
  echo "to reproduce (from the source root, as root, after scripts/setup.sh, at the commits in publish.json):"
  sed 's/^/  /' <<<"$wrapper"
else
  echo "to reproduce (from the source root, as root, after scripts/setup.sh, at commit ${commit:-unknown}):"
  echo "  $reproduce"
fi
