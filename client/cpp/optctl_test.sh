#!/usr/bin/env bash
# optctl end to end: starts the real optd binary on 127.0.0.1:0 (reading the bound port from its
# "optd listening on HOST:PORT" line), drives it with optctl and checks outputs, .npy files (with
# numpy) and exit codes: 0 success (and --help, --version), 1 RPC failure, 2 usage error. Covers
# help (every optimizer and schedule listed), both binaries' --version, create (with schedule,
# clipping, consistency), update (the new values shown by describe, version and optimizer state
# kept), keyed steps (a resent sequence is a duplicate; without --sequence each run joins as a new
# incarnation and is applied), checkpoint and create --from_checkpoint / --from_session (optd runs
# with --checkpoint_dir in the temporary folder), and the errors of bad flags.
#
# Usage: optctl_test.sh PATH/TO/optd PATH/TO/optctl "VERSION (BUILD_TYPE)"
# Stops only the optd it started (SIGTERM, then SIGKILL after 10 s). Every wait is bounded.
set -euo pipefail

OPTD=${1:?usage: optctl_test.sh OPTD OPTCTL}
OPTCTL=${2:?usage: optctl_test.sh OPTD OPTCTL VERSION}
VERSION=${3:?usage: optctl_test.sh OPTD OPTCTL VERSION}
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

# --- help and versions, without a server -------------------------------------------------------
# local WANT_EXIT ARGS...: runs optctl with no server; stdout and stderr go to $WORK/out, err.
local_run() {
  local want=$1
  shift
  local rc=0
  timeout 60 "$OPTCTL" "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [[ $rc -eq $want ]] || fail "optctl $*: exit $rc, want $want"
  echo "ok: optctl $* -> $rc"
}
for help in --help -h help; do
  local_run 0 $help
  grep -q '^Commands:' "$WORK/out" || fail "optctl $help: no Commands section"
done
for cmd in create update list describe checkpoint delete pull step health; do
  grep -Eq "^  $cmd " "$WORK/out" || fail "--help lacks the command $cmd"
done
for opt in sgd adam adamw adagrad adadelta rmsprop nadam radam lion lamb lars normalized_gd; do
  grep -Eq "^  $opt +--lr=" "$WORK/out" || fail "--help lacks the optimizer $opt and its --lr"
done
grep -Eq '^  adam +--lr=1e-3 --beta1=0\.9 --beta2=0\.999 --eps=1e-8 --weight_decay=0 --\[no\]amsgrad' \
  "$WORK/out" || fail "--help: adam's flags and defaults"
grep -Eq -- '--trust_coefficient=1e-3' "$WORK/out" || fail "--help lacks lars' trust_coefficient"
for sched in constant step multi_step exponential cosine_annealing linear_warmup warmup_cosine \
  inverse_sqrt one_cycle reduce_on_plateau; do
  grep -Eq "^  $sched( |$)" "$WORK/out" || fail "--help lacks the schedule $sched"
done
grep -Eq -- '--max_norm=X' "$WORK/out" || fail "--help lacks clipping"
grep -Eq '^  async\|sync\|bounded ' "$WORK/out" || fail "--help lacks consistency"
local_run 0 --version
grep -qx "optctl $VERSION" "$WORK/out" || fail "optctl --version: '$(cat "$WORK/out")', want 'optctl $VERSION'"
rc=0
"$OPTD" --version >"$WORK/out" 2>"$WORK/err" || rc=$?
[[ $rc -eq 0 ]] || fail "optd --version: exit $rc"
grep -qx "optd $VERSION" "$WORK/out" || fail "optd --version: '$(cat "$WORK/out")', want 'optd $VERSION'"
echo "ok: optd --version -> optd $VERSION"

# --- start optd --------------------------------------------------------------------------------
mkdir -p "$WORK/checkpoints"
: >"$WORK/optd.out"  # exists before the loop below reads it (the redirection is optd's, async)
"$OPTD" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --checkpoint_dir="$WORK/checkpoints" \
  --checkpoint_interval=0 >"$WORK/optd.out" 2>"$WORK/optd.err" &
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
err_has '^optctl: INVALID_ARGUMENT: --momentum does not apply to adam \(it takes: --lr, --beta1, --beta2, --eps, --weight_decay, --amsgrad, --maximize\)$'
run 2 create --session=x --optimizer=adamax --tensor=w:1
err_has 'optimizer=adamax: must be one of sgd, adam, adamw, adagrad, normalized_gd, adadelta, rmsprop, nadam, radam, lion, lamb, lars, prodigy, dadapt_adam, dadapt_sgd, dog, ldog, schedulefree_adamw, schedulefree_sgd, adafactor, muon$'
run 2 create --session=x --optimizer=adam
err_has 'no tensors'
run 2 create --session=x --optimizer=adam --tensor=w:3xq
err_has 'dimensions'
run 2 create --session=x --optimizer=normalized_gd --norm=sideways --tensor=w:1
err_has "norm needs one of global\|per_tensor; got 'sideways'"

