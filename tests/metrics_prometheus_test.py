"""Metrics end to end: a real Prometheus scrapes a real optd during a small training run.

The module starts optd (``--metrics_listen=127.0.0.1:0``) and Prometheus 2.42 (the Debian package)
on 127.0.0.1 with a temporary TSDB and a configuration generated from deploy/prometheus/prometheus.yml
(target: this optd; scrape and rule evaluation every 1 s; rule file: deploy/prometheus/alerts.yml).
A client then trains through the gRPC stubs: unary steps with a loss, NaN gradients (refused:
non_finite), an unknown tensor (refused: invalid), an unknown session (NOT_FOUND), a StreamSteps
stream, a health check, and a second session that is stepped and deleted.

What is checked, and why:

* ``promtool check metrics`` passes on the live /metrics page (names, types, help, units lint).
* Values Prometheus scraped equal what the client observed: steps counted, the last gradient norm
  and loss the server returned, OK and failed Step calls by grpc_code, refusals by reason, stream
  messages.
* **Every** PromQL expression of deploy/grafana/dashboards/optd.json (every target of every panel,
  and the template variables' queries) returns a non-empty result through /api/v1/query, with
  ``$session`` and ``$instance`` set to this run's values and ``$__rate_interval`` etc. to 1m:
  every panel shows data after a training run.
* Every recording rule of alerts.yml: its expression returns data, and so does its recorded series
  (Prometheus itself loaded and evaluated the rule file).
* Every alert rule of alerts.yml: an alert's expression is *meant* to be empty on a healthy server,
  so its emptiness proves nothing. Instead (1) the whole expression must be valid PromQL on this
  Prometheus, and (2) every vector selector in it (metric name with its label matchers, e.g.
  ``optd_refused_steps_total{reason="non_finite"}``) must select at least one series: the alert
  reads series that exist, spelled as optd exports them, so a renamed metric or a wrong label value
  cannot silence it. (3) Live: this run sends NaN gradients, so OptdNonFiniteGradients must fire,
  and no other alert may be pending or firing on this healthy run. Whether each alert fires on bad
  series and stays silent on good ones is unit-tested by ``promtool test rules``
  (deploy/prometheus/alerts_test.yml, run by tests/metrics_deploy_test.py).
* Deleting a session removes its series from /metrics, and Prometheus stops returning them.

Every wait is bounded; Prometheus and optd are stopped by PID (SIGTERM, then SIGKILL after 5 s).
Runtime: about 15 s. Run: /usr/bin/python3 -m pytest -q tests/metrics_prometheus_test.py
"""

import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from optd_testing import REPO_ROOT, OptdProcess, OptdSetupError, to_tensor

DEPLOY = REPO_ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "optd.json"

SESSION = "metrics-it"
DOOMED = "metrics-doomed"
PRODIGY = "metrics-prodigy"
LEARNING_RATE = 0.01
UNARY_STEPS_BEFORE = 30
STREAM_STEPS = 20
UNARY_STEPS_AFTER = 5
RPC_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 15.0
DATA_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
# Grafana's interval variables, as a dashboard over the last few minutes would set them.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


def _tool(name):
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).is_file():
        pytest.fail(f"{name} is not installed: run scripts/install_deps.sh (Debian package "
                    f"'prometheus')", pytrace=False)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    """SIGTERM one process this module started, wait, SIGKILL after STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(what, predicate, timeout=DATA_TIMEOUT_S, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(interval)


class Prometheus:
    """One Prometheus server process started by this module (never anything else)."""

    def __init__(self, optd_metrics_address, workdir: Path):
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["rule_files"] = [str(ALERTS_YML)]
        jobs = [j for j in config["scrape_configs"] if j["job_name"] == "optd"]
        assert len(jobs) == 1, "deploy/prometheus/prometheus.yml must have one job named optd"
        jobs[0]["static_configs"] = [{"targets": [optd_metrics_address]}]
        self.config.write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "w+b")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [_tool("prometheus"), f"--config.file={self.config}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_for("Prometheus /-/ready", self._ready, timeout=READY_TIMEOUT_S, interval=0.1)

    def _ready(self):
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.output()}",
                        pytrace=False)
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-8000:]

    def api(self, path, **params):
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # 400 for a bad query: report Prometheus's error
            body = json.load(e)
        return body

    def query(self, expr):
        """The result list of an instant query; fails the test on an invalid expression."""
        body = self.api("query", query=expr)
        assert body.get("status") == "success", f"query failed: {expr}\n{body}"
        return body["data"]["result"]

    def value(self, expr):
        """The single value of `expr` (None if empty)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None

    def stop(self):
        _stop(self.proc)
        self.log.close()


