#!/usr/bin/env bash
# Installs every Debian 12 package optd needs to build, test and run. Idempotent: a package already
# present is left alone, and apt is not called at all when nothing is missing.
#   --build-only   only what building optd and optctl needs (the Dockerfile's build stage)
# Then, unless --build-only: the npm packages of the offline manifest validators
# (deploy/validate/package.json, pinned by its package-lock.json) into deploy/validate/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."

# What `cmake --build --target optd optctl` needs with -DOPTD_BUILD_TESTS=OFF -DOPTD_BUILD_BENCH=OFF.
BUILD_PACKAGES=(
  cmake ninja-build g++ pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev prometheus-cpp-dev nlohmann-json3-dev zlib1g-dev libssl-dev libeigen3-dev
)

PACKAGES=(
  # C++ toolchain and libraries
  cmake ninja-build g++ clang pkg-config git
  # sanitizers and fuzzers (scripts/sanitize.sh, scripts/fuzz.sh): clang's runtimes (ASan, UBSan,
  # libFuzzer; only recommended by clang) and llvm-symbolizer for readable reports
  libclang-rt-14-dev llvm-14
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev zlib1g-dev
  # Muon's Newton-Schulz matrix products (server/optim/muon.cc); header-only
  libeigen3-dev
  # Python: clients, torch-parity tests (always /usr/bin/python3)
  python3 python3-grpcio python3-protobuf python3-numpy python3-torch python3-pytest
  # the Python client's native data path (client/python/native, a pybind11 module) and the venv
  # the README installs it into
  pybind11-dev python3-pybind11 python3-dev python3-venv
  # the digits example (examples/digits): scikit-learn's bundled data set, matplotlib for its PNG;
  # pip and setuptools to install client/python offline
  python3-sklearn python3-matplotlib python3-pip python3-setuptools python3-wheel
  # tools used by tests
  curl ca-certificates
  # metrics: a real Prometheus and promtool for the deploy/ configs and the metrics integration test
  prometheus
  # Go client (client/go): golang-github-golang-protobuf-1-5-dev must be listed, or apt satisfies
  # golang-google-grpc-dev with 1-3, whose old marshaller makes grpc-go panic at run time
  golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
  protoc-gen-go protoc-gen-go-grpc
  # containers (tests/docker_test.sh): Debian's Docker engine (started by the test itself, never as
  # a system service), Compose 1.29, and debootstrap for the base image (no image registry is
  # reachable)
  docker.io docker-compose debootstrap
)
if [ "${1:-}" = "--build-only" ]; then
  PACKAGES=("${BUILD_PACKAGES[@]}")
else
  # Kubernetes manifests and the Grafana dashboard (tests/k8s_test.sh, tests/dashboard_schema_test.sh):
  # Node.js and npm run the offline validators, kubectl renders the kustomization. Debian's own
  # packages only where the machine has none: the machine's Node.js 20 (which carries npm) and
  # kubectl 1.32 (package 'kubectl') conflict with Debian's nodejs/npm and kubernetes-client (1.20).
  if ! command -v npm > /dev/null; then PACKAGES+=(nodejs npm); fi
  if ! command -v kubectl > /dev/null; then PACKAGES+=(kubernetes-client); fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
else
  echo "install_deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ "${1:-}" = "--build-only" ]; then exit 0; fi

# npm packages, exactly as locked; skipped when node_modules already matches the lock file.
VALIDATE=deploy/validate
if ! cmp -s "$VALIDATE/package-lock.json" "$VALIDATE/node_modules/.package-lock.json.installed"; then
  echo "install_deps: npm ci in $VALIDATE"
  (cd "$VALIDATE" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$VALIDATE/package-lock.json" "$VALIDATE/node_modules/.package-lock.json.installed"
fi