run 0 create --session=bools --optimizer=sgd --lr=0.1 --momentum=0.9 --nesterov --nomaximize --tensor=w:2
out_has '^  nesterov +true$'
out_has '^  maximize +false$'
run 0 create --session=amsgrad --optimizer=adamw --amsgrad --tensor=w:2
out_has '^  amsgrad +true$'
out_has '^  weight_decay +0\.01$'   # AdamW's own default
# The learning-rate-free optimizers' flags: doubles, int64 and booleans.
run 0 create --session=prodigy --optimizer=prodigy --d_coef=0.5 --slice_p=3 --nodecouple \
  --tensor=w:4x3:normal=0.1
out_has '^optimizer: +prodigy$'
out_has '^  d_coef +0\.5$'
out_has '^  slice_p +3$'
out_has '^  decouple +false$'
out_has '^estimates: +d=1e-06 effective_lr=1e-06$'   # Prodigy's d0 before the first step
run 0 create --session=muon --optimizer=muon --ns_steps=3 --adam_lr=0.001 --tensor=w:4x3:normal=0.1
out_has '^  ns_steps +3$'
run 2 create --session=x --optimizer=dog --slice_p=2 --tensor=w:1
err_has '^optctl: INVALID_ARGUMENT: --slice_p does not apply to dog'

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
out_has '^durable: +0 '   # checkpointed when created
run 1 describe no-such-session
err_has '^optctl: NOT_FOUND: '

# --- checkpoints and forks (optd runs with --checkpoint_dir) ----------------------------------
run 0 create --session=ck --optimizer=adam --lr=0.1 --tensor=w:4:const=1
run 0 step ck --grad=w:const=0.5
run 0 checkpoint ck
out_has '^checkpoint: +ck$'
out_has '^version: +1$'
out_has "^path: +$WORK/checkpoints/"
out_has '^bytes: +[1-9][0-9]*$'
CKPT=$(sed -n 's/^path: *//p' "$WORK/out")
[[ -f "$CKPT" ]] || fail "checkpoint file $CKPT does not exist"
run 0 describe ck
out_has '^durable: +1 '
run 0 step ck --grad=w:const=0.5
run 0 create --session=ck-fork --from_checkpoint="$CKPT" --optimizer=adam --lr=0.01
out_has '^session: +ck-fork$'
out_has '^  lr +0\.01$'
out_has '^version: +1$'
run 0 create --session=ck-fork2 --from_session=ck
out_has '^  lr +0\.1$'
out_has '^version: +1$'   # the newest checkpoint's, not the session's 2
run 2 create --session=x --from_session=ck --lr=0.5
err_has 'need --optimizer=NAME'
run 2 create --session=x --from_session=ck --from_checkpoint="$CKPT"
err_has 'not both'
run 2 create --session=x --from_session=ck --tensor=w:1
err_has 'the checkpoint holds the tensors'
run 1 create --session=x --from_session=no-such-session
err_has '^optctl: NOT_FOUND: '
run 1 checkpoint no-such-session
err_has '^optctl: NOT_FOUND: '
run 2 checkpoint
err_has 'usage: optctl checkpoint ID'

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

# --- keyed steps (--sequence: unjoined): a resent sequence number is answered, not applied again --
run 0 step e2e --worker=tester --sequence=5 --grad='*:const=0.1'
out_has '^version: +2$'
out_has '^duplicate: +false$'
out_has '^worker: +tester sequence 5$'
run 0 step e2e --worker=tester --sequence=5 --grad='*:const=0.1'
out_has '^version: +2$'
out_has '^duplicate: +true$'
run 0 describe e2e
out_has '^version: +2$'
run 2 step e2e --sequence=-1
err_has '--sequence=-1: must be >= 0'
run 1 step e2e --worker='bad id'
err_has "worker_id 'bad id' contains ' '"

# --- schedule, clipping and consistency at create ----------------------------------------------
run 0 create --session=sched --optimizer=sgd --lr=0.5 --momentum=0.9 --tensor=w:4 \
  --schedule=multi_step:milestones=10,20,gamma=0.5 --max_norm=2 --consistency=sync:workers=1
out_has '^schedule: +multi_step:milestones=10,20,gamma=0\.5$'
out_has '^clipping: +max_norm=2$'
out_has '^consistency: +sync:workers=1'
# A SYNC session needs the version with each step: optctl step sends the session's.
run 0 step sched --grad='*:const=1'
out_has '^version: +1$'
out_has '^learning rate: +0\.5$'
# Without --sequence the worker joins: each run is a new incarnation of worker "optctl", numbered
# from 1, so a second run is applied (not answered as a duplicate of the first).
out_has '^worker: +optctl incarnation [0-9]+ sequence 1$'
FIRST_INCARNATION=$(sed -n 's/^worker: *optctl incarnation \([0-9]*\) .*/\1/p' "$WORK/out")
run 0 step sched --grad='*:const=1'
out_has '^version: +2$'
out_has '^duplicate: +false$'
out_has '^worker: +optctl incarnation [0-9]+ sequence 1$'
grep -q "^worker: *optctl incarnation $FIRST_INCARNATION " "$WORK/out" &&
  fail "a second optctl step reused incarnation $FIRST_INCARNATION"
