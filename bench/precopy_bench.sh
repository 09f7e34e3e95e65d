#!/bin/bash
# The issue-#9 benchmark (not a test): the `memory` scenario through every engine and mode in one
# `crbench compare` run, then a scaling series; docs/native-precopy.md is written from its output
# by bench/precopy_summary.py. Long under TCG (a 1 GiB guest): run it in the background.
#
#   bench/precopy_bench.sh OUT-DIR [REPEATS] [SCALING-SIZES] [SCALING-REPEATS]
# e.g. nice -n 10 bench/precopy_bench.sh /var/tmp/crb-precopy 5 "64 256 4096" 2
# SKIP_MAIN=1 runs only the scaling series.
set -eu
out=${1:?usage: precopy_bench.sh OUT-DIR [REPEATS] [SCALING-SIZES] [SCALING-REPEATS]}
repeats=${2:-5}
sizes=${3-"64 256 4096"}  # "" = no container points
srepeats=${4:-2}
# WARMUP=--no-warmup leaves out the discarded first round (to save time; said in the results)
warmup=${WARMUP:-}
crbench=${CRBENCH:-$(dirname "$0")/../build/crbench}
mkdir -p "$out"
# No inherited descriptor may reach the workload (the native engine refuses a pipe it cannot restore).
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done; true

run() {  # name, then crbench compare arguments
  name=$1; shift
  echo "$(date -u +%FT%TZ) $crbench compare $*" >> "$out/commands.txt"
  "$crbench" compare "$@" --results "$out/$name/runs" --report "$out/$name/report" --json \
    > "$out/$name.json" 2> "$out/$name.log" || echo "$name: exit $?" >> "$out/commands.txt"
}

# 1 GiB at 16 MiB/s: native, CRIU (container) and QEMU (TCG VM) in one compare run: stop-and-copy,
# pre-copy, copy-on-write (native), post-copy (QEMU), leave-running (QEMU: background snapshot).
[ -n "${SKIP_MAIN:-}" ] || run main memory --engines native criu qemu --runtimes container vm \
  --modes stop-and-copy pre-copy cow post-copy leave-running \
  --param size_mib=1024 --param dirty_mib_s=16 --repeats "$repeats" $warmup

# Scaling: memory size at the same dirty rate, fewer repeats (the 1 GiB point is the run above).
# VM_SIZES (default: the same sizes) limits the TCG guest's points, the slow ones.
for s in $sizes; do
  run "scale-$s-container" memory --engines native criu --runtimes container --modes stop-and-copy pre-copy cow \
    --param size_mib="$s" --param dirty_mib_s=16 --repeats "$srepeats" --no-warmup
done
for s in ${VM_SIZES:-$sizes}; do
  run "scale-$s-vm" memory --engines qemu --runtimes vm --modes stop-and-copy pre-copy post-copy leave-running \
    --param size_mib="$s" --param dirty_mib_s=16 --repeats "$srepeats" --no-warmup
done
echo "$(date -u +%FT%TZ) done" >> "$out/commands.txt"
