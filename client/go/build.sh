#!/usr/bin/env bash
# Builds and vets the Go client of optd (module github.com/optd/optd/client/go) offline, from
# Debian's Go packages (golang-google-grpc-dev, golang-google-protobuf-dev,
# golang-github-golang-protobuf-1-5-dev under /usr/share/gocode/src). It writes only under OUT,
# never into the source tree, unless --regenerate is given:
#
#   1. optdv1/: generates optd.pb.go and optd_grpc.pb.go from proto/optd/v1/optd.proto with protoc,
#      protoc-gen-go and protoc-gen-go-grpc into a temporary directory and compares them with the
#      committed copies (committed so the module builds with plain `go build` and is importable
#      without protoc). A difference FAILS the build and names the command that regenerates them:
#
#          client/go/build.sh --regenerate      # rewrites client/go/optdv1/*.pb.go; commit them
#
#      Regenerating is a developer's explicit action after changing the proto; tests (test.sh,
#      ctest go_client_test, tests/cross_language_test.py) only ever check.
#   2. gofmt check, go build ./..., go vet ./... (tests included), and the example worker binary
#      at OUT/bin/optd-go-worker, in GOPATH mode: OUT/gopath/src/github.com/optd/optd/client/go is a
#      symlink to this directory and GOPATH=OUT/gopath:/usr/share/gocode, so nothing (no vendor/) is
#      written here. Module mode would need a vendor/ at the module root (-modfile moves go.mod,
#      not vendor/; go.work cannot vendor in Go 1.19); consumer_test.sh builds this module in module
#      mode from another module, through vendor.sh, as the README tells users to.
#
# Usage: client/go/build.sh [--regenerate | --check] [OUT]
#   --check: the default (kept for old callers). OUT: where the Go build cache, GOPATH and
#   binaries go; default ${OPTD_BUILD_DIR:-<repo>/build}/go. Nothing is written to $HOME.
#   Concurrent runs with the same OUT are serialised (flock).
#   Never run `go mod tidy|vendor|download` or `go get` here: there is no module proxy.
set -euo pipefail

REGENERATE=0
case "${1:-}" in
  --regenerate) REGENERATE=1; shift ;;
  --check) shift ;;
  -*) echo "build.sh: unknown option $1 (usage: build.sh [--regenerate | --check] [OUT])" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-${OPTD_BUILD_DIR:-$REPO/build}/go}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
GOCODE=/usr/share/gocode/src
MODULE=github.com/optd/optd/client/go

# Offline, reproducible Go environment in GOPATH mode; everything under OUT. test.sh sets the same.
export GO111MODULE=off GOPROXY=off GOFLAGS='' GOSUMDB=off
export GOENV=off GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
export GOCACHE="$OUT/cache" GOPATH="$OUT/gopath:/usr/share/gocode" GOTMPDIR="" HOME="${HOME:-$OUT}"
mkdir -p "$GOCACHE" "$OUT/gopath/src/${MODULE%/*}" "$OUT/bin"

exec 9> "$OUT/.build.lock"
flock 9

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" > /dev/null || {
    echo "build.sh: $tool not found: run scripts/install_deps.sh" >&2; exit 1; }
done
if ! grep -qs '"google.golang.org/protobuf/' "$GOCODE"/github.com/golang/protobuf/proto/*.go; then
  echo "build.sh: $GOCODE/github.com/golang/protobuf is not v1.4+ (APIv2-backed): install" \
       "golang-github-golang-protobuf-1-5-dev (1-3 makes grpc-go panic at run time)" >&2
  exit 1
fi

# 1. Generated code.
GEN=$(mktemp -d)
trap 'rm -rf "$GEN"' EXIT
protoc -I "$REPO/proto" \
  --go_out="$GEN" --go_opt=module=$MODULE \
  --go-grpc_out="$GEN" --go-grpc_opt=module=$MODULE \
  "$REPO/proto/optd/v1/optd.proto"
stale=()
for f in optd.pb.go optd_grpc.pb.go; do
  cmp -s "$GEN/optdv1/$f" "$HERE/optdv1/$f" || stale+=("$f")
done
if [ "${#stale[@]}" -gt 0 ]; then
  if [ "$REGENERATE" = 0 ]; then
    {
      for f in "${stale[@]}"; do
        echo "build.sh: client/go/optdv1/$f does not match proto/optd/v1/optd.proto; the difference" \
             "(first 40 lines, - committed, + generated now):"
        diff -u "$HERE/optdv1/$f" "$GEN/optdv1/$f" 2>&1 | sed -n '3,42p'
      done
      echo "build.sh: the committed generated code is stale. Regenerate it from the proto, then" \
           "review and commit it:"
      echo "    client/go/build.sh --regenerate && git add client/go/optdv1"
    } >&2
    exit 1
  fi
  mkdir -p "$HERE/optdv1"
  for f in "${stale[@]}"; do
    cp "$GEN/optdv1/$f" "$HERE/optdv1/$f.tmp.$$"
    mv -f "$HERE/optdv1/$f.tmp.$$" "$HERE/optdv1/$f"
    echo "build.sh: regenerated client/go/optdv1/$f from proto/optd/v1/optd.proto (commit it)"
  done
fi

# 2. GOPATH link (only when missing or wrong, so concurrent readers never see a gap), then gofmt,
# build, vet and the example worker, from the package's path inside GOPATH.
PKG="$OUT/gopath/src/$MODULE"
if [ "$(readlink "$PKG" 2> /dev/null)" != "$HERE" ]; then
  ln -sfn "$HERE" "$PKG.tmp.$$"
  mv -Tf "$PKG.tmp.$$" "$PKG"
fi
unformatted=$(cd "$HERE" && gofmt -l ./*.go ./cmd ./optdv1)
[ -z "$unformatted" ] || { echo "build.sh: not gofmt-formatted: $unformatted" >&2; exit 1; }
cd "$PKG"
go build ./...
go vet ./...
go build -o "$OUT/bin/optd-go-worker" ./cmd/worker
echo "build.sh: ok ($OUT/bin/optd-go-worker)"
