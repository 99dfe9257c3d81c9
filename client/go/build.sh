#!/usr/bin/env bash
# Builds and vets the Go client of optd (module github.com/optd/optd/client/go) offline, from
# Debian's Go packages (golang-google-grpc-dev, golang-google-protobuf-dev,
# golang-github-golang-protobuf-1-5-dev under /usr/share/gocode/src):
#
#   1. vendor/: symlinks into /usr/share/gocode/src plus vendor/modules.txt (never committed;
#      /client/go/vendor/ is in .gitignore). Never `go mod tidy|vendor|download` or `go get`.
#   2. optdv1/: generates optd.pb.go and optd_grpc.pb.go from proto/optd/v1/optd.proto with
#      protoc-gen-go and protoc-gen-go-grpc into a temporary directory and compares them with the
#      committed copies (committed so the module builds with plain `go build` and is importable
#      without protoc). Stale copies are rewritten (commit the result) unless --check is given:
#      then they fail the build (a CI lint that the committed code matches the proto).
#   3. gofmt check, go build ./..., go vet ./... (tests included), and the example worker binary
#      at OUT/bin/optd-go-worker.
#
# Usage: client/go/build.sh [--check] [OUT]
#   OUT: where the Go build cache, GOPATH and binaries go; default ${OPTD_BUILD_DIR:-<repo>/build}/go.
#   Nothing is written to $HOME. Concurrent runs with the same OUT are serialised (flock).
set -euo pipefail

CHECK=0
if [ "${1:-}" = "--check" ]; then CHECK=1; shift; fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-${OPTD_BUILD_DIR:-$REPO/build}/go}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Offline, reproducible Go environment; everything under OUT.
export GO111MODULE=on GOPROXY=off GOFLAGS=-mod=vendor GOSUMDB=off
export GOENV=off GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
export GOCACHE="$OUT/cache" GOPATH="$OUT/gopath" GOTMPDIR="" HOME="${HOME:-$OUT}"
mkdir -p "$GOCACHE" "$GOPATH" "$OUT/bin"

exec 9> "$OUT/.build.lock"
flock 9

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" > /dev/null || {
    echo "build.sh: $tool not found: run scripts/install_deps.sh" >&2; exit 1; }
done
GOCODE=/usr/share/gocode/src
if ! grep -qs '"google.golang.org/protobuf/' "$GOCODE"/github.com/golang/protobuf/proto/*.go; then
  echo "build.sh: $GOCODE/github.com/golang/protobuf is not v1.4+ (APIv2-backed): install" \
       "golang-github-golang-protobuf-1-5-dev (1-3 makes grpc-go panic at run time)" >&2
  exit 1
fi

# 1. vendor/: created only when missing or wrong, so concurrent readers never see a gap.
mkdir -p "$HERE/vendor"
for d in google.golang.org golang.org github.com; do
  if [ "$(readlink "$HERE/vendor/$d" 2> /dev/null)" != "$GOCODE/$d" ]; then
    ln -sfn "$GOCODE/$d" "$HERE/vendor/$d"
  fi
done
MODULES=$'# google.golang.org/grpc v1.33.3\n## explicit\n# google.golang.org/protobuf v1.28.1\n## explicit\n'
if [ "$(cat "$HERE/vendor/modules.txt" 2> /dev/null)"$'\n' != "$MODULES" ]; then
  printf '%s' "$MODULES" > "$HERE/vendor/modules.txt.tmp.$$"
  mv -f "$HERE/vendor/modules.txt.tmp.$$" "$HERE/vendor/modules.txt"
fi

# 2. Generated code.
GEN=$(mktemp -d)
trap 'rm -rf "$GEN"' EXIT
protoc -I "$REPO/proto" \
  --go_out="$GEN" --go_opt=module=github.com/optd/optd/client/go \
  --go-grpc_out="$GEN" --go-grpc_opt=module=github.com/optd/optd/client/go \
  "$REPO/proto/optd/v1/optd.proto"
for f in optd.pb.go optd_grpc.pb.go; do
  if ! cmp -s "$GEN/optdv1/$f" "$HERE/optdv1/$f"; then
    if [ "$CHECK" = 1 ]; then
      echo "build.sh: client/go/optdv1/$f does not match proto/optd/v1/optd.proto:" \
           "run client/go/build.sh and commit client/go/optdv1" >&2
      exit 1
    fi
    mkdir -p "$HERE/optdv1"
    cp "$GEN/optdv1/$f" "$HERE/optdv1/$f.tmp.$$"
    mv -f "$HERE/optdv1/$f.tmp.$$" "$HERE/optdv1/$f"
    echo "build.sh: regenerated client/go/optdv1/$f from the changed proto (commit it)"
  fi
done

# 3. Build, vet, example worker.
cd "$HERE"
unformatted=$(gofmt -l ./*.go ./cmd ./optdv1)
[ -z "$unformatted" ] || { echo "build.sh: not gofmt-formatted: $unformatted" >&2; exit 1; }
go build ./...
go vet ./...
go build -o "$OUT/bin/optd-go-worker" ./cmd/worker
echo "build.sh: ok ($OUT/bin/optd-go-worker)"
