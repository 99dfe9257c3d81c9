#!/usr/bin/env bash
# The container image and the compose file, built and run for real (issue #16 parts 4 and 5).
#   1. starts its own Docker daemon (Debian's docker.io) with its data, exec root and socket in a
#      temporary directory, no bridge and no iptables (containers use the host's network);
#   2. base image: no registry is reachable, so a debootstrap'ed Debian 12 (minbase) imported as
#      local/debian:bookworm; the rootfs tarball is cached in $OPTD_DOCKER_CACHE
#      (default ~/.cache/optd-docker) so reruns skip debootstrap;
#   3. builds the Dockerfile (BASE_IMAGE=local/debian:bookworm), checks the runtime image (non-root,
#      no compiler, HEALTHCHECK), reports its size;
#   4. runs optd in it on free loopback ports, waits for the HEALTHCHECK to say healthy, trains a
#      Python worker (client/python) through it (the loss must drop), replaces the container and
#      finds the session restored from the checkpoint volume; then runs it as deploy/k8s's
#      StatefulSet describes its container (args, env, memory limit, Secrets from make-secrets.sh,
#      read-only root) and runs the manifest's readiness probe command in it;
#   5. docker-compose (Debian's 1.29): `config`, then `up --build` of optd and Prometheus (an image
#      from Debian's prometheus package), a worker trains, Prometheus scrapes optd and the
#      dashboard's queries return data; `down -v`;
#   6. stops everything it started (trap): containers, volumes, images, the daemon (by PID).
# Usage: tests/docker_test.sh <build dir>   (ctest: docker_test). Needs root (the daemon).
# OPTD_SKIP_DOCKER_TEST=1 skips it explicitly (exit 77, shown by ctest as skipped); anything
# else missing (root, dockerd, debootstrap) is a failure, not a skip.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD_DIR="$(cd "${1:-$ROOT/build}" && pwd)"
PY=/usr/bin/python3

if [ "${OPTD_SKIP_DOCKER_TEST:-0}" = 1 ]; then
  echo "docker_test: SKIPPED (OPTD_SKIP_DOCKER_TEST=1)"
  exit 77
fi
fail() { echo "docker_test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root to start its own Docker daemon (or OPTD_SKIP_DOCKER_TEST=1)"
for tool in dockerd docker docker-compose debootstrap; do
  command -v "$tool" > /dev/null || fail "$tool not found: run scripts/install_deps.sh"
done
[ -f "$BUILD_DIR/python/optd/v1/optd_pb2.py" ] || fail "no Python stubs in $BUILD_DIR/python: build first"

T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "docker_test: [$(elapsed) s] $*"; }

