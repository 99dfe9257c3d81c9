#!/usr/bin/env bash
# Installs, builds and runs optd in the foreground with its embedded defaults (gRPC on
# 127.0.0.1:50051). Arguments are passed to optd, e.g. scripts/start.sh --listen=0.0.0.0:50051 --insecure
# (or with --tls_cert/--tls_key: README, Security).
# Stop it with Ctrl-C (graceful shutdown).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec "${OPTD_BUILD_DIR:-build}/server/optd" "$@"
