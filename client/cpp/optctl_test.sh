#!/usr/bin/env bash
# optctl end to end: starts the real optd binary on 127.0.0.1:0 (reading the bound port from its
# "optd listening on HOST:PORT" line), drives it with optctl and checks outputs, .npy files (with
# numpy) and exit codes: 0 success, 1 RPC failure, 2 usage error.
#
# Usage: optctl_test.sh PATH/TO/optd PATH/TO/optctl
# Stops only the optd it started (SIGTERM, then SIGKILL after 10 s). Every wait is bounded.
set -euo pipefail

OPTD=${1:?usage: optctl_test.sh OPTD OPTCTL}
OPTCTL=${2:?usage: optctl_test.sh OPTD OPTCTL}
PY=/usr/bin/python3
WORK=$(mktemp -d "${TMPDIR:-/tmp}/optctl_test.XXXXXX")
OPTD_PID=

cleanup() {
  if [[ -n "$OPTD_PID" ]]; then
    kill -TERM "$OPTD_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$OPTD_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$OPTD_PID" 2>/dev/null || true
    wait "$OPTD_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  echo "--- last optctl stdout:" >&2
  cat "$WORK/out" >&2 2>/dev/null || true
  echo "--- last optctl stderr:" >&2
  cat "$WORK/err" >&2 2>/dev/null || true
  echo "--- optd stderr:" >&2
  cat "$WORK/optd.err" >&2 2>/dev/null || true
  exit 1
}

# --- start optd --------------------------------------------------------------------------------
"$OPTD" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 >"$WORK/optd.out" 2>"$WORK/optd.err" &
OPTD_PID=$!
ADDR=
for _ in $(seq 1 200); do  # up to 20 s
  ADDR=$(sed -n 's/^optd listening on \(127\.0\.0\.1:[0-9][0-9]*\)$/\1/p' "$WORK/optd.out")
  [[ -n "$ADDR" ]] && break
  kill -0 "$OPTD_PID" 2>/dev/null || fail "optd exited before listening"
  sleep 0.1
done
[[ -n "$ADDR" ]] || fail "optd printed no 'optd listening on' line within 20 s"
echo "optd (pid $OPTD_PID) listening on $ADDR"

# run WANT_EXIT ARGS...: runs optctl against the server; stdout and stderr go to $WORK/out, err.
run() {
  local want=$1
  shift
  local rc=0
  timeout 60 "$OPTCTL" --server="$ADDR" --timeout=10s "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [[ $rc -eq $want ]] || fail "optctl $*: exit $rc, want $want"
  echo "ok: optctl $* -> $rc"
}
out_has() { grep -Eq -- "$1" "$WORK/out" || fail "stdout lacks /$1/"; }
err_has() { grep -Eq -- "$1" "$WORK/err" || fail "stderr lacks /$1/"; }

# --- health ------------------------------------------------------------------------------------
run 0 health
out_has '^SERVING$'
run 0 health --service=optd.v1.Optimizer
out_has '^SERVING$'
run 1 health --service=no.such.Service
err_has '^optctl: NOT_FOUND: '

# --- create ------------------------------------------------------------------------------------
run 0 create --session=e2e --optimizer=adam --lr=0.01 --tensor=w:3x4:normal=0.1 \
  --tensor=b:4:const=0.5 --tensor=s:scalar:ones --seed=7
out_has '^session: +e2e$'
out_has '^optimizer: +adam$'
out_has '^  lr +0\.01$'
out_has '^  beta1 +0\.9$'     # not given: the server's (torch's) default
out_has '^  amsgrad +false$'
out_has '^tensors: +3 \(17 parameters\)$'
out_has '^  w +\[3, 4\] +12$'
out_has '^  s +\[\] +1$'
out_has '^version: +0$'

run 1 create --session=e2e --optimizer=adam --tensor=w:1
err_has '^optctl: ALREADY_EXISTS: '
run 1 create --session=bad-beta --optimizer=adam --beta1=1.5 --tensor=w:1
err_has '^optctl: INVALID_ARGUMENT: .*beta1'
run 2 create --session=x --optimizer=adam --momentum=0.9 --tensor=w:1
err_has '^optctl: INVALID_ARGUMENT: --momentum does not apply to Adam'
run 2 create --session=x --optimizer=adamax --tensor=w:1
err_has 'must be one of sgd, adam, adamw, adagrad, normalized_gd'
run 2 create --session=x --optimizer=adam
err_has 'no tensors'
run 2 create --session=x --optimizer=adam --tensor=w:3xq
err_has 'dimensions'
run 2 create --session=x --optimizer=normalized_gd --norm=sideways --tensor=w:1
err_has 'global, per_tensor'

run 0 create --session=bools --optimizer=sgd --lr=0.1 --momentum=0.9 --nesterov --nomaximize --tensor=w:2
out_has '^  nesterov +true$'
out_has '^  maximize +false$'
run 0 create --session=amsgrad --optimizer=adamw --amsgrad --tensor=w:2
out_has '^  amsgrad +true$'
out_has '^  weight_decay +0\.01$'   # AdamW's own default