WORK="$(mktemp -d /tmp/optd-docker-test.XXXXXX)"
export DOCKER_HOST="unix://$WORK/docker.sock"
export COMPOSE_PROJECT_NAME="optdtest$$"
DOCKERD_PID=""
CONTAINERS=()
cleanup() {
  local status=$?
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    docker-compose -f "$ROOT/deploy/docker-compose.yml" down -v --rmi all > /dev/null 2>&1
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" > /dev/null 2>&1; done
    docker volume rm -f "optd-test-checkpoints-$$" "optd-test-k8s-$$" > /dev/null 2>&1
    docker image rm -f optd:test local/debian:bookworm > /dev/null 2>&1
    docker image prune -f > /dev/null 2>&1
    kill -TERM "$DOCKERD_PID" 2> /dev/null
    for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2> /dev/null || break; sleep 0.5; done
    if kill -0 "$DOCKERD_PID" 2> /dev/null; then
      echo "docker_test: dockerd $DOCKERD_PID did not stop; killing it" >&2
      kill -KILL "$DOCKERD_PID"
    fi
  fi
  if [ "$status" -ne 0 ] && [ -f "$WORK/dockerd.log" ]; then
    echo "docker_test: last lines of dockerd.log:" >&2
    tail -n 20 "$WORK/dockerd.log" >&2
  fi
  # The daemon unmounts its overlays when it stops; anything left mounted under WORK is unmounted
  # before the directory goes.
  grep -o " $WORK[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2> /dev/null
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 1. The daemon.
dockerd --data-root="$WORK/data" --exec-root="$WORK/exec" -H "$DOCKER_HOST" \
        --pidfile="$WORK/dockerd.pid" --iptables=false --ip6tables=false --bridge=none \
        > "$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 120); do docker version > /dev/null 2>&1 && break; sleep 0.5; done
docker version --format 'docker_test: daemon {{.Server.Version}}, client {{.Client.Version}}' \
  || fail "dockerd did not start (dockerd.log above)"
log "daemon up (pid $DOCKERD_PID, $WORK)"

# 2. The base image.
CACHE="${OPTD_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/optd-docker}"
BASE_TAR="$CACHE/debian-bookworm-minbase.tar"
if [ ! -s "$BASE_TAR" ]; then
  mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2> /dev/null || true)"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "${mirror:-http://deb.debian.org/debian}" \
    > "$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  # apt's package lists and caches are left out (each image's apt-get update fetches them).
  tar -C "$WORK/rootfs" --exclude='./var/lib/apt/lists/*_*' --exclude='./var/cache/apt/*.bin' \
      --exclude='./var/cache/apt/archives/*.deb' -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$WORK/rootfs"
  log "debootstrap: $BASE_TAR"
fi
docker import - local/debian:bookworm < "$BASE_TAR" > /dev/null
log "base image local/debian:bookworm imported ($(docker image inspect -f '{{.Size}}' local/debian:bookworm | awk '{printf "%.0f MB", $1/1e6}'))"

# 3. The image.
B0=$(date +%s)
docker build --network=host --build-arg BASE_IMAGE=local/debian:bookworm -t optd:test "$ROOT" \
  > "$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; fail "docker build"; }
BUILD_S=$(( $(date +%s) - B0 ))
IMAGE_MB=$(docker image inspect -f '{{.Size}}' optd:test | awk '{printf "%.0f", $1/1e6}')
log "image optd:test built in ${BUILD_S} s: ${IMAGE_MB} MB"
docker image ls optd:test
[ "$(docker image inspect -f '{{.Config.User}}' optd:test)" = 10001 ] || fail "image user is not 10001"
docker image inspect -f '{{json .Config.Healthcheck.Test}}' optd:test | grep -q 'health' \
  || fail "image has no HEALTHCHECK running optctl health"
if docker run --rm --network=none --entrypoint sh optd:test -c 'command -v g++ || command -v cmake'; then
  fail "the runtime image holds a compiler or cmake"
fi
docker run --rm --network=none --entrypoint sh optd:test -c 'id -u; optd --version' | tr '\n' ' '
echo

# 4. optd in a container: health, a worker, restart from the checkpoint volume.
GRPC=$(free_port); METRICS=$(free_port)
run_optd() {
  docker run -d --name "$1" --network=host -e "OPTD_HEALTH_ADDR=127.0.0.1:$GRPC" \
    -v "optd-test-checkpoints-$$:/var/lib/optd/checkpoints" optd:test \
    --listen="127.0.0.1:$GRPC" --metrics_listen="127.0.0.1:$METRICS" \
    --checkpoint_dir=/var/lib/optd/checkpoints > /dev/null
  CONTAINERS+=("$1")
}
wait_healthy() {
  local state=""
  for _ in $(seq 1 120); do
    state=$(docker inspect -f '{{.State.Health.Status}}' "$1")
    [ "$state" = healthy ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || break
    sleep 0.5
  done
  docker logs "$1" 2>&1 | tail -n 20
  fail "container $1 is $state, not healthy"
}
export PYTHONPATH="$ROOT/client/python:$BUILD_DIR/python"
run_optd "optd-test-$$-a"
"$PY" "$ROOT/tests/container_check.py" health "127.0.0.1:$GRPC"
wait_healthy "optd-test-$$-a"
log "container optd-test-$$-a healthy (HEALTHCHECK: optctl health)"
"$PY" "$ROOT/tests/container_check.py" train "127.0.0.1:$GRPC" docker-demo 300
# (Read whole first: `curl | grep -q` under pipefail fails when grep stops reading early.)
METRICS_TEXT="$(curl -sf "http://127.0.0.1:$METRICS/metrics")" || fail "GET /metrics"
grep -q '^optd_steps_total{.*session="docker-demo"' <<< "$METRICS_TEXT" \
  || fail "optd_steps_total of docker-demo not on /metrics"
docker stop -t 20 "optd-test-$$-a" > /dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "optd-test-$$-a")" = 0 ] || fail "optd did not exit 0 on SIGTERM"
docker rm "optd-test-$$-a" > /dev/null
run_optd "optd-test-$$-b"
"$PY" "$ROOT/tests/container_check.py" health "127.0.0.1:$GRPC"
"$PY" "$ROOT/tests/container_check.py" restored "127.0.0.1:$GRPC" docker-demo 300
docker rm -f "optd-test-$$-b" > /dev/null
log "image checks passed"

# 4b. A Kubernetes shard's container as deploy/k8s/statefulset.yaml describes it: the manifest's
#     args (TLS, access file, checkpoints), env and memory limit; the Secrets' files from
#     make-secrets.sh mounted read-only with a Secret volume's mode (0644); a read-only root file
#     system; uid 10001. Then the manifest's readiness probe command, run in the container, says
#     SERVING; Docker's HEALTHCHECK, with the manifest's OPTD_HEALTH_FLAGS, says healthy; the memory
#     budget is 75% of the limit; a worker trains over TLS with the access file's token.
POD="$ROOT/deploy/k8s/statefulset.yaml"
pod() { "$PY" "$ROOT/tests/container_check.py" pod "$POD" "$1"; }
SECRETS="$WORK/secrets"
bash "$ROOT/deploy/k8s/make-secrets.sh" "$SECRETS" > /dev/null
chmod 755 "$SECRETS" && chmod 644 "$SECRETS"/*
mapfile -t POD_ARGS < <(pod args)
mapfile -t POD_ENV < <(pod env)
mapfile -t PROBE < <(pod readiness)
PROBE=("${PROBE[@]/127.0.0.1:50051/127.0.0.1:$GRPC}")
MEMORY=$(pod memory)
ENV_FLAGS=()
for e in "${POD_ENV[@]}"; do ENV_FLAGS+=(-e "$e"); done
docker run -d --name "optd-test-$$-k8s" --network=host --read-only --user 10001:10001 \
  --memory="$MEMORY" -v "$SECRETS:/etc/optd/tls:ro" -v "$SECRETS:/etc/optd/access:ro" \
  -v "optd-test-k8s-$$:/var/lib/optd/checkpoints" "${ENV_FLAGS[@]}" \
  -e "OPTD_HEALTH_ADDR=127.0.0.1:$GRPC" optd:test \
  "${POD_ARGS[@]}" --listen="127.0.0.1:$GRPC" --metrics_listen="127.0.0.1:$METRICS" > /dev/null
CONTAINERS+=("optd-test-$$-k8s")
export OPTD_TLS_CA="$SECRETS/ca.crt" OPTD_TLS_SERVER_NAME=localhost
"$PY" "$ROOT/tests/container_check.py" health "127.0.0.1:$GRPC"
PROBE_OUT="$(docker exec "optd-test-$$-k8s" "${PROBE[@]}")" && [ "$PROBE_OUT" = SERVING ] \
  || fail "readiness probe: ${PROBE[*]}: $PROBE_OUT"
echo "docker_test: readiness probe in the container: ${PROBE[*]} -> SERVING"
wait_healthy "optd-test-$$-k8s"
BUDGET=$(( MEMORY / 4 * 3 ))
docker logs "optd-test-$$-k8s" 2>&1 | grep "memory budget $BUDGET bytes" \
  || { docker logs "optd-test-$$-k8s" 2>&1 | tail -n 5; fail "memory budget is not 75% of $MEMORY"; }
OPTD_TOKEN="$(cat "$SECRETS/writer.token")" \
  "$PY" "$ROOT/tests/container_check.py" train "127.0.0.1:$GRPC" k8s-demo 100
unset OPTD_TLS_CA OPTD_TLS_SERVER_NAME
docker rm -f "optd-test-$$-k8s" > /dev/null
log "the StatefulSet's container (TLS, token, read-only root, memory limit) passed"

# 5. Compose (Debian's docker-compose 1.29): optd and Prometheus.
COMPOSE=(docker-compose -f "$ROOT/deploy/docker-compose.yml")
export OPTD_BASE_IMAGE=local/debian:bookworm OPTD_BIND=127.0.0.1
export OPTD_GRPC_PORT=$(free_port) OPTD_METRICS_PORT=$(free_port) PROMETHEUS_PORT=$(free_port)
export OPTD_PROMETHEUS_TARGETS="$WORK/targets"
mkdir -p "$OPTD_PROMETHEUS_TARGETS"
printf -- '- targets: ["127.0.0.1:%s"]\n  labels: {service: optd}\n' "$OPTD_METRICS_PORT" \
  > "$OPTD_PROMETHEUS_TARGETS/optd.yml"
"${COMPOSE[@]}" config -q
docker-compose version --short | sed 's/^/docker_test: docker-compose /'
C0=$(date +%s)
"${COMPOSE[@]}" up -d --build optd prometheus > "$WORK/compose-up.log" 2>&1 \
  || { tail -n 40 "$WORK/compose-up.log"; fail "docker-compose up"; }
log "docker-compose up -d --build optd prometheus: $(( $(date +%s) - C0 )) s"
"${COMPOSE[@]}" ps
PROM_MB=$(docker image inspect -f '{{.Size}}' optd-prometheus:latest | awk '{printf "%.0f", $1/1e6}')
"$PY" "$ROOT/tests/container_check.py" health "127.0.0.1:$OPTD_GRPC_PORT"
"$PY" "$ROOT/tests/container_check.py" train "127.0.0.1:$OPTD_GRPC_PORT" compose-demo 300
"$PY" "$ROOT/tests/container_check.py" prometheus "http://127.0.0.1:$PROMETHEUS_PORT" compose-demo \
  "$ROOT/deploy/grafana/dashboards/optd.json" \
  || { "${COMPOSE[@]}" logs --tail=20; fail "Prometheus checks"; }
"${COMPOSE[@]}" down -v > /dev/null 2>&1
log "compose checks passed"

echo "docker_test: PASSED in $(elapsed) s: image optd:test ${IMAGE_MB} MB (built in ${BUILD_S} s)," \
     "optd-prometheus ${PROM_MB} MB"
