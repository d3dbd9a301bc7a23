"""The monitoring kit in k8s/monitoring: the PrometheusRule's rules pass `promtool check
rules` and the unit cases of rules-test.yaml (`promtool test rules`: each alert fires when
it should and stays quiet on its near miss), every alert carries a runbook line, the
PodMonitor scrapes the port the StatefulSet names, and the dashboard's queries are sound.
That every metric used is exposed by a live agent is checked in tests/e2e/test_k8s_cluster.py
(and here against the agent's own registry, which a live agent serves)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.metrics import Metrics
from tests.support import manifests as m
from tests.support import monitoring as mon

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as the rule file rules-test.yaml names, next to it."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(mon.rule_spec(), sort_keys=False))
    shutil.copy(mon.MONITORING / "rules-test.yaml", tmp_path / "rules-test.yaml")
    return tmp_path


@needs_promtool
def test_the_rules_pass_promtool_check_rules(rules_dir: Path) -> None:
    result = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_alert_fires_on_its_unit_case_and_not_on_its_near_miss(rules_dir: Path) -> None:
    result = promtool("test", "rules", "rules-test.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_case_a_severity_and_a_runbook_line() -> None:
    cases = yaml.safe_load((mon.MONITORING / "rules-test.yaml").read_text())
    tested = {t["alertname"] for test in cases["tests"] for t in test["alert_rule_test"]}
    for rule in mon.rules():
        assert rule["alert"] in tested, f"{rule['alert']} has no unit case"
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        runbook = rule["annotations"]["runbook"]
        assert runbook.strip() and "\n" not in runbook.strip()


def test_the_alerts_cover_the_failures_an_operator_must_hear_about() -> None:
    alerts = {rule["alert"] for rule in mon.rules()}
    assert {
        "PgwardenNoLeader",
        "PgwardenSeveralPrimaries",
        "PgwardenReplicationLag",
        "PgwardenReplicaNotStreaming",
        "PgwardenFenced",
        "PgwardenFailsafeActive",
        "PgwardenDcsUnreachable",
        "PgwardenDcsErrors",
        "PgwardenCallbacksFailing",
        "PgwardenPendingRestart",
    } <= alerts


def test_every_metric_the_kit_uses_is_one_the_agent_registers() -> None:
    body, _ = Metrics().render()
    families = mon.exposed_families(body.decode())
    assert mon.missing_metrics(mon.metrics_used(), families) == []


def test_a_metric_the_agent_does_not_expose_is_caught() -> None:
    body, _ = Metrics().render()
    families = mon.exposed_families(body.decode())
    used = {"pgwarden_lease_held", "pgwarden_no_such_metric", "pgwarden_timeline_bucket"}
    assert mon.missing_metrics(used, families) == [
        "pgwarden_no_such_metric",
        "pgwarden_timeline_bucket",
    ]


@pytest.mark.skipif(m.kubectl() is None, reason="kubectl is not installed")
def test_the_pod_monitor_scrapes_the_api_port_of_the_statefulset_pods() -> None:
    kit = yaml.safe_load_all(
        subprocess.run(
            [m.kubectl() or "kubectl", "kustomize", str(mon.MONITORING)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    by_kind = {obj["kind"]: obj for obj in kit}
    assert set(by_kind) == {"PodMonitor", "PrometheusRule", "ConfigMap"}
    assert by_kind["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    base = m.render("base")
    template = m.find(base, "StatefulSet")["spec"]["template"]
    selector = by_kind["PodMonitor"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    (endpoint,) = by_kind["PodMonitor"]["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for p in m.container(base)["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_the_dashboard_queries_name_a_data_source_variable_and_the_members() -> None:
    board = mon.dashboard()
    assert board["uid"] == "pgwarden"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
