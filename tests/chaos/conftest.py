"""Fixtures of the chaos suite: support probe and leftover cleanup, a cluster per module (the
test thread runs in the client namespace for the module's duration), the report."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import netns, report
from tests.chaos.cluster import QUICK_TIMING, ChaosCluster
from tests.chaos.runner import Runner, ScenarioResult
from tests.chaos.stuck_peer import STALL_S
from tests.support.pgversions import PgInstall, Tier, params, wanted_majors

CONVERGE_BOUND_S = 45.0  # after healing, one primary and all others streaming within this


@pytest.fixture(scope="session")
def chaos_support() -> None:
    """Skip the suite with the reason when namespaces cannot be used; remove leftovers of
    crashed runs (namespaces of pytest processes that no longer exist) once per session."""
    why = netns.probe_support()
    if why is not None:
        pytest.skip(why)
    netns.cleanup_leftovers()


@pytest.fixture(scope="module", params=params(Tier.CLUSTER))
def pg_install(request: pytest.FixtureRequest) -> PgInstall:
    """The PostgreSQL version of the module's cluster: one module pass per version that
    PGWARDEN_TEST_PG selects for the cluster tier (tests/support/pgversions.py)."""
    install: PgInstall = request.param
    return install


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[list[ScenarioResult]]:
    """Every scenario result of the session; written as a report when CHAOS_REPORT names a
    path stem (`make chaos` sets docs/chaos-report)."""
    results: list[ScenarioResult] = []
    yield results
    stem = os.environ.get("CHAOS_REPORT")
    if stem and results:
        duration = os.environ.get("CHAOS_DURATION")
        report.write(
            results,
            stem=Path(stem),
            profile="quick + random mix"
            if duration
            else (
                "gray"
                if os.environ.get("CHAOS_GRAY")
                else ("hunt" if os.environ.get("CHAOS_HUNT") else "quick")
            ),
            settings={
                **{
                    k: v
                    for k, v in QUICK_TIMING.items()
                    if k in ("ttl_s", "loop_wait_s", "retry_timeout_s", "fence_margin_s")
                },
                "postgresql": ", ".join(str(m) for m in wanted_majors(Tier.CLUSTER)),
                "replication": "asynchronous; [sync]: synchronous_mode on",
                "dcs": "3 etcd members; [k8s]: the test Kubernetes API server, lock endpoints",
                "failsafe": "off; [failsafe]: failsafe_mode on",
                "converge_bound_s": CONVERGE_BOUND_S,
                "mix_duration_s": duration or 0,
            },
        )


@contextlib.contextmanager
def _running(
    results: list[ScenarioResult],
    *,
    pg: PgInstall,
    sync: bool = False,
    sync_mode: str = "on",
    dcs: str = "etcd",
    failsafe: bool = False,
    suffix: str = "",
    fuse_storage: bool = False,
    delay_proxies: bool = False,
    stepped_clocks: bool = False,
    timing: dict[str, float] | None = None,
    ha_extra: dict[str, object] | None = None,
    spare_hosts: int = 0,
) -> Iterator[Runner]:
    """A started cluster on PostgreSQL `pg`; the calling thread is in its client namespace
    until the exit. Scenario names get " [pgN]" when more than one version runs."""
    if len(wanted_majors(Tier.CLUSTER)) > 1:
        suffix += f" [pg{pg.major}]"
    cluster = ChaosCluster(
        pg_bin=pg.bin_dir,
        synchronous_mode=sync_mode if sync else "off",
        dcs=dcs,
        failsafe_mode=failsafe,
        fuse_storage=fuse_storage,
        delay_proxies=delay_proxies,
        stepped_clocks=stepped_clocks,
        timing=dict(timing or QUICK_TIMING),
        ha_extra=dict(ha_extra or {}),
        spare_hosts=spare_hosts,
    )
    keep = False
    try:
        cluster.start()
        with netns.entered(cluster.client.netns):
            chaos = Runner(
                cluster=cluster, converge_bound_s=CONVERGE_BOUND_S, sync=sync, suffix=suffix
            )
            try:
                yield chaos
            finally:
                results.extend(chaos.results)
                keep = any(r.split_brain or r.diverged for r in chaos.results)
    finally:
        cluster.stop()
        if not (keep or os.environ.get("CHAOS_KEEP")):
            cluster.remove_files()


@pytest.fixture(scope="module")
def runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """Asynchronous replication; the test thread is in the client namespace for the module.
    `ha.wal_receiver_stall_s` is short, as the timings are (stuck_peer.py `STALL_S`)."""
    with _running(
        chaos_results, pg=pg_install, sync=False, ha_extra={"wal_receiver_stall_s": STALL_S}
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def sync_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """synchronous_mode: on; the test thread is in the client namespace for the module."""
    with _running(chaos_results, pg=pg_install, sync=True) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def spare_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """Asynchronous replication and one spare host (`s1`, no member) where a scenario starts
    what it needs (tests/chaos/test_unlisted_faults.py)."""
    with _running(chaos_results, pg=pg_install, spare_hosts=1) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def spare_sync_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """synchronous_mode: on and one spare host (`s1`); names get " [sync]"."""
    with _running(chaos_results, pg=pg_install, sync=True, spare_hosts=1) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def spare_k8s_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """The Kubernetes DCS (lock endpoints), asynchronous, one spare host (`s1`); names get
    " [k8s]"."""
    with _running(
        chaos_results, pg=pg_install, dcs="kubernetes", spare_hosts=1, suffix=" [k8s]"
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def k8s_stepped_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """The Kubernetes DCS (lock endpoints) with steppable agent wall clocks
    (tests/chaos/stepped_clock.py); asynchronous; names get " [k8s]"."""
    with _running(
        chaos_results, pg=pg_install, dcs="kubernetes", stepped_clocks=True, suffix=" [k8s]"
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def k8s_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """The DCS is the test Kubernetes API server (lock kind endpoints) on its own host;
    asynchronous replication; scenario names get " [k8s]"."""
    with _running(chaos_results, pg=pg_install, dcs="kubernetes", suffix=" [k8s]") as chaos:
        yield chaos


@pytest.fixture(scope="module")
def failsafe_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """etcd, asynchronous replication, `ha.failsafe_mode: true` (CHAOS_FAILSAFE=off builds
    the same cluster without it, to see the failsafe assertions fail); names get
    " [failsafe]" (" [failsafe off]" when off)."""
    on = os.environ.get("CHAOS_FAILSAFE", "on") != "off"
    with _running(
        chaos_results, pg=pg_install, failsafe=on, suffix=" [failsafe]" if on else " [failsafe off]"
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def failsafe_k8s_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """The Kubernetes DCS with `ha.failsafe_mode: true` (CHAOS_FAILSAFE=off: without);
    names get " [k8s, failsafe]" (" [k8s, failsafe off]")."""
    on = os.environ.get("CHAOS_FAILSAFE", "on") != "off"
    with _running(
        chaos_results,
        pg=pg_install,
        dcs="kubernetes",
        failsafe=on,
        suffix=" [k8s, failsafe]" if on else " [k8s, failsafe off]",
    ) as chaos:
        yield chaos


def _need_fuse() -> None:
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("FUSE is not usable here (fusermount3 from Debian fuse3, /dev/fuse)")
    if importlib.util.find_spec("mfusepy") is None:
        pytest.skip("mfusepy is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def storage_sync_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """synchronous_mode: on, every member's data directory on a FUSE store whose writes can
    be hung (tests/chaos/fuse_fs.py); names get " [sync]"."""
    _need_fuse()
    with _running(chaos_results, pg=pg_install, sync=True, fuse_storage=True) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def storage_quorum_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """synchronous_mode: quorum (ANY k of the listed standbys), data directories on FUSE
    stores; names get " [sync] [quorum]"."""
    _need_fuse()
    with _running(
        chaos_results,
        pg=pg_install,
        sync=True,
        sync_mode="quorum",
        suffix=" [quorum]",
        fuse_storage=True,
    ) as chaos:
        yield chaos


# The slow-network clusters' timings: a request may take 0.9 x retry_timeout_s = 6.3 s, more
# than the 5 s round trip of the slowest scenario plus etcd's own time (the timing rule holds:
# 2 + 2 x 7 + 2 <= 20). CHAOS_SLOW_TIMING=quick runs them at the quick timings instead (a
# request may take 1.35 s), where renewals cannot succeed through the latency: the
# no-demotion assertions must then fail, which shows they can.
SLOW_TIMING: dict[str, float] = {
    "ttl_s": 20.0,
    "loop_wait_s": 2.0,
    "retry_timeout_s": 7.0,
    "fence_margin_s": 2.0,
    "peer_check_timeout_s": 0.5,
}


def slow_timing() -> dict[str, float]:
    return dict(QUICK_TIMING) if os.environ.get("CHAOS_SLOW_TIMING") == "quick" else SLOW_TIMING


@pytest.fixture(scope="module")
def slow_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """Asynchronous replication, every member's outgoing connections through a delaying proxy
    (tests/chaos/delay_proxy.py), SLOW_TIMING; names get " [ttl 20]"."""
    with _running(
        chaos_results, pg=pg_install, delay_proxies=True, timing=slow_timing(), suffix=" [ttl 20]"
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def slow_failsafe_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """The same with `ha.failsafe_mode: true`; names get " [ttl 20, failsafe]"."""
    with _running(
        chaos_results,
        pg=pg_install,
        delay_proxies=True,
        failsafe=True,
        timing=slow_timing(),
        suffix=" [ttl 20, failsafe]",
    ) as chaos:
        yield chaos


# maximum_lag_on_failover_bytes of the async-under-load clusters: the agent's default (1 MiB)
# and one large enough never to refuse (the race then decides on position alone).
LAG_LIMITS = {"1MiB": 1024 * 1024, "1GiB": 1024 * 1024 * 1024}


@pytest.fixture(scope="module", params=sorted(LAG_LIMITS))
def load_runner(
    request: pytest.FixtureRequest,
    chaos_support: None,
    chaos_results: list[ScenarioResult],
    pg_install: PgInstall,
) -> Iterator[Runner]:
    """Asynchronous replication, quick timings, maximum_lag_on_failover_bytes from
    LAG_LIMITS, delaying proxies (no delay unless a scenario sets one); names get
    " [max lag <limit>]"."""
    limit: str = request.param
    with _running(
        chaos_results,
        pg=pg_install,
        delay_proxies=True,
        ha_extra={"maximum_lag_on_failover_bytes": LAG_LIMITS[limit]},
        suffix=f" [max lag {limit}]",
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def storage_runner(
    chaos_support: None, chaos_results: list[ScenarioResult], pg_install: PgInstall
) -> Iterator[Runner]:
    """Asynchronous replication, every member's data directory on a FUSE store that can fail
    writes with ENOSPC (tests/chaos/fuse_fs.py)."""
    _need_fuse()
    with _running(chaos_results, pg=pg_install, fuse_storage=True) as chaos:
        yield chaos


# The random mix's replication modes (CHAOS_MIX_MODES, comma-separated: async, sync); the mix's
# CHAOS_DURATION is shared equally between them (tests/chaos/test_long.py).
MIX_MODES = [
    m.strip() for m in os.environ.get("CHAOS_MIX_MODES", "async,sync").split(",") if m.strip()
]


@pytest.fixture(scope="module", params=MIX_MODES)
def mix_runner(
    request: pytest.FixtureRequest,
    chaos_support: None,
    chaos_results: list[ScenarioResult],
    pg_install: PgInstall,
) -> Iterator[Runner]:
    """The random mix's cluster, on which every nemesis of tests/chaos/mix.py can be drawn:
    FUSE data directories, delaying proxies, steppable agent wall clocks; asynchronous (the
    agent's default maximum_lag_on_failover_bytes) or `synchronous_mode: on` (" [sync]");
    `ha.wal_receiver_stall_s` as in the quick cluster, so that the watchdog frees the stuck
    receiver of replica-receiver-stuck and runs under every other fault of the mix."""
    mode: str = request.param
    if mode not in ("async", "sync"):
        raise ValueError(f"CHAOS_MIX_MODES: {mode!r} is neither async nor sync")
    _need_fuse()
    with _running(
        chaos_results,
        pg=pg_install,
        sync=mode == "sync",
        fuse_storage=True,
        delay_proxies=True,
        stepped_clocks=True,
        ha_extra={"wal_receiver_stall_s": STALL_S},
    ) as chaos:
        yield chaos
