#!/usr/bin/env bash
# Installs, builds and runs every test: C++ unit and service tests, the optctl end-to-end test and
# the Python integration tests (torch parity) against the real optd binary; then the gtest binaries
# again under ASan + UBSan (scripts/sanitize.sh) and a bounded run of each fuzzer
# (scripts/fuzz.sh, OPTD_FUZZ_SECONDS each), both built with clang in ${OPTD_BUILD_DIR:-build}-asan.
# OPTD_SKIP_SANITIZERS=1 skips those two. Exits non-zero if any part fails (all parts run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR="${OPTD_BUILD_DIR:-build}"
status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure -j 2 --timeout 900 || status=1
if [ "${OPTD_SKIP_SANITIZERS:-0}" != 1 ]; then
  bash scripts/sanitize.sh || status=1
  bash scripts/fuzz.sh || status=1
fi
exit "$status"
