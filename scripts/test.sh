#!/bin/bash
# Set up (install what is missing, build) and run the whole test suite.
#   scripts/test.sh [--quick|--full] [meson test args...]      (as root)
# Other arguments go to `meson test` unchanged (e.g. --suite unit, or a test name).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${CRBENCH_BUILD_DIR:-build}"

# Default: every suite, the scenario matrix in its quick subset (the `quick` test setup).
# --full: the whole scenario matrix (every scenario x runtime x engine; ~30 min more under TCG).
# --quick: leave the scenario suite out.
args=()
setup=(--setup quick)
for a in "$@"; do
  case $a in
    --quick) args+=(--no-suite scenario) ;;
    --full) setup=() ;;
    *) args+=("$a") ;;
  esac
done

"$root/scripts/setup.sh"

rc=0
meson test -C "$build_dir" --print-errorlogs "${setup[@]}" "${args[@]}" || rc=$?

# A run where nothing ran must not look green (e.g. a filter that matched nothing).
# meson names the log after the test setup (testlog-quick.json with --setup quick).
log="$build_dir/meson-logs/testlog${setup:+-quick}.json"
counts="$(python3 - "$log" <<'PY'
import collections, json, sys
c = collections.Counter()
try:
    with open(sys.argv[1]) as f:
        for line in f:
            if line.strip():
                c[json.loads(line).get("result", "?")] += 1
except FileNotFoundError:
    pass
print(sum(c.values()), " ".join(f"{k.lower()}={v}" for k, v in sorted(c.items())))
PY
)"
total="${counts%% *}"
echo "test: ${total} tests: ${counts#* }"
if [[ $rc -eq 0 && ${total:-0} -eq 0 ]]; then
  echo "test: error: no tests ran (check the meson test arguments: $*)" >&2
  exit 1
fi
exit "$rc"
