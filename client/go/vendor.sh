#!/usr/bin/env bash
# Prepares a Go module to build offline against Debian's Go packages and this checkout's optd Go
# client (module github.com/optd/optd/client/go), with no module proxy, no go.sum and no network:
#
#   1. go.mod of MODULE_DIR (with `go mod edit`, which never touches the network): adds
#        require github.com/optd/optd/client/go v0.0.0-00010101000000-000000000000
#        replace github.com/optd/optd/client/go => <this directory, absolute>
#      and the client's own requirements (google.golang.org/grpc v1.33.3,
#      google.golang.org/protobuf v1.28.1) unless the module already requires them. A replace
#      that already names this checkout (say a relative path to a git submodule) is kept as
#      written; any other replace of the optd client is pointed at this checkout.
#   2. MODULE_DIR/vendor/: one symlink per top-level directory of /usr/share/gocode/src (Debian's
#      golang-*-dev packages), the directories of local `replace`d modules (optd's client among
#      them) linked at their module paths, and a vendor/modules.txt that matches go.mod, so the go
#      command uses vendor/ by itself (go.mod says go >= 1.14) and never asks for go.sum entries.
#
# Then, in MODULE_DIR:   GOPROXY=off go build ./...     (go vet and go test work the same way)
#
# vendor/ holds absolute symlinks into this machine: do not commit it (add /vendor/ to the
# module's .gitignore); run this script again after adding a `require` to go.mod, after moving
# the optd checkout, or on another machine. A vendor/ this script did not make (one holding regular
# files besides modules.txt, e.g. from `go mod vendor`) is never deleted: the script stops instead.
# Every required module other than the optd client must be installed as a Debian package under
# /usr/share/gocode/src (or be a local `replace`); never run `go mod tidy`, `go mod vendor` or
# `go get` (they need the network).
#
# Run on this module itself (`client/go/vendor.sh client/go`), it only writes client/go/vendor/
# (git-ignored) for editors and gopls; the project's own build and tests (build.sh, test.sh) do not
# need it and write nothing into the source tree.
#
# Usage: client/go/vendor.sh [MODULE_DIR]        (MODULE_DIR defaults to the current directory)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GOCODE=/usr/share/gocode/src
OPTD_MODULE=github.com/optd/optd/client/go
# The version a replaced module is required at when it has no release ("go mod edit -replace"
# followed by "go mod tidy" picks the same one).
OPTD_VERSION=v0.0.0-00010101000000-000000000000

die() { echo "vendor.sh: $*" >&2; exit 1; }

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  -*) die "unknown option $1 (usage: vendor.sh [MODULE_DIR])" ;;
esac
[ "$#" -le 1 ] || die "too many arguments (usage: vendor.sh [MODULE_DIR])"
MOD=${1:-.}
[ -d "$MOD" ] || die "$MOD is not a directory"
MOD=$(cd "$MOD" && pwd)
[ -f "$MOD/go.mod" ] || die "$MOD has no go.mod: run \`go mod init <module path>\` there first"

command -v go > /dev/null || die "go not found: install golang-go (scripts/install_deps.sh)"
for d in google.golang.org/grpc google.golang.org/protobuf github.com/golang/protobuf; do
  [ -d "$GOCODE/$d" ] || die "$GOCODE/$d is missing: install golang-google-grpc-dev" \
    "golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev (scripts/install_deps.sh)"
