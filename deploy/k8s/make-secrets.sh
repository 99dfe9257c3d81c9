#!/usr/bin/env bash
# Makes the files the Secrets of deploy/k8s/kustomization.yaml are generated from, in
# deploy/k8s/secrets/ (or the directory given): a CA, a server certificate for the shards' names
# (optd-N.optd.<namespace>.svc..., the Service name and localhost, which the probes use), and an
# access file with one writer token for tenant "default" (its token in secrets/writer.token; the file
# holds only its SHA-256). Existing files are kept (rotate by deleting them). Debian's openssl.
# Usage: make-secrets.sh [dir] [namespace]     The directory is git-ignored: never commit keys.
set -euo pipefail
DIR="${1:-$(dirname "$0")/secrets}"
NS="${2:-optd}"
mkdir -p "$DIR" && chmod 700 "$DIR" && cd "$DIR"
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj /CN=optd-ca -keyout ca.key -out ca.crt 2> /dev/null
fi
if [ ! -f tls.crt ]; then
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=optd \
    -keyout tls.key -out tls.csr 2> /dev/null
  SAN="DNS:localhost,IP:127.0.0.1,DNS:optd,DNS:optd.$NS,DNS:optd.$NS.svc"
  SAN="$SAN,DNS:optd.$NS.svc.cluster.local,DNS:*.optd.$NS.svc,DNS:*.optd.$NS.svc.cluster.local"
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile <(printf 'subjectAltName=%s' "$SAN") -out tls.crt 2> /dev/null
  rm -f tls.csr
fi
if [ ! -f tokens ]; then
  openssl rand -hex 32 > writer.token
  {
    echo "# <sha256 hex of the token> <tenant> <role> [name]   (README, Security)"
    echo "$(tr -d '\n' < writer.token | sha256sum | cut -d' ' -f1) default writer writer"
  } > tokens
fi
chmod 600 ./*.key writer.token tokens
echo "make-secrets: $(pwd): ca.crt tls.crt tls.key tokens (writer token in writer.token)"
