"""deploy/: the alert rules pass promtool's checks and unit tests, the dashboard's queries parse,
and both name only metrics that exist (the service's own, or the deliverer's)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from starlette.testclient import TestClient

from app.ops import metrics

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "feedback-tokens.json"
# What `feedback-tokens deliver` exports on its --metrics-port (README, Observability).
DELIVERY_METRICS = {
    "feedback_delivery_delivered_total",
    "feedback_delivery_retried_total",
    "feedback_delivery_dead_lettered_total",
    "feedback_delivery_lag",
    "feedback_delivery_pending",
}
_NAME = re.compile(r"\b((?:feedback|http)_[a-z_]+)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        where = "in CI (CI is set), where it must be present" if os.environ.get("CI") else "here"
        pytest.fail(f"promtool is not installed {where}: it comes with Debian's `prometheus` package, "
                    "which .ci/run installs (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_the_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def alerts() -> list[dict[str, Any]]:
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    import yaml

    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alerts()}
    assert names >= {"FeedbackTokensErrorRatio", "FeedbackTokensSubmitLatencyP99", "FeedbackTokensRedisErrors",
                     "FeedbackTokensKeysStale", "FeedbackTokensDeliveryLag"}
    assert fired == names
    assert quiet >= names - {"FeedbackTokensNoKeys"}  # that one: a node with keys is in the same test


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_the_dashboard_queries_parse(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$__rate_interval", "5m").replace("$job", ".*")
         .replace("$delivery_job", ".*")}
        for i, q in enumerate(queries)
    ]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def exported(client: TestClient) -> set[str]:
    """The names the service's /metrics declares (``# TYPE`` lines), histograms with their series."""
    metrics.observe_redis("submit", 0.001)  # the store's hooks: their families exist either way
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", client.get("/metrics").text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_deploy_names_only_metrics_that_exist(make_app: Callable[..., TestClient]) -> None:
    # A node with a keys directory exports the keyring's age; a JWKS node (test_ops_metrics) the JWKS's.
    have = exported(make_app()) | DELIVERY_METRICS | {"feedback_jwks_age_seconds"}
    used = {n for q in [*dashboard_queries(), *(r["expr"] for r in alerts())] for n in _NAME.findall(q)}
    assert used - have == set()
    # And the dashboard shows every kind the issue asks for.
    for name in ("feedback_submissions_total", "http_request_duration_seconds_bucket",
                 "feedback_redis_duration_seconds_bucket", "feedback_redis_errors_total",
                 "feedback_keyring_age_seconds", "feedback_jwks_age_seconds", "feedback_delivery_lag"):
        assert any(name in q for q in dashboard_queries()), name