done
if ! grep -qs '"google.golang.org/protobuf/' "$GOCODE"/github.com/golang/protobuf/proto/*.go; then
  die "$GOCODE/github.com/golang/protobuf is not v1.4+ (APIv2-backed): install" \
      "golang-github-golang-protobuf-1-5-dev (with 1-3, grpc-go panics at run time)"
fi

# Only `go mod edit` runs here: no network, no cache, whatever the caller's environment says.
export GOFLAGS='' GOPROXY=off GOWORK=off GOENV=off GO111MODULE=on

# Prints go.mod's directives in a fixed form, one a line, from the canonical `go mod edit -print`:
#   module PATH | go VERSION | require PATH VERSION | replace OLD [OLDVERSION] => NEW [NEWVERSION]
directives() {
  go mod edit -print "$1" | awk '
    function unquote(s) { gsub(/"/, "", s); return s }
    /^[ \t]*\/\//   { next }
    /^\)/           { block = ""; next }
    /^[a-z]+ \($/   { block = $1; next }
    {
      sub(/[ \t]*\/\/.*$/, "")            # "// indirect" and other comments
      n = split($0, f, /[ \t]+/); line = ""; first = 1
      for (i = 1; i <= n; i++) if (f[i] != "") { line = line (first ? "" : " ") unquote(f[i]); first = 0 }
      if (line == "") next
      print (block != "" ? block " " : "") line
    }'
}

# Local replacements of go.mod, "OLD|OLDVERSION|NEW" (NEW as written: absolute or relative to
# MODULE_DIR), into REPLACEMENTS; a replacement by another module version cannot work offline.
read_go_mod() {
  mapfile -t DIRECTIVES < <(directives "$MOD/go.mod")
  REPLACEMENTS=()
  local d kind a b c e newv
  for d in "${DIRECTIVES[@]}"; do
    read -r kind a b c e _ <<< "$d"
    [ "$kind" = replace ] || continue
    if [ "$b" = "=>" ]; then
      old=$a oldv="" new=$c newv=$e
    else
      old=$a oldv=$b new=$e newv=$(awk '{ print $6 }' <<< "$d")
    fi
    case "$new" in
      /* | ./* | ../*) [ -z "$newv" ] || die "cannot read this replace of go.mod: $d" ;;
      *) die "go.mod replaces $old with the module $new $newv: offline, only directories work" ;;
    esac
    REPLACEMENTS+=("$old|$oldv|$new")
  done
}
replacement_of() { # MODULE VERSION -> NEW, for a replacement of that version or of every version
  local r old oldv new
  for r in "${REPLACEMENTS[@]+"${REPLACEMENTS[@]}"}"; do
    IFS='|' read -r old oldv new <<< "$r"
    if [ "$old" = "$1" ] && { [ -z "$oldv" ] || [ "$oldv" = "$2" ]; }; then echo "$new"; return; fi
  done
}
local_dir() { case "$1" in /*) echo "$1" ;; *) (cd "$MOD/$1" 2> /dev/null && pwd) ;; esac; }
required() { printf '%s\n' "${DIRECTIVES[@]}" | awk -v p="$1" '$1 == "require" && $2 == p { f = 1 } END { exit !f }'; }

# Checks first: nothing is changed when go.mod or an existing vendor/ cannot be used.
read_go_mod
module_path=$(printf '%s\n' "${DIRECTIVES[@]}" | awk '$1 == "module" { print $2 }')
[ -n "$module_path" ] || die "$MOD/go.mod has no module line"
if [ -e "$MOD/vendor" ] || [ -L "$MOD/vendor" ]; then
  if [ -L "$MOD/vendor" ] || [ ! -d "$MOD/vendor" ]; then
    die "$MOD/vendor is not a directory: move it away"
  fi
  foreign=$(cd "$MOD/vendor" && find . ! -type d ! -type l ! -path ./modules.txt -print -quit)
  [ -z "$foreign" ] || die "$MOD/vendor holds files this script did not make ($foreign):" \
                           "move it away (it is never deleted here)"
fi

# 1. go.mod. A replace of the optd client that already names this checkout is kept as written
# (e.g. a relative path to a git submodule); any other is replaced by this checkout's path.
if [ "$module_path" != "$OPTD_MODULE" ]; then
  before=$(cat "$MOD/go.mod")
  edits=()
  while read -r _ path version; do
    required "$path" || edits+=("-require=$path@$version")
  done < <(directives "$HERE/go.mod" | awk '$1 == "require"')
  required "$OPTD_MODULE" || edits+=("-require=$OPTD_MODULE@$OPTD_VERSION")
  keep=0
  for r in "${REPLACEMENTS[@]+"${REPLACEMENTS[@]}"}"; do
    IFS='|' read -r old oldv new <<< "$r"
    [ "$old" = "$OPTD_MODULE" ] || continue
    dir=$(local_dir "$new") || dir=""
    if [ -n "$dir" ] && [ "$dir" -ef "$HERE" ]; then
      keep=1
    elif [ -n "$oldv" ]; then
      edits+=("-dropreplace=$OPTD_MODULE@$oldv")
    fi
  done
  [ "$keep" = 1 ] || edits+=("-replace=$OPTD_MODULE=$HERE")
  go mod edit "${edits[@]}" "$MOD/go.mod"
  if [ "$(cat "$MOD/go.mod")" != "$before" ]; then
    echo "vendor.sh: updated $MOD/go.mod:"
    diff <(printf '%s\n' "$before") "$MOD/go.mod" | sed -n 's/^> \(..*\)/    \1/p' || true
  fi
  read_go_mod
fi

go_version=$(printf '%s\n' "${DIRECTIVES[@]}" | awk '$1 == "go" { print $2 }')
case "$go_version" in
  1.1[4-9]* | 1.[2-9][0-9]* | [2-9]*) ;;
  *) echo "vendor.sh: note: go.mod says 'go ${go_version:-(none)}': below 1.14 the go command" \
          "uses vendor/ only with -mod=vendor (or run: go mod edit -go=1.19)" >&2 ;;
esac

# 2. vendor/, built beside the old one and swapped in.
NEW=$(mktemp -d "$MOD/.vendor.new.XXXXXX")
chmod 755 "$NEW"
OLD=""
trap 'rm -rf "$NEW" ${OLD:+"$OLD"}' EXIT

for e in "$GOCODE"/*; do ln -s "$e" "$NEW/${e##*/}"; done

