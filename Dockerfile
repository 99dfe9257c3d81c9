# optd container image: two stages on debian:bookworm.
#   build:   installs the toolchain with the project's own scripts/install_deps.sh, builds, runs
#            every test (the README's test command), so a broken tree never becomes an image.
#   runtime: only the shared libraries optd links, the optd and optctl binaries, a non-root user.
# Build:  docker build -t optd .        Run:  docker run -p 50051:50051 -p 9464:9464 optd
FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN bash scripts/test.sh

FROM debian:bookworm AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home optd
COPY --from=build /src/build/server/optd /src/build/client/cpp/optctl /usr/local/bin/
USER optd
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["optctl", "--server=127.0.0.1:50051", "health"]
# Plaintext inside the container's network (--insecure: optd refuses plaintext off loopback
# without it). For TLS, mount the PEM files and append --tls_cert, --tls_key (--tls_client_ca) and
# --auth_tokens_file to the command: README, Security.
ENTRYPOINT ["optd", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", "--insecure"]