cat >"$WORK/sgd.textproto" <<'EOF'
config { optimizer { sgd { lr: 0.1 momentum: 0.9 } } }
tensors { name: "enc/w" shape: [2, 2] }
tensors { name: "bias" shape: [2] }
EOF
run 0 create --config="$WORK/sgd.textproto" --session=cfg --init=const=2
out_has '^optimizer: +sgd$'
out_has '^  momentum +0\.9$'
out_has '^  enc/w +\[2, 2\] +4$'

cat >"$WORK/ngd.json" <<'EOF'
{"sessionId": "json", "config": {"optimizer": {"normalizedGd": {"lr": 0.5}}},
 "tensors": [{"name": "p", "shape": [3]}]}
EOF
run 0 create --config="$WORK/ngd.json" --norm=per_tensor
out_has '^session: +json$'
out_has '^optimizer: +normalized_gd$'
out_has '^  norm +per_tensor$'
echo 'config {' >"$WORK/broken.textproto"
run 2 create --config="$WORK/broken.textproto"
err_has 'broken.textproto:'

# --- list / describe ---------------------------------------------------------------------------
run 0 list
out_has '^ID +OPTIMIZER +VERSION'
out_has '^cfg +sgd +0 +2 +6 '
out_has '^e2e +adam +0 +3 +17 '
out_has '^json +normalized_gd '
run 0 describe e2e
out_has '^session: +e2e$'
run 1 describe no-such-session
err_has '^optctl: NOT_FOUND: '

# --- step and pull -----------------------------------------------------------------------------
run 0 step e2e --grad=w:const=1 --grad='*:const=0.5' --loss=2.5
out_has '^version: +1$'
out_has '^learning rate: +0\.01$'
run 2 step e2e --grad=nope:const=1
err_has "has no tensor 'nope'"
run 1 step no-such-session
err_has '^optctl: NOT_FOUND: '

run 0 pull e2e --out="$WORK/npy"
out_has '^version: 1$'
for f in w b s; do [[ -f "$WORK/npy/$f.npy" ]] || fail "pull wrote no $f.npy"; done
run 0 pull cfg --out="$WORK/cfg" --names=enc/w --dtype=bf16
[[ -f "$WORK/cfg/enc%2Fw.npy" ]] || fail "pull wrote no enc%2Fw.npy: $(ls "$WORK/cfg")"
[[ ! -e "$WORK/cfg/bias.npy" ]] || fail "pull --names=enc/w also wrote bias.npy"
run 2 pull e2e --dtype=f64
run 1 pull e2e --names=nope --out="$WORK/none"
err_has '^optctl: INVALID_ARGUMENT: '

# Adam's first step moves each element by lr * g / (|g| + eps), i.e. by lr against the gradient.
if "$PY" -c 'import numpy' 2>/dev/null; then
  "$PY" - "$WORK" <<'EOF' || fail "numpy check of the .npy files"
import sys
import numpy as np
work = sys.argv[1]
w = np.load(f"{work}/npy/w.npy")
b = np.load(f"{work}/npy/b.npy")
s = np.load(f"{work}/npy/s.npy")
assert w.dtype == np.dtype("<f4") and w.shape == (3, 4) and w.flags["C_CONTIGUOUS"], (w.dtype, w.shape)
assert 0 < np.abs(w + 0.01).max() < 1.0, w          # N(0, 0.1) initial values, stepped by -0.01
assert b.shape == (4,) and np.allclose(b, 0.49, atol=1e-6), b
assert s.shape == () and abs(float(s) - 0.99) < 1e-6, s
e = np.load(f"{work}/cfg/enc%2Fw.npy")
assert e.dtype == np.float32 and e.shape == (2, 2) and (e == 2).all(), e  # 2 is exact in BF16
print("numpy: .npy files ok")
EOF
else
  echo "numpy not importable by $PY: checking the .npy magic only"
  head -c 6 "$WORK/npy/w.npy" | grep -q NUMPY || fail "w.npy is not a .npy file"
fi

run 0 describe e2e
out_has '^version: +1$'

# --- delete ------------------------------------------------------------------------------------
run 0 delete e2e
out_has '^deleted e2e$'
run 1 describe e2e
err_has '^optctl: NOT_FOUND: '
run 1 delete e2e
err_has '^optctl: NOT_FOUND: '

# --- usage errors and an unreachable server ----------------------------------------------------
run 2
err_has 'missing COMMAND'
run 2 frobnicate
err_has "unknown command 'frobnicate'"
run 2 describe
err_has 'usage: optctl describe ID'
run 2 list extra-arg
rc=0
timeout 60 "$OPTCTL" --server=127.0.0.1:1 --timeout=5s list >"$WORK/out" 2>"$WORK/err" || rc=$?
[[ $rc -eq 1 ]] || fail "list against a closed port: exit $rc, want 1"
err_has '^optctl: UNAVAILABLE: '

echo "PASS: optctl_test"
