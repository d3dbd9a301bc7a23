"""The monitoring kit (k8s/monitoring) as data for tests: its rules, its dashboard, and the
metric names both use, checked against what an agent's /metrics exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "k8s" / "monitoring"
_METRIC = re.compile(r"\bpgwarden_[a-z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def rule_spec() -> dict[str, Any]:
    """The `spec` of the PrometheusRule: a Prometheus rule file (`groups:`)."""
    document: Any = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    spec: dict[str, Any] = document["spec"]
    return spec


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_spec()["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return loaded


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    queries += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return queries


def metrics_used() -> set[str]:
    """Every pgwarden_* series name the rules and the dashboard query."""
    texts = [rule["expr"] for rule in rules()] + dashboard_queries()
    return {name for text in texts for name in _METRIC.findall(text)}


def exposed_families(exposition: str) -> dict[str, str]:
    """Metric family -> type, from the `# TYPE` lines of a /metrics answer (families with no
    sample yet, such as a labelled counter never incremented, are listed too)."""
    families: dict[str, str] = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = kind.strip()
    return families


def missing_metrics(used: set[str], families: dict[str, str]) -> list[str]:
    """The names in `used` that no exposed family provides: a gauge or a counter by its
    name (the classic text format names a counter's family with its `_total`), a histogram
    by its `_bucket`, `_count` and `_sum` series."""
    missing = []
    for name in sorted(used):
        if families.get(name) in ("gauge", "counter", "untyped"):
            continue
        if any(
            name == family + suffix
            for family, kind in families.items()
            if kind == "histogram"
            for suffix in _HISTOGRAM_SUFFIXES
        ):
            continue
        missing.append(name)
    return missing
