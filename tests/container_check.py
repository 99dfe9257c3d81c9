"""Checks tests/docker_test.sh runs against optd in a container, with the repository's Python client.

  health ADDRESS                     wait (bounded) until grpc.health.v1 says SERVING
  train ADDRESS SESSION STEPS        a worker fits a least-squares model through optd (Adam):
                                     the loss must fall below a tenth of its start
  restored ADDRESS SESSION VERSION   the session is there (restored from its checkpoint) at VERSION
  prometheus URL SESSION DASHBOARD   Prometheus's HTTP API: optd's target is up, optd_steps_total
                                     counts the session's steps, and the dashboard's own queries
                                     (panels "Loss" and "Sessions") return data
  pod FILE WHAT                      prints, one per line, from deploy/k8s/statefulset.yaml's optd
                                     container: WHAT = args | env | memory (limit, bytes) |
                                     readiness | liveness | startup (the probe's exec command)
A TLS server: OPTD_TLS_CA (and OPTD_TLS_SERVER_NAME) in the environment; the client reads the
token from OPTD_TOKEN. Exit 0 on success, 1 with a message on failure. Runs on /usr/bin/python3
with PYTHONPATH holding client/python and <build>/python (the generated stubs).
"""

import json
import os
import sys
import time
import urllib.parse
import urllib.request

import numpy as np

import optd

TIMEOUT_S = 60


def client(address, timeout):
    """An optd.Client, with TLS when OPTD_TLS_CA names the CA (token: OPTD_TOKEN)."""
    tls = {}
    if os.environ.get("OPTD_TLS_CA"):
        tls = {"tls_ca": os.environ["OPTD_TLS_CA"],
               "tls_server_name": os.environ.get("OPTD_TLS_SERVER_NAME") or None}
    return optd.Client(address, timeout=timeout, **tls)


def fail(message):
    print(f"container_check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def wait_for(what, predicate, timeout=TIMEOUT_S, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # pylint: disable=broad-except
            last = error
        time.sleep(interval)
    fail(f"timed out after {timeout} s waiting for {what} (last error: {last})")
    return None


def health(address):
    with client(address, 2.0) as c:
        wait_for(f"{address} SERVING", c.health)
    print(f"health: {address} SERVING")


def train(address, session_id, steps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    w_true = rng.normal(size=16).astype(np.float32)
    y = x @ w_true
    with client(address, 10.0) as c:
        session = c.create_session({"w": np.zeros(16, np.float32)}, "adam", lr=0.05,
                                        session_id=session_id)
        w = np.zeros(16, np.float32)
        losses = []
        for _ in range(steps):
            residual = x @ w - y
            loss = float(np.mean(residual ** 2))
            losses.append(loss)
            grad = (2.0 / len(x)) * (x.T @ residual)
            result = session.step({"w": grad.astype(np.float32)}, loss=loss)
            w = result.parameters["w"]
        version = result.version
        session.checkpoint()
    print(f"train: {steps} steps through {address}: loss {losses[0]:.4g} -> {losses[-1]:.4g}, "
          f"version {version}")
    if not losses[-1] < losses[0] / 10:
        fail(f"the loss did not drop: {losses[0]} -> {losses[-1]}")


def restored(address, session_id, version):
    with client(address, 10.0) as c:
        sessions = {s.session_id: s for s in c.list_sessions()}
    if session_id not in sessions:
        fail(f"session {session_id} not restored; sessions: {sorted(sessions)}")
    if sessions[session_id].version != version:
        fail(f"session {session_id} restored at version {sessions[session_id].version}, "
             f"not {version}")
    print(f"restored: {session_id} at version {version} after the container was replaced")


def _query(url, expr):
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=5) as reply:
        body = json.loads(reply.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def _panels(panels):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def prometheus(url, session_id, dashboard_path):
    wait_for("Prometheus ready", lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2))
    wait_for("optd's target up", lambda: [s for s in _query(url, 'up{job="optd"}')
                                          if s["value"][1] == "1"], timeout=90)
    steps = wait_for("optd_steps_total of the session",
                     lambda: _query(url, f'sum(optd_steps_total{{session="{session_id}"}})'),
                     timeout=90)
    print(f"prometheus: up{{job=\"optd\"}} == 1; sum(optd_steps_total{{session=\"{session_id}\"}})"
          f" = {steps[0]['value'][1]}")
    dashboard = json.loads(open(dashboard_path, encoding="utf-8").read())
    panels = {p["title"]: p for p in _panels(dashboard["panels"])}
    for title in ("Loss", "Sessions"):
        expr = panels[title]["targets"][0]["expr"]
        expr = (expr.replace("$instance", ".*").replace("$session", session_id)
                .replace("$__rate_interval", "1m"))
        result = wait_for(f"dashboard panel {title!r}: {expr}", lambda e=expr: _query(url, e),
                          timeout=60)
        print(f"prometheus: dashboard panel {title!r}: {expr} -> {result[0]['value'][1]}")


def pod(path, what):
    import yaml  # pylint: disable=import-outside-toplevel
    sts = yaml.safe_load(open(path, encoding="utf-8"))
    container = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "optd"][0]
    if what == "args":
        lines = container["args"]
    elif what == "env":
        lines = [f"{e['name']}={e['value']}" for e in container.get("env", [])]
    elif what == "memory":
        units = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30}
        limit = container["resources"]["limits"]["memory"]
        lines = [str(int(limit[:-2]) * units[limit[-2:]])]
    else:
        lines = container[f"{what}Probe"]["exec"]["command"]
    print("\n".join(lines))


def main(argv):
    if len(argv) < 3:
        fail(__doc__)
    command, args = argv[1], argv[2:]
    if command == "health":
        health(args[0])
    elif command == "train":
        train(args[0], args[1], int(args[2]))
    elif command == "restored":
        restored(args[0], args[1], int(args[2]))
    elif command == "prometheus":
        prometheus(args[0], args[1], args[2])
    elif command == "pod":
        pod(args[0], args[1])
    else:
        fail(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
