# Sourced by scripts/sanitize.sh and scripts/fuzz.sh: configures (when needed) the build directory
# they share, ${OPTD_ASAN_BUILD_DIR:-${OPTD_BUILD_DIR:-build}-asan}: clang, every optd target with
# AddressSanitizer + UndefinedBehaviorSanitizer and libFuzzer's coverage instrumentation
# (-DOPTD_FUZZ=ON, see CMakeLists.txt), -O1 with line tables (readable reports, and asserts on).
# One directory for both keeps the instrumented libraries built once. Sets ASAN_BUILD_DIR and the
# sanitizers' run-time options (a report aborts the process; reports are symbolized).
#
# The sanitizers' run-time options:
#   detect_leaks=1                    LeakSanitizer at exit (the default here, made explicit)
#   detect_stack_use_after_return=1   a callback or view that outlives the frame it points into
#   check_initialization_order=1, strict_init_order=1   static initializers that read another
#                                     file's globals
#   UBSan: halt_on_error (with -fno-sanitize-recover=all the first report aborts), print_stacktrace
# None is suppressed: Debian's abseil, protobuf and gRPC are not instrumented, but no check
# (vptr, ODR, container overflow) misfires on them in these binaries.
bash scripts/install_deps.sh
ASAN_BUILD_DIR="${OPTD_ASAN_BUILD_DIR:-${OPTD_BUILD_DIR:-build}-asan}"
OPTD_CLANGXX="${OPTD_CLANGXX:-$(command -v clang++-14 || command -v clang++)}"
cmake -S . -B "$ASAN_BUILD_DIR" -G Ninja -DCMAKE_CXX_COMPILER="$OPTD_CLANGXX" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DOPTD_FUZZ=ON -DOPTD_BUILD_BENCH=OFF > /dev/null

symbolizer="$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)"
export ASAN_OPTIONS="detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1${symbolizer:+:external_symbolizer_path=$symbolizer}${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${symbolizer:+:external_symbolizer_path=$symbolizer}${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
