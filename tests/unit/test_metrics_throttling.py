"""The Kubernetes DCS's throttling totals on /metrics (issue 15): 429s it got and leader-lock
renewals it sent again before their Retry-After was over (throttle.py `RenewalSends`), read
from the backend at each scrape; wired by the agent for the Kubernetes DCS only."""

from __future__ import annotations

from agent.app import build_dcs, watch_dcs_throttling
from agent.clock import FakeClock
from agent.config import load_settings
from agent.dcs.kubernetes import KubernetesDcs
from agent.metrics import Metrics

ENV = {
    "PGWARDEN_NAME": "pg-0",
    "PGWARDEN_CLUSTER": "demo",
    "PGWARDEN_RUN_DIR": "/run/x",
    "PGWARDEN_POSTGRESQL__DATA_DIR": "/data",
    "PGWARDEN_API__TOKEN": "t0ken",
}


def value(metrics: Metrics, name: str) -> float | None:
    for line in metrics.render()[0].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_the_throttling_totals_are_read_at_each_scrape() -> None:
    totals = [0, 0]
    metrics = Metrics()
    metrics.read_dcs_throttling(lambda: (totals[0], totals[1]))
    assert value(metrics, "pgwarden_dcs_throttled_total") == 0
    totals[:] = [7, 3]
    assert value(metrics, "pgwarden_dcs_throttled_total") == 7
    assert value(metrics, "pgwarden_dcs_renewals_sent_early_total") == 3


async def test_the_agent_exports_the_kubernetes_backends_totals_and_no_others() -> None:
    env = ENV | {
        "PGWARDEN_DCS__KIND": "kubernetes",
        "PGWARDEN_DCS__KUBERNETES__NAMESPACE": "pgwarden",
    }
    settings, clock = load_settings(None, env), FakeClock()
    dcs = build_dcs(settings, clock)
    assert isinstance(dcs, KubernetesDcs)
    metrics = Metrics()
    watch_dcs_throttling(settings, dcs, metrics)
    dcs.throttle.refused(1.0)  # a 429
    send_by = clock.monotonic() + 1.0  # a renewal in its last stretch: sent again early
    assert dcs.throttle.renewals.delay_s(1.0, send_by) is not None
    assert value(metrics, "pgwarden_dcs_throttled_total") == 1
    assert value(metrics, "pgwarden_dcs_renewals_sent_early_total") == 1
    await dcs.close()

    etcd = load_settings(
        None,
        ENV | {"PGWARDEN_DCS__KIND": "etcd", "PGWARDEN_DCS__ETCD__ENDPOINTS": "http://127.0.0.1:1"},
    )
    other, etcd_dcs = Metrics(), build_dcs(etcd, clock)
    watch_dcs_throttling(etcd, etcd_dcs, other)
    assert value(other, "pgwarden_dcs_throttled_total") is None
    await etcd_dcs.close()
