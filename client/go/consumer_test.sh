#!/usr/bin/env bash
# ctest go_consumer_test: uses the Go client from another module exactly as README.md's "Using the Go
# client from your own module" tells a user to, so the documentation and the recipe cannot drift.
#
# The commands are not copied here: they are read from README.md, from the ```sh block that follows
# the `<!-- go-consumer-recipe` comment, and run word for word by bash -euo pipefail in a new
# directory from mktemp -d (outside the repository), with only these differences from a user's
# shell:
#   - OPTD is this checkout (the README has the user export it);
#   - the address of an optd this script starts on 127.0.0.1:0 (stopped by PID) replaces every
#     127.0.0.1:50051 in the block;
#   - a clean environment: env -i with PATH, HOME and TMPDIR inside the temporary directory (so the
#     Go cache starts empty, as on a new machine) and GOPROXY=off GOSUMDB=off (nothing may need the
#     network).
# Then it checks what the program printed (version 1 and the parameters after one SGD step), that
# the README's main.go is gofmt-formatted and passes go vet in the consumer module, and removes the
# temporary directory. Needs only the Debian packages scripts/install_deps.sh installs.
#
# Usage: client/go/consumer_test.sh [OPTD_BINARY]
#   The binary defaults to $OPTD_BINARY, else ${OPTD_BUILD_DIR:-<repo>/build}/server/optd.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=${OPTD_BUILD_DIR:-$REPO/build}
OPTD_BINARY=${1:-${OPTD_BINARY:-$BUILD/server/optd}}
fail() { echo "consumer_test.sh: FAIL: $*" >&2; exit 1; }
[ -x "$OPTD_BINARY" ] || fail "optd binary $OPTD_BINARY is missing: build it first"

# The recipe, from the README.
RECIPE=$(awk '
  index($0, "<!-- go-consumer-recipe") == 1 { marked = 1; next }
  marked && !inblock && /^```sh$/          { inblock = 1; next }
  inblock && /^```$/                       { exit }
  inblock                                  { print }' "$REPO/README.md")
[ -n "$RECIPE" ] || fail "README.md has no \`\`\`sh block after a '<!-- go-consumer-recipe' comment"
for needed in 'go mod init' 'client/go/vendor.sh' 'go build' '127.0.0.1:50051'; do
  grep -qF -- "$needed" <<< "$RECIPE" || fail "the README recipe no longer contains '$needed'"
done

T=$(mktemp -d)
OPTD_PID=""
cleanup() {
  if [ -n "$OPTD_PID" ]; then
    kill "$OPTD_PID" 2> /dev/null || true
    for _ in $(seq 1 100); do kill -0 "$OPTD_PID" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$OPTD_PID" 2> /dev/null || true
    { wait "$OPTD_PID"; } 2> /dev/null || true
  fi
  rm -rf "$T"
}
trap cleanup EXIT
case "$(cd "$T" && pwd -P)/" in
  "$(cd "$REPO" && pwd -P)"/*) fail "mktemp -d gave $T, inside the repository: set TMPDIR elsewhere" ;;
esac

# A server of our own on a free port. Its output files exist before it starts: the child opens
# them, and the loop below may read first.
: > "$T/optd.out"
: > "$T/optd.err"
"$OPTD_BINARY" --listen=127.0.0.1:0 --metrics_listen= > "$T/optd.out" 2> "$T/optd.err" &
OPTD_PID=$!
ADDR=""
for _ in $(seq 1 200); do
  ADDR=$(sed -n 's/^optd listening on \(127\.0\.0\.1:[0-9][0-9]*\)[[:space:]]*$/\1/p' "$T/optd.out")
  [ -n "$ADDR" ] && break
  kill -0 "$OPTD_PID" 2> /dev/null || { cat "$T/optd.err" >&2; fail "optd exited at start-up"; }
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$T/optd.err" >&2; fail "optd printed no listen line within 20 s"; }

printf '%s\n' "${RECIPE//127.0.0.1:50051/$ADDR}" > "$T/recipe.sh"
mkdir "$T/work" "$T/home" "$T/tmp"
echo "consumer_test.sh: running the README recipe in $T/work (optd on $ADDR):"
sed 's/^/    /' "$T/recipe.sh"
run_clean() { # runs "$@" in a user's clean, offline environment
  env -i PATH="$PATH" HOME="$T/home" TMPDIR="$T/tmp" LANG=C.UTF-8 OPTD="$REPO" \
    GOPROXY=off GOSUMDB=off "$@"
}
set +e
(cd "$T/work" && run_clean timeout 600 bash -euo pipefail "$T/recipe.sh") > "$T/recipe.out" 2>&1
rc=$?
set -e
sed 's/^/    | /' "$T/recipe.out"
[ "$rc" = 0 ] || fail "the README recipe failed (exit $rc); its output is above"

want='version 1 w [-0.1 -0.1 -0.1 -0.1]'
[ "$(tail -n 1 "$T/recipe.out")" = "$want" ] || fail "the program's last line is not '$want'"

# What the recipe left: a module that builds offline from vendor/ and a tidy main.go.
MODDIR=$T/work/hello
if [ ! -f "$MODDIR/go.mod" ] || [ ! -f "$MODDIR/vendor/modules.txt" ]; then
  fail "the recipe did not leave hello/go.mod and hello/vendor/modules.txt"
fi
unformatted=$(run_clean gofmt -l "$MODDIR/main.go")
[ -z "$unformatted" ] || fail "README's main.go is not gofmt-formatted"
(cd "$MODDIR" && run_clean go vet ./...) || fail "go vet fails on README's main.go"
echo "consumer_test.sh: ok"