run 2 create --session=x --optimizer=sgd --lr=1 --tensor=w:1 --schedule=cosine
err_has "'cosine' is not a schedule; must be one of constant, step, multi_step, exponential, cosine_annealing"
run 2 create --session=x --optimizer=sgd --lr=1 --tensor=w:1 --schedule=step:step_sze=3
err_has "step has no option 'step_sze' \(it takes: step_size, gamma\)"
run 2 create --session=x --optimizer=sgd --lr=1 --tensor=w:1 --schedule=step:step_size=10,gamma=x
err_has "gamma needs a finite number; got 'x'"
run 2 create --session=x --optimizer=sgd --lr=1 --tensor=w:1 --consistency=eventual
err_has "'eventual' is not a mode; must be one of async\|sync\|bounded"
run 2 create --session=x --optimizer=sgd --lr=1 --tensor=w:1 --max_norm=-1
err_has '--max_norm=-1: must be finite and >= 0'

# --- update: hyperparameters, schedule, clipping; version and optimizer state kept ---------------
run 0 describe e2e
STATE=$(sed -n 's/^optimizer state bytes: *\([0-9]*\) .*/\1/p' "$WORK/out")
[[ -n "$STATE" && "$STATE" -gt 0 ]] || fail "describe e2e shows no optimizer state bytes"
run 0 update e2e --lr=0.001 --beta2=0.99
out_has '^  lr +0\.001$'
out_has '^  beta2 +0\.99$'
out_has '^  beta1 +0\.9$'          # not given: kept
out_has '^version: +2$'
run 0 describe e2e
out_has '^  lr +0\.001$'
out_has '^  beta2 +0\.99$'
out_has '^version: +2$'
out_has "^optimizer state bytes: +$STATE "
out_has '^learning rate: 0\.001 \(next step\)$'
run 0 step e2e --grad='*:const=0.1'
out_has '^version: +3$'
out_has '^learning rate: +0\.001$'
run 0 update e2e --schedule=step:step_size=10,gamma=0.5 --max_norm=1
out_has '^schedule: +step:step_size=10,gamma=0\.5$'
out_has '^clipping: +max_norm=1$'
run 0 update e2e --clip_value=0.5
out_has '^clipping: +max_norm=1,clip_value=0\.5$'   # max_norm kept
out_has '^schedule: +step:step_size=10,gamma=0\.5$'
run 0 update e2e --amsgrad=false --eps=1e-6
out_has '^  eps +1e-06$'
run 0 describe e2e
out_has '^version: +3$'
out_has '^clipping: +max_norm=1,clip_value=0\.5$'

run 2 update e2e --momentum=0.9
err_has '--momentum does not apply to adam \(it takes: --lr, --beta1'
run 2 update e2e
err_has 'update e2e: nothing to change; give adam.s hyperparameters \(--lr, --beta1, --beta2, --eps, --weight_decay, --amsgrad, --maximize\), --schedule=SPEC, --max_norm=X or --clip_value=X'
run 2 update e2e --optimizer=sgd --lr=1
err_has '--optimizer=sgd: session e2e runs adam'
run 2 update e2e --consistency=sync:workers=2
err_has "a session's consistency is fixed when it is created"
run 2 update e2e --schedule=warmup
err_has "'warmup' is not a schedule"
run 1 update e2e --lr=-1
err_has '^optctl: INVALID_ARGUMENT: .*lr'
run 1 update e2e --beta1=1.5
err_has '^optctl: INVALID_ARGUMENT: .*beta1'
run 1 update e2e --amsgrad    # no history for the new state: refused by the server
err_has '^optctl: INVALID_ARGUMENT: .*amsgrad'
run 0 describe e2e            # nothing changed by the refused updates
out_has '^  lr +0\.001$'
out_has '^  beta1 +0\.9$'
out_has '^version: +3$'
run 1 update no-such-session --lr=1
err_has '^optctl: NOT_FOUND: '
run 2 update
err_has 'usage: optctl update ID'

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
run 2 --timeout=0s list
err_has '--timeout=0: must be > 0'
run 1 create --session=x --optimizer=adam --lr=abc --tensor=w:1   # absl's own flag syntax check
err_has "Illegal value 'abc' specified for flag 'lr'"
run 2 pull e2e --dtype=f64
err_has '--dtype=f64: must be f32, bf16 or f16'
run 2 create --session=x --optimizer=adam --tensor=w:1:unif=1
err_has "INIT 'unif=1' must be zeros, ones, const=V, uniform=A or normal=S"
rc=0
timeout 60 "$OPTCTL" --server=127.0.0.1:1 --timeout=5s list >"$WORK/out" 2>"$WORK/err" || rc=$?
[[ $rc -eq 1 ]] || fail "list against a closed port: exit $rc, want 1"
err_has '^optctl: UNAVAILABLE: .*\[ListSessions to 127\.0\.0\.1:1: 3 attempts in '
run 2 --attempts=0 list
err_has '--attempts=0: must be >= 1'

echo "PASS: optctl_test"