# ---------------------------------------------------------------------------------------------------
# The run.

class Observed:
    """What the client saw."""

    def __init__(self):
        self.steps = 0                 # applied steps of SESSION (unary + stream)
        self.unary_ok = 0              # Step calls of SESSION and DOOMED that returned OK
        self.unary_invalid = 0         # Step calls that returned INVALID_ARGUMENT
        self.refused = {"non_finite": 0, "invalid": 0}
        self.stream_messages = 0
        self.last_gradient_norm = None
        self.last_loss = None
        self.not_found = 0


def _train(optd, observed: Observed, prometheus: Prometheus):
    pb2, stub = optd.pb2, optd.stub
    rng = np.random.default_rng(7)
    shapes = {"w": (64, 4), "b": (16,)}

    def create(session_id, optimizer=None):
        stub.CreateSession(pb2.CreateSessionRequest(
            session_id=session_id,
            config=pb2.SessionConfig(optimizer=optimizer or pb2.OptimizerConfig(
                adam=pb2.Adam(lr=LEARNING_RATE))),
            tensors=[to_tensor(n, rng.standard_normal(s)) for n, s in shapes.items()]),
            timeout=RPC_TIMEOUT_S)

    def request(session_id, loss, scale=0.1, names=("w", "b")):
        grads = [to_tensor(n, scale * rng.standard_normal(shapes.get(n, (16,))))
                 for n in names]
        return pb2.StepRequest(session_id=session_id, gradients=grads, loss=loss)

    def unary_step(session_id, loss):
        reply = stub.Step(request(session_id, loss), timeout=RPC_TIMEOUT_S)
        observed.unary_ok += 1
        if session_id == SESSION:
            observed.steps += 1
            observed.last_gradient_norm = reply.gradient_norm
            observed.last_loss = loss
        return reply

    def refused_step(req, reason):
        with pytest.raises(grpc.RpcError) as e:
            stub.Step(req, timeout=RPC_TIMEOUT_S)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        observed.unary_invalid += 1
        observed.refused[reason] += 1

    create(SESSION)
    create(DOOMED)
    # A checkpoint, so the durability series have values.
    stub.Checkpoint(pb2.CheckpointRequest(session_id=SESSION), timeout=RPC_TIMEOUT_S)
    # Let Prometheus see the sessions' zero-valued series first, so that increase() and rate() see
    # every step and refusal below.
    _wait_for("the first scrape of the new sessions",
              lambda: prometheus.query(f'optd_steps_total{{session="{DOOMED}"}}'))

    for i in range(UNARY_STEPS_BEFORE):
        unary_step(SESSION, loss=2.0 / (i + 1))
    for _ in range(3):
        unary_step(DOOMED, loss=1.0)
    # A learning-rate-free session, so optd_optimizer_estimate (d, effective_lr) has values.
    create(PRODIGY, pb2.OptimizerConfig(prodigy=pb2.Prodigy()))
    for _ in range(3):
        reply = unary_step(PRODIGY, loss=1.0)
    assert reply.optimizer_estimates["d"] > 0

    nan = request(SESSION, 1.0)
    nan.gradients[0].data = np.full(shapes["w"], np.nan, dtype="<f4").tobytes()
    refused_step(nan, "non_finite")
    refused_step(nan, "non_finite")
    refused_step(request(SESSION, 1.0, names=("w", "no_such_tensor")), "invalid")

    with pytest.raises(grpc.RpcError) as e:
        stub.GetSession(pb2.GetSessionRequest(session_id="no-such-session"), timeout=RPC_TIMEOUT_S)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    observed.not_found += 1

    replies = list(stub.StreamSteps(
        iter([request(SESSION, 0.5) for _ in range(STREAM_STEPS)]), timeout=RPC_TIMEOUT_S))
    assert len(replies) == STREAM_STEPS
    assert all(r.HasField("reply") for r in replies), replies
    observed.steps += STREAM_STEPS
    observed.stream_messages += STREAM_STEPS

    for i in range(UNARY_STEPS_AFTER):
        unary_step(SESSION, loss=0.1 / (i + 1))

    stub.GetSession(pb2.GetSessionRequest(session_id=SESSION), timeout=RPC_TIMEOUT_S)
    stub.ListSessions(pb2.ListSessionsRequest(), timeout=RPC_TIMEOUT_S)
    stub.Pull(pb2.PullRequest(session_id=SESSION), timeout=RPC_TIMEOUT_S)
    health = optd.channel.unary_unary("/grpc.health.v1.Health/Check")
    health(b"", timeout=RPC_TIMEOUT_S)  # an empty HealthCheckRequest: the overall status


