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

CONVERGE_BOUND_S = 45.0  # after healing, one primary and all others streaming within this


@pytest.fixture(scope="session")
def chaos_support() -> None:
    """Skip the suite with the reason when namespaces cannot be used; remove leftovers of
    crashed runs (namespaces of pytest processes that no longer exist) once per session."""
    why = netns.probe_support()
    if why is not None:
        pytest.skip(why)
    netns.cleanup_leftovers()


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
            profile="quick + random mix" if duration else "quick",
            settings={
                **{
                    k: v
                    for k, v in QUICK_TIMING.items()
                    if k in ("ttl_s", "loop_wait_s", "retry_timeout_s", "fence_margin_s")
                },
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
    sync: bool = False,
    dcs: str = "etcd",
    failsafe: bool = False,
    suffix: str = "",
    fuse_storage: bool = False,
) -> Iterator[Runner]:
    """A started cluster; the calling thread is in its client namespace until the exit."""
    cluster = ChaosCluster(
        synchronous_mode="on" if sync else "off",
        dcs=dcs,
        failsafe_mode=failsafe,
        fuse_storage=fuse_storage,
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
def runner(chaos_support: None, chaos_results: list[ScenarioResult]) -> Iterator[Runner]:
    """Asynchronous replication; the test thread is in the client namespace for the module."""
    with _running(chaos_results, sync=False) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def sync_runner(chaos_support: None, chaos_results: list[ScenarioResult]) -> Iterator[Runner]:
    """synchronous_mode: on; the test thread is in the client namespace for the module."""
    with _running(chaos_results, sync=True) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def k8s_runner(chaos_support: None, chaos_results: list[ScenarioResult]) -> Iterator[Runner]:
    """The DCS is the test Kubernetes API server (lock kind endpoints) on its own host;
    asynchronous replication; scenario names get " [k8s]"."""
    with _running(chaos_results, dcs="kubernetes", suffix=" [k8s]") as chaos:
        yield chaos


@pytest.fixture(scope="module")
def failsafe_runner(chaos_support: None, chaos_results: list[ScenarioResult]) -> Iterator[Runner]:
    """etcd, asynchronous replication, `ha.failsafe_mode: true` (CHAOS_FAILSAFE=off builds
    the same cluster without it, to see the failsafe assertions fail); names get
    " [failsafe]" (" [failsafe off]" when off)."""
    on = os.environ.get("CHAOS_FAILSAFE", "on") != "off"
    with _running(
        chaos_results, failsafe=on, suffix=" [failsafe]" if on else " [failsafe off]"
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def failsafe_k8s_runner(
    chaos_support: None, chaos_results: list[ScenarioResult]
) -> Iterator[Runner]:
    """The Kubernetes DCS with `ha.failsafe_mode: true` (CHAOS_FAILSAFE=off: without);
    names get " [k8s, failsafe]" (" [k8s, failsafe off]")."""
    on = os.environ.get("CHAOS_FAILSAFE", "on") != "off"
    with _running(
        chaos_results,
        dcs="kubernetes",
        failsafe=on,
        suffix=" [k8s, failsafe]" if on else " [k8s, failsafe off]",
    ) as chaos:
        yield chaos


@pytest.fixture(scope="module")
def storage_sync_runner(
    chaos_support: None, chaos_results: list[ScenarioResult]
) -> Iterator[Runner]:
    """synchronous_mode: on, every member's data directory on a FUSE store whose writes can
    be hung (tests/chaos/fuse_fs.py); names get " [sync]"."""
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("FUSE is not usable here (fusermount3 from Debian fuse3, /dev/fuse)")
    if importlib.util.find_spec("mfusepy") is None:
        pytest.skip("mfusepy is not installed (pip install -e '.[test]')")
    with _running(chaos_results, sync=True, fuse_storage=True) as chaos:
        yield chaos
