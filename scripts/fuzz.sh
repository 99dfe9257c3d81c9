#!/usr/bin/env bash
# Builds the libFuzzer harnesses of fuzz/ (clang, ASan, UBSan, in the build directory
# scripts/asan_build.sh describes) and runs each for a bounded time: first every input of its
# committed corpus (fuzz/corpus/<fuzzer>/, copied to a temporary directory: the committed files are
# never written), then new inputs for the rest of OPTD_FUZZ_SECONDS (default 60) seconds. Prints
# each fuzzer's corpus size and executions per second. Exits non-zero if any input crashes, breaks
# a property the fuzzer checks, leaks, runs longer than 30 s or allocates more than 256 MB at once;
# the input is then kept in <build>/fuzz-artifacts/ and the command that reruns it printed.
# scripts/test.sh runs this after the main suite; it also runs alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/asan_build.sh

FUZZERS=(message_bytes_fuzzer proto_convert_fuzzer wire_fuzzer)
SECONDS_EACH="${OPTD_FUZZ_SECONDS:-60}"
start=$(date +%s)
cmake --build "$ASAN_BUILD_DIR" -j 2 --target "${FUZZERS[@]}"
echo "fuzz: built in $(($(date +%s) - start)) s; ${SECONDS_EACH} s per fuzzer"

artifacts="$(cd "$ASAN_BUILD_DIR" && pwd)/fuzz-artifacts"
mkdir -p "$artifacts"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for f in "${FUZZERS[@]}"; do
  corpus="$work/$f"
  mkdir -p "$corpus"
  cp fuzz/corpus/"$f"/* "$corpus"/
  seeds=$(find "$corpus" -type f | wc -l)
  options=(-max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=256
           -print_final_stats=1 -artifact_prefix="$artifacts/$f-")
  if [ -f "fuzz/$f.dict" ]; then options+=(-dict="fuzz/$f.dict"); fi
  log="$ASAN_BUILD_DIR/fuzz-$f.log"
  status=0
  "$ASAN_BUILD_DIR/fuzz/$f" "${options[@]}" "$corpus" > "$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  seed=$(sed -n 's/^INFO: Seed: *//p' "$log")
  echo "fuzz: $f: corpus $seeds seeds -> $(find "$corpus" -type f | wc -l) inputs," \
       "${runs:-?} runs, ${rate:-?} exec/s (libFuzzer -seed=${seed:-?}, log $log)"
  if [ "$status" -ne 0 ]; then
    failed+=("$f")
    echo "fuzz: $f FAILED (exit $status):"
    grep -v -E '^#[0-9]+|^INFO:' "$log" | tail -n 60 || true
    artifact=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | tail -n 1)
    if [ -n "$artifact" ]; then
      echo "fuzz: rerun it with: $ASAN_BUILD_DIR/fuzz/$f $artifact"
    fi
  fi
done
echo "fuzz: ${#FUZZERS[@]} fuzzers in $(($(date +%s) - start)) s," \
     "$([ ${#failed[@]} -eq 0 ] && echo "no crash" || echo "FAILED: ${failed[*]}")"
[ ${#failed[@]} -eq 0 ]
