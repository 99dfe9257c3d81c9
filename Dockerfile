# optd container image, two stages on ${BASE_IMAGE} (default debian:bookworm).
#   build:   the C++ build packages only (scripts/install_deps.sh --build-only), then optd and optctl
#            (Release, no tests, no benchmarks). The test suite is not run here: CI runs it
#            (scripts/test.sh), and tests/docker_test.sh builds and runs this image.
#   runtime: the shared libraries optd and optctl link (checked with ldd), the two binaries, a
#            non-root user (uid 10001), a HEALTHCHECK over grpc.health.v1 (optctl health).
# Build:  docker build -t optd .
#         docker build --build-arg BASE_IMAGE=local/debian:bookworm -t optd .   (a local base image)
# Run:    docker run -p 50051:50051 -p 9464:9464 optd
# Flags appended to `docker run optd ...` go after the ENTRYPOINT's and win over them, e.g.
# --listen=0.0.0.0:6000 (then also -e OPTD_HEALTH_ADDR=127.0.0.1:6000 for the HEALTHCHECK).
ARG BASE_IMAGE=debian:bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
# The package layer first, so that source changes do not invalidate it.
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN bash scripts/install_deps.sh --build-only && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
          -DOPTD_BUILD_TESTS=OFF -DOPTD_BUILD_BENCH=OFF -DOPTD_BUILD_PYTHON_NATIVE=OFF > /dev/null \
 && cmake --build /build --target optd optctl \
 && strip /build/server/optd /build/client/cpp/optctl

FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/optd --create-home optd \
 && mkdir -p /var/lib/optd/checkpoints && chown optd /var/lib/optd/checkpoints
COPY --from=build /build/server/optd /build/client/cpp/optctl /usr/local/bin/
USER 10001
WORKDIR /var/lib/optd
EXPOSE 50051 9464
# What the HEALTHCHECK asks: the gRPC address, and optctl flags for a TLS server, e.g.
# OPTD_HEALTH_FLAGS="--tls_ca=/tls/ca.crt --tls_server_name=optd" (health needs no token).
ENV OPTD_HEALTH_ADDR=127.0.0.1:50051 OPTD_HEALTH_FLAGS=""
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD optctl --server="$OPTD_HEALTH_ADDR" --attempts=1 $OPTD_HEALTH_FLAGS health || exit 1
# Plaintext inside the container's network (--insecure: optd refuses plaintext off loopback
# without it). For TLS, mount the PEM files and append --tls_cert, --tls_key (--tls_client_ca) and
# --auth_tokens_file to the command: README, Security. Checkpoints: append
# --checkpoint_dir=/var/lib/optd/checkpoints and mount a volume there.
ENTRYPOINT ["optd", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", "--insecure"]
