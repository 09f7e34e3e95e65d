#!/bin/bash
# Set up (install what is missing, build) and run crbench's main job on the default scenario.
#   scripts/run.sh [scenario [compare options...]]   (as root; default scenario: counter)
# e.g. scripts/run.sh counter --quick   (one run per combination)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${CRBENCH_BUILD_DIR:-build}"
scenario="${1:-counter}"
[[ $# -gt 0 ]] && shift

"$root/scripts/setup.sh"

crbench="$build_dir/crbench"
# `compare` runs every engine on both runtimes; until it is built in, run the baseline (pause engine
# in a container) so the command still does the real measurement path end to end.
if "$crbench" --help 2>/dev/null | grep -Eq '^[[:space:]]+compare([[:space:]]|$)'; then
  set -x
  exec "$crbench" compare "$scenario" "$@"
else
  echo "run: 'crbench compare' is not built in yet; running the pause baseline in a container" >&2
  set -x
  exec "$crbench" run "$scenario" --runtime container --engine pause
fi
