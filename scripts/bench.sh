#!/usr/bin/env bash
# Builds optd (scripts/build.sh), then runs the benchmarks and prints their results. Benchmarks
# report; they never fail on speed (the exit status is non-zero only if one cannot run).
# Absolute numbers swing +-20% on the project's shared 2-core machines: read the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR="${OPTD_BUILD_DIR:-build}"

# optd-bench --suite: the three targets of the load-generator issue, each a ratio measured side by
# side in one run (optd vs a raw gRPC echo of the same bytes; BF16 vs F32), PASS/FAIL per target.
# Extra flags in OPTD_BENCH_FLAGS, e.g. OPTD_BENCH_FLAGS="--stream --seconds=120".
echo "== optd-bench --suite"
# shellcheck disable=SC2086
"$BUILD_DIR/bench/optd-bench" --suite ${OPTD_BENCH_FLAGS:-} | tee "$BUILD_DIR/bench/optd_bench_suite.txt"

# metrics_overhead: steps/s with the Prometheus metrics on vs off (gRPC interceptor, session
# observer, exporter scraped every second), two in-process servers alternated in one run, for unary
# Step and StreamSteps; target ratio >= 0.95 (README "Metrics").
echo "== metrics_overhead"
"$BUILD_DIR/bench/metrics_overhead" | tee "$BUILD_DIR/bench/metrics_overhead.txt"