@pytest.fixture(scope="module")
def stack():
    """(optd, prometheus, observed) after the training run; both processes stopped afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="optd-metrics-it-"))
    optd = prometheus = None
    try:
        try:
            optd = OptdProcess(metrics=True,
                               extra_args=[f"--checkpoint_dir={workdir / 'checkpoints'}"]).start()
        except OptdSetupError as e:
            pytest.fail(str(e), pytrace=False)
        prometheus = Prometheus(optd.metrics_address, workdir)
        observed = Observed()
        _train(optd, observed, prometheus)
        # Wait until Prometheus has scraped the end of the run and evaluated the rules on it.
        _wait_for("the last steps in Prometheus", lambda: prometheus.value(
            f'optd_steps_total{{session="{SESSION}"}}') == observed.steps)
        _wait_for("the recording rules",
                  lambda: prometheus.query("optd:grpc_server_error_ratio:rate5m"))
        yield optd, prometheus, observed
    finally:
        if prometheus is not None:
            prometheus.stop()
        if optd is not None:
            optd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# PromQL helpers.

def substitute(expr, instance):
    """A dashboard expression as Grafana would send it for this run."""
    for var, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(var, value)
    expr = expr.replace("${session}", SESSION).replace("$session", SESSION)
    return expr.replace("${instance}", instance).replace("$instance", instance)


_PROMQL_WORDS = {
    # aggregations, operators and modifiers
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "atan2", "inf", "nan",
}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def vector_selectors(expr):
    """Every vector selector of a PromQL expression: 'name{matchers}' or a bare 'name'."""
    selectors = []
    # name{...} (label values are quoted and never contain '}' here).
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})", expr):
        selectors.append(m.group(1) + m.group(2))
    rest = re.sub(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{[^}]*\}", " ", expr)
    rest = re.sub(r'"[^"]*"', " ", rest)       # string literals
    rest = _GROUPING.sub(" ", rest)           # label lists of by (...), on (...)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)   # range durations
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", rest):
        name = m.group(1)
        if name.lower() not in _PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", name):
            selectors.append(name)
    return selectors


def dashboard_queries():
    """(where, expr) for every target of every panel (rows included) and every query variable."""
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
            assert m, f"variable {var['name']}: unsupported query {query!r}"
            # Grafana runs label_values(selector, label) as a series lookup of the selector.
            out.append((f"variable {var['name']!r} (label {m.group(2)})", m.group(1)))
    return out


def rules():
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


# ---------------------------------------------------------------------------------------------------
# Tests.

def test_promtool_check_metrics_passes_on_live_metrics(stack):
    optd, _, _ = stack
    text = optd.metrics_text()
    result = subprocess.run([_tool("promtool"), "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_generated_prometheus_config_is_valid(stack):
    _, prometheus, _ = stack
    result = subprocess.run([_tool("promtool"), "check", "config", str(prometheus.config)],
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    targets = prometheus.api("targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets


def test_scraped_values_match_what_the_client_saw(stack):
    _, prom, seen = stack
    s = f'session="{SESSION}"'
    assert prom.value(f"optd_steps_total{{{s}}}") == seen.steps
    assert prom.value(f"optd_gradient_norm{{{s}}}") == pytest.approx(seen.last_gradient_norm,
                                                                     rel=1e-9)
    assert prom.value(f"optd_loss{{{s}}}") == pytest.approx(seen.last_loss, rel=1e-9)
    assert prom.value(f"optd_learning_rate{{{s}}}") == pytest.approx(LEARNING_RATE)
    assert prom.value(f"optd_step_gradient_norm_count{{{s}}}") == seen.steps
    for reason, count in seen.refused.items():
        assert prom.value(f'optd_refused_steps_total{{{s},reason="{reason}"}}') == count, reason
    assert prom.value(f'optd_refused_steps_total{{{s},reason="stale"}}') == 0

    step = 'grpc_service="optd.v1.Optimizer",grpc_method="Step",grpc_type="unary"'
    assert prom.value(f'grpc_server_handled_total{{{step},grpc_code="OK"}}') == seen.unary_ok
    assert (prom.value(f'grpc_server_handled_total{{{step},grpc_code="InvalidArgument"}}') ==
            seen.unary_invalid)
    calls = seen.unary_ok + seen.unary_invalid
    assert prom.value(f"grpc_server_started_total{{{step}}}") == calls
    assert prom.value(f"grpc_server_msg_received_total{{{step}}}") == calls
    assert prom.value(f"grpc_server_msg_sent_total{{{step}}}") == seen.unary_ok  # as Go: OK only
    assert prom.value(f"grpc_server_handling_seconds_count{{{step}}}") == calls
    assert prom.value('grpc_server_handled_total{grpc_method="GetSession",'
                      'grpc_code="NotFound"}') == seen.not_found

    stream = 'grpc_method="StreamSteps",grpc_type="bidi_stream"'
    assert prom.value(f'grpc_server_handled_total{{{stream},grpc_code="OK"}}') == 1
    assert prom.value(f"grpc_server_msg_received_total{{{stream}}}") == seen.stream_messages
    assert prom.value(f"grpc_server_msg_sent_total{{{stream}}}") == seen.stream_messages
    assert (prom.value(f"optd_stream_message_handling_seconds_count{{{stream}}}") ==
            seen.stream_messages)
    assert prom.value('grpc_server_handled_total{grpc_service="grpc.health.v1.Health",'
                      'grpc_method="Check",grpc_code="OK"}') == 1
    assert prom.value("sum(optd_sessions)") >= 1
    assert prom.value("process_resident_memory_bytes") > 0
    assert prom.value('count(optd_build_info{version!=""})') == 1


def test_every_dashboard_expression_returns_data(stack):
    optd, prometheus, _ = stack
    queries = dashboard_queries()
    assert len(queries) >= 30
    empty = []
    for where, expr in queries:
        result = prometheus.query(substitute(expr, optd.metrics_address))
        if not result:
            empty.append(f"{where}: {expr}")
    assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)


def test_estimates_of_a_learning_rate_free_session(stack):
    optd, prom, _ = stack
    d = prom.value(f'optd_optimizer_estimate{{session="{PRODIGY}",estimate="d"}}')
    info = optd.stub.GetSession(optd.pb2.GetSessionRequest(session_id=PRODIGY),
                                timeout=RPC_TIMEOUT_S)
    assert d == pytest.approx(info.optimizer_estimates["d"], rel=1e-12)
    assert not prom.query(f'optd_optimizer_estimate{{session="{SESSION}"}}')  # adam: none


def test_session_variable_lists_the_session(stack):
    optd, prometheus, _ = stack
    series = prometheus.query(substitute('optd_steps_total{instance=~"$instance"}',
                                         optd.metrics_address))
    assert SESSION in {s["metric"]["session"] for s in series}


def test_every_recording_rule_returns_data(stack):
    _, prometheus, _ = stack
    records = [r for r in rules() if "record" in r]
    assert records
    for rule in records:
        assert prometheus.query(rule["expr"]), f"record {rule['record']}: no data"
        assert prometheus.query(rule["record"]), f"{rule['record']} was not recorded"


def test_every_alert_reads_series_that_exist(stack):
    _, prometheus, _ = stack
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 7
    missing = []
    for rule in alerts:
        prometheus.query(rule["expr"])  # valid PromQL on this Prometheus
        selectors = vector_selectors(rule["expr"])
        assert selectors, f"alert {rule['alert']}: no selector found in {rule['expr']!r}"
        for selector in selectors:
            if not prometheus.query(selector):
                missing.append(f"alert {rule['alert']}: {selector}")
    assert not missing, "alerts read series that do not exist:\n" + "\n".join(missing)


def test_non_finite_alert_fires_and_the_rest_stay_silent(stack):
    _, prometheus, _ = stack

    def active():
        return {(a["labels"]["alertname"], a["labels"].get("session"), a["state"])
                for a in prometheus.api("alerts")["data"]["alerts"]}

    _wait_for("OptdNonFiniteGradients to fire",
              lambda: ("OptdNonFiniteGradients", SESSION, "firing") in active(), timeout=15)
    assert active() == {("OptdNonFiniteGradients", SESSION, "firing")}


def test_deleting_a_session_removes_its_series(stack):
    optd, prometheus, _ = stack
    assert f'session="{DOOMED}"' in optd.metrics_text()
    optd.stub.DeleteSession(optd.pb2.DeleteSessionRequest(session_id=DOOMED),
                            timeout=RPC_TIMEOUT_S)
    assert f'session="{DOOMED}"' not in optd.metrics_text()
    # The next scrape marks the series stale; instant queries stop returning them.
    _wait_for("the deleted session's series to go stale",
              lambda: not prometheus.query(f'{{session="{DOOMED}"}}'), timeout=15)
    assert prometheus.query(f'optd_steps_total{{session="{SESSION}"}}')


def test_vector_selectors_finds_every_selector():
    expr = ('sum by (job, session) (increase(optd_refused_steps_total{reason="x"}[10m])) > 0 '
            'or (max by (job) (optd_barrier_missing_workers) > 0 and on (job) '
            'rate(up[5m]) > bool 1e-3)')
    assert vector_selectors(expr) == ['optd_refused_steps_total{reason="x"}',
                                      "optd_barrier_missing_workers", "up"]