# Links DIR at vendor/IMPORT_PATH. A symlinked directory on the way (e.g. vendor/github.com ->
# /usr/share/gocode/src/github.com) becomes a real directory of symlinks to its entries, so nothing
# is ever created through a symlink (never inside /usr/share/gocode or a checkout).
place() {
  local path=$1 dir=$2 cur=$NEW comp target e
  local -a comps
  IFS=/ read -r -a comps <<< "$path"
  local last=${comps[${#comps[@]}-1]}
  unset 'comps[${#comps[@]}-1]'
  for comp in "${comps[@]+"${comps[@]}"}"; do
    if [ -L "$cur/$comp" ]; then
      target=$(readlink "$cur/$comp")
      rm "$cur/$comp"
      mkdir "$cur/$comp"
      for e in "$target"/*; do
        if [ -e "$e" ]; then ln -s "$e" "$cur/$comp/${e##*/}"; fi
      done
    elif [ ! -d "$cur/$comp" ]; then
      mkdir "$cur/$comp"
    fi
    cur=$cur/$comp
  done
  if [ -L "$cur/$last" ]; then
    rm "$cur/$last"
  elif [ -e "$cur/$last" ]; then
    die "cannot link $path in vendor/: another replaced module is nested in it"
  fi
  ln -s "$dir" "$cur/$last"
}

# Packages of a local module, as modules.txt lists them (directories with non-test .go files).
packages() {
  local module=$1 dir=$2
  (cd "$dir" && find . \( -name vendor -o -name testdata -o -name '[._]?*' \) -prune -o \
     -name '*.go' ! -name '*_test.go' -printf '%h\n') | sort -u |
    sed -e "s|^\.$|$module|" -e "s|^\./|$module/|"
}

{
  for d in "${DIRECTIVES[@]}"; do
    read -r kind path version _ <<< "$d"
    [ "$kind" = require ] || continue
    new=$(replacement_of "$path" "$version")
    if [ -z "$new" ]; then
      printf '# %s %s\n## explicit\n' "$path" "$version"
      [ -e "$GOCODE/$path" ] || echo "vendor.sh: warning: $path (required by go.mod) is not under" \
        "$GOCODE: install its Debian package (apt-cache search golang | grep ...)" >&2
      continue
    fi
    dir=$(local_dir "$new") || die "$path is replaced by $new, which is not a directory"
    [ -f "$dir/go.mod" ] || die "$path is replaced by $new, which has no go.mod"
    place "$path" "$dir"
    gov=$(directives "$dir/go.mod" | awk '$1 == "go" { print $2 }')
    printf '# %s %s => %s\n## explicit%s\n' "$path" "$version" "$new" "${gov:+; go $gov}"
    packages "$path" "$dir"
  done
  # Replacements of every version (and of versions not required) are listed at the end, as
  # `go mod vendor` does: the go command checks that each replace in go.mod appears here.
  for r in "${REPLACEMENTS[@]+"${REPLACEMENTS[@]}"}"; do
    IFS='|' read -r old oldv new <<< "$r"
    if [ -z "$oldv" ]; then
      printf '# %s => %s\n' "$old" "$new"
    elif ! printf '%s\n' "${DIRECTIVES[@]}" | grep -qxF "require $old $oldv"; then
      printf '# %s %s => %s\n' "$old" "$oldv" "$new"
    fi
  done
} > "$NEW/modules.txt"

if [ -d "$MOD/vendor" ]; then
  OLD=$(mktemp -d "$MOD/.vendor.old.XXXXXX")
  mv "$MOD/vendor" "$OLD/vendor"
fi
mv "$NEW" "$MOD/vendor"
echo "vendor.sh: wrote $MOD/vendor (symlinks into $GOCODE and local modules; do not commit it)"
