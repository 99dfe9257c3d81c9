#!/usr/bin/env bash
# ctest entry point of the Go client: builds it offline (build.sh: vendor symlinks, generated-code
# check, go build, go vet, the example worker), then runs `go test ./...` against the real optd
# binary, which the tests start on 127.0.0.1:0 and stop by PID.
#
# Usage: client/go/test.sh [OPTD_BINARY]
#   The binary defaults to $OPTD_BINARY, else ${OPTD_BUILD_DIR:-<repo>/build}/server/optd. The Go
#   cache and binaries go to ${OPTD_BUILD_DIR:-<repo>/build}/go (nothing under $HOME).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=${OPTD_BUILD_DIR:-$REPO/build}
OUT=$BUILD/go
export OPTD_BINARY=${1:-${OPTD_BINARY:-$BUILD/server/optd}}
[ -x "$OPTD_BINARY" ] || { echo "test.sh: optd binary $OPTD_BINARY is missing: build it first" >&2; exit 1; }

"$HERE/build.sh" "$OUT"

export GO111MODULE=on GOPROXY=off GOFLAGS=-mod=vendor GOSUMDB=off GOENV=off GOWORK=off CGO_ENABLED=0
export GOCACHE="$OUT/cache" GOPATH="$OUT/gopath"
cd "$HERE"
# -count=1: always run against the binary (test results are not cached).
go test -count=1 -timeout 300s ./...
