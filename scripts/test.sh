#!/usr/bin/env bash
# Installs, builds and runs every test: C++ unit and service tests, the optctl end-to-end test and
# the Python integration tests (torch parity) against the real optd binary. Exit status is ctest's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR="${OPTD_BUILD_DIR:-build}"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j 2 --timeout 900
