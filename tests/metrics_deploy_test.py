"""deploy/: the Prometheus, Grafana and docker-compose files are valid and agree with each other.

* ``promtool check config`` on deploy/prometheus/prometheus.yml (which also checks its rule file),
  ``promtool check rules`` on alerts.yml, and ``promtool test rules`` on alerts_test.yml (each alert
  fires on synthetic unhealthy series and stays silent on healthy ones).
* The Grafana dashboard is well-formed: unique panel ids, every target has a PromQL expression and
  uses the provisioned datasource through ``$datasource``, every ``$variable`` it uses is defined,
  panels do not overlap; the provisioning points at the mounted dashboard directory and at the
  compose Prometheus.
* docker-compose.yml is consistent with those files: optd is built from the repository's
  Dockerfile and exports metrics on the host network's ${OPTD_METRICS_PORT:-9464}, which Prometheus
  (also on the host network) scrapes as localhost:9464 through prometheus/targets/*.yml; every
  mounted host path exists. (tests/docker_test.sh runs the file for real, and
  tests/deploy_validate_test.sh checks it against the Compose Specification schema.)

The PromQL itself is evaluated against a real Prometheus by tests/metrics_prometheus_test.py.
Run: /usr/bin/python3 -m pytest -q tests/metrics_deploy_test.py
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from optd_testing import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "optd.json"


def promtool(*args):
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(path).is_file():
        pytest.fail("promtool is not installed: run scripts/install_deps.sh (Debian package "
                    "'prometheus')", pytrace=False)
    result = subprocess.run([path, *args], cwd=PROM_DIR, capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_promtool_check_config():
    promtool("check", "config", "prometheus.yml")


def test_promtool_check_rules():
    promtool("check", "rules", "alerts.yml")


def test_promtool_test_rules():
    promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    tested = {t["alertname"] for test in tests for t in test.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    assert alerts == tested
    for name in ("OptdDown", "OptdErrorRatioHigh", "OptdStepLatencyP99High",
                 "OptdNonFiniteGradients", "OptdTrainingStalled", "OptdGradientNormExploding",
                 "OptdBarrierTimeouts"):
        assert name in alerts


def _panels(panels):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "session"} <= variables
    builtin = {"__rate_interval", "__interval", "__range"}
    rows = [p for p in panels if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Server", "Checkpoints", "Training: $session",
                                          "Resources"]
    assert rows[2].get("repeat") == "session"
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for dx in range(pos["w"]):
            for dy in range(pos["h"]):
                cell = (pos["x"] + dx, pos["y"] + dy)
                assert cell not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add(cell)
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            for var in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert var in variables | builtin, f"{panel['title']}: unknown ${var}"
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    # The training row shows what the issue asks for.
    for metric in ("optd_loss", "optd_gradient_norm", "optd_update_ratio", "optd_learning_rate",
                   "optd_staleness_versions_bucket", "optd_refused_steps_total",
                   "grpc_server_handling_seconds_bucket", "process_resident_memory_bytes",
                   "process_cpu_seconds_total",
                   # The checkpoints row (issue #12): every durability metric optd exports.
                   "optd_checkpoint_duration_seconds_bucket", "optd_checkpoint_written_bytes_total",
                   "optd_checkpoint_failures_total", "optd_checkpoint_skipped_total",
                   "optd_checkpoint_last_success_timestamp_seconds"):
        assert metric in exprs, metric


def test_grafana_provisioning_matches_compose():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"]
                  if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == mounts["./grafana/dashboards"]
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/datasource.yml").read_text())["datasources"]
    assert datasources[0]["type"] == "prometheus"
    assert datasources[0]["uid"] == "prometheus"
    # Grafana substitutes the environment variable the compose file sets.
    assert datasources[0]["url"] == "${PROMETHEUS_URL}"
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://localhost:${PROMETHEUS_PORT:-9090}"
    dashboard = json.loads(DASHBOARD.read_text())
    ds_var = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"][0]
    assert ds_var["current"]["value"] == datasources[0]["uid"]


def test_compose_wires_optd_prometheus_and_grafana():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"optd", "prometheus", "grafana"}
    optd = services["optd"]
    assert (DEPLOY / optd["build"]["context"] / optd["build"]["dockerfile"]).is_file()
    assert "--metrics_listen=${OPTD_BIND:-0.0.0.0}:${OPTD_METRICS_PORT:-9464}" in optd["command"]
    assert all(s.get("network_mode") == "host" for s in services.values())
    assert "name" not in compose, "docker-compose 1.29 refuses a top-level name"
    prometheus = services["prometheus"]
    assert (DEPLOY / prometheus["build"]["context"] / "Dockerfile").is_file()
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert ("${OPTD_PROMETHEUS_TARGETS:-./prometheus/targets}:/etc/prometheus/targets:ro"
            in prometheus["volumes"])
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "optd"]
    assert jobs[0]["file_sd_configs"] == [{"files": ["targets/*.yml"]}]
    targets = [t for group in yaml.safe_load((PROM_DIR / "targets" / "optd.yml").read_text())
               for t in group["targets"]]
    assert targets == ["localhost:9464"]
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                host = volume.split(":", 1)[0]
                assert (DEPLOY / host).exists(), volume
