#!/usr/bin/env bash
# Builds the C++ unit and service tests (the gtest binaries; not the Python, Go or other
# cross-process tests) with clang, AddressSanitizer and UndefinedBehaviorSanitizer, in the build
# directory scripts/asan_build.sh describes, and runs them. Any sanitizer report fails its test.
# scripts/test.sh runs this after the main suite; it also runs alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/asan_build.sh

TESTS=(base_test wire_test optim_test session_test auth_test metrics_test service_test message_bytes_test
       client_test credentials_test host_tensor_test optctl_flags_test)
start=$(date +%s)
cmake --build "$ASAN_BUILD_DIR" -j 2 --target "${TESTS[@]}"
built=$(date +%s)
pattern="^($(IFS='|'; echo "${TESTS[*]}"))\$"
status=0
ctest --test-dir "$ASAN_BUILD_DIR" --output-on-failure -j 2 --timeout 900 -R "$pattern" || status=$?
echo "sanitize: ${#TESTS[@]} gtest binaries under ASan + UBSan: build $((built - start)) s," \
     "run $(($(date +%s) - built)) s, $([ "$status" -eq 0 ] && echo passed || echo FAILED)"
exit "$status"
