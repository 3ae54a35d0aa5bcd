#!/usr/bin/env bash
# Runs two make targets at the same time and fails if either fails: `make test` runs the integration tests (lab slots
# 1 and 2, one per pytest worker) beside the molecule scenarios (slot 3), which spend most of their time waiting on
# hosts. The first target prints as it goes; the second's output is kept in a log and printed, whole, when it ends,
# so the two never interleave. Usage: scripts/side-by-side.sh TARGET1 TARGET2
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 TARGET1 TARGET2" >&2; exit 2; }
first=$1 second=$2
log=$(mktemp "${TMPDIR:-/tmp}/side-by-side-$second.XXXXXX.log")
start=$SECONDS

# -o bootstrap: `make test` has bootstrapped already; two bootstraps at once would race on the venv.
make --no-print-directory -o bootstrap "$second" >"$log" 2>&1 &
pid=$!
# Ctrl-C or a CI timeout ends the second target too (its own cleanup runs: molecule's destroy, the lab's down).
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log"; exit 130' INT TERM

make --no-print-directory -o bootstrap "$first"
rc1=$?
echo "== side-by-side: 'make $first' exited $rc1 after $((SECONDS - start))s; waiting for 'make $second'"
wait "$pid"
rc2=$?
trap - INT TERM
echo "== side-by-side: output of 'make $second' (exited $rc2, $((SECONDS - start))s since both started)"
cat "$log"
rm -f "$log"
[ $rc1 -eq 0 ] || { echo "side-by-side: 'make $first' FAILED" >&2; }
[ $rc2 -eq 0 ] || { echo "side-by-side: 'make $second' FAILED" >&2; }
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]
