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

set -x
exec "$build_dir/crbench" compare "$scenario" "$@"
