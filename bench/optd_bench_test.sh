#!/usr/bin/env bash
# Smoke test of optd-bench against the real optd and optd-echo (started by optd-bench itself):
# the run must exit 0 and print rows optd and echo whose five measured columns are positive
# numbers, and the optd/echo ratio row. Speed is not asserted.
#
# Usage: optd_bench_test.sh OPTD_BENCH [optd-bench flags...]
# OPTD_BENCH_ROWS (default "optd echo optd/echo") names the rows to check and OPTD_BENCH_ROW_COUNT
# (default 1) how many times each must appear (--compare_tls prints each twice: 1M and 1K).
set -euo pipefail
bench="$1"
shift
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

if ! timeout 100 "$bench" "$@" > "$out" 2>&1; then
  echo "FAIL: optd-bench $* exited non-zero:"
  cat "$out"
  exit 1
fi
cat "$out"

check_row() {  # name: one 7-column row of that name, columns 2-6 numbers > 0
  awk -v name="$1" -v count="${OPTD_BENCH_ROW_COUNT:-1}" '
    $1 == name && NF == 7 { rows++; for (i = 2; i <= 6; i++) if (!($i ~ /^[0-9.e+-]+$/ && $i + 0 > 0)) bad = bad " " i }
    END { if (rows != count) { print "FAIL: " rows + 0 " rows named " name; exit 1 }
          if (bad != "") { print "FAIL: row " name ": columns" bad " are not positive numbers"; exit 1 } }
  ' "$out"
}
for row in ${OPTD_BENCH_ROWS:-optd echo optd/echo}; do
  check_row "$row"
done
echo "PASS: optd-bench $*"
