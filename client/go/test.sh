#!/usr/bin/env bash
# ctest entry point of the Go client: builds it offline (build.sh: generated-code check, gofmt,
# go build, go vet, the example worker; GOPATH mode under the build directory), then runs
# `go test ./...` against the real optd binary, which the tests start on 127.0.0.1:0 and stop by PID.
# Nothing is written into the source tree: stale generated code fails the run with the command that
# regenerates it (client/go/build.sh --regenerate), and no vendor/ is made.
#
# Usage: client/go/test.sh [OPTD_BINARY]
#   The binary defaults to $OPTD_BINARY, else ${OPTD_BUILD_DIR:-<repo>/build}/server/optd. The Go
#   cache, GOPATH and binaries go to ${OPTD_BUILD_DIR:-<repo>/build}/go (nothing under $HOME).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=${OPTD_BUILD_DIR:-$REPO/build}
mkdir -p "$BUILD/go"
OUT=$(cd "$BUILD/go" && pwd)
export OPTD_BINARY=${1:-${OPTD_BINARY:-$BUILD/server/optd}}
[ -x "$OPTD_BINARY" ] || { echo "test.sh: optd binary $OPTD_BINARY is missing: build it first" >&2; exit 1; }

"$HERE/build.sh" "$OUT"

# The environment build.sh uses; its GOPATH link is $OUT/gopath/src/<module path> -> this directory.
export GO111MODULE=off GOPROXY=off GOFLAGS='' GOSUMDB=off GOENV=off GOTOOLCHAIN=local GOWORK=off
export CGO_ENABLED=0 GOCACHE="$OUT/cache" GOPATH="$OUT/gopath:/usr/share/gocode"
cd "$OUT/gopath/src/github.com/optd/optd/client/go"
# The example worker build.sh made, for the test running it against shards.
export OPTD_GO_WORKER="$OUT/bin/optd-go-worker"
# -count=1: always run against the binary (test results are not cached).
go test -count=1 -timeout 300s ./...
