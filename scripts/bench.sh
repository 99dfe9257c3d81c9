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

# optd-bench --compare_tls: plaintext optd vs optd with TLS (and a raw gRPC echo, plaintext vs TLS,
# of the same bytes), 1M and 1K parameters (README "Security", Cost of TLS).
echo "== optd-bench --compare_tls"
"$BUILD_DIR/bench/optd-bench" --compare_tls | tee "$BUILD_DIR/bench/optd_bench_tls.txt"

# Python workers (issue #14): the native data path vs the pure-Python one vs the C++ client
# (optd-bench) vs a torch.distributed.rpc parameter server (bench/torch_rpc_ps.py), at 1K and 1M
# parameters, 1 and 4 workers, F32 and BF16 on the wire, side by side in one run; prints the README
# table ("Benchmarks → Python workers"). About 10 minutes. Extra flags in OPTD_PYTHON_BENCH_FLAGS.
echo "== python workers"
# shellcheck disable=SC2086
OPTD_BUILD_DIR="$BUILD_DIR" /usr/bin/python3 bench/python_client_bench.py ${OPTD_PYTHON_BENCH_FLAGS:-} |
  tee "$BUILD_DIR/bench/python_client_bench.txt"

# optd-shard-bench: one 8M-parameter Adam session, 4 workers, held by 1, 2 and 4 optd shard
# processes side by side in one run: steps/s, p50, each shard's CPU and bytes per step (README
# "Sharding", Benchmark). About 20 seconds. Extra flags in OPTD_SHARD_BENCH_FLAGS.
echo "== optd-shard-bench"
# shellcheck disable=SC2086
"$BUILD_DIR/bench/optd-shard-bench" ${OPTD_SHARD_BENCH_FLAGS:-} |
  tee "$BUILD_DIR/bench/optd_shard_bench.txt"

# metrics_overhead: steps/s with the Prometheus metrics on vs off (gRPC interceptor, session
# observer, exporter scraped every second), two in-process servers alternated in one run, for unary
# Step and StreamSteps; target ratio >= 0.95 (README "Metrics").
echo "== metrics_overhead"
"$BUILD_DIR/bench/metrics_overhead" | tee "$BUILD_DIR/bench/metrics_overhead.txt"

# optimizer kernels: ns/parameter of every optimizer's Step at 1K, 1M and 10M parameters (one thread
# and the pool) beside its memory floor and torch.optim on one thread, all in one run; prints the
# README table and the targets (Adam 10M: optd/floor <= 1.3, torch/optd >= 4) as MET/MISSED
# (README "Benchmarks → optimizer kernels"). Extra flags in OPTD_OPTIMIZER_BENCH_FLAGS.
echo "== optimizer kernels"
# shellcheck disable=SC2086
/usr/bin/python3 bench/run_optimizer_bench.py "$BUILD_DIR" ${OPTD_OPTIMIZER_BENCH_FLAGS:-} |
  tee "$BUILD_DIR/bench/optimizer_bench.txt"

# checkpoints (issue #12): a 100M-parameter Adam session's checkpoint (1.2 GB) written through the
# Checkpoint RPC vs the same bytes written with fsync; step latency of a 1M-parameter session while
# checkpoints run vs none; restore at start-up vs reading the file and vs an empty folder. About
# 4 minutes; writes a few GB under $TMPDIR (README "Benchmarks → Checkpoints"). Extra flags in
# OPTD_CHECKPOINT_BENCH_FLAGS, e.g. "--params=25000000".
echo "== checkpoints"
# shellcheck disable=SC2086
OPTD_BUILD_DIR="$BUILD_DIR" /usr/bin/python3 bench/checkpoint_bench.py \
  --json "$BUILD_DIR/bench/checkpoint_bench.json" ${OPTD_CHECKPOINT_BENCH_FLAGS:-} |
  tee "$BUILD_DIR/bench/checkpoint_bench.txt"
