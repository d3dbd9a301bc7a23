"""The namespaces of a run: they cut what they should and leave nothing behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.chaos import netns

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(60)]


def _namespaces() -> set[str]:
    return set(os.listdir(netns.NETNS_DIR)) if os.path.isdir(netns.NETNS_DIR) else set()


def _ping(net: netns.Network, src: str, dst: str) -> bool:
    host = net.hosts[src]
    done = netns.run(
        *host.exec_args("ping", "-c1", "-W1", net.hosts[dst].address), check=False, timeout=5
    )
    return done.returncode == 0


def test_a_partition_cuts_both_directions_until_healed_and_destroy_leaves_nothing(
    chaos_support: None,
) -> None:
    net = netns.Network(keys=("n1", "n2", "c"))
    try:
        net.create()
        assert _ping(net, "c", "n1") and _ping(net, "n1", "n2")
        net.drop_between("n1", ["n2"])
        assert not _ping(net, "n1", "n2") and not _ping(net, "n2", "n1")
        assert _ping(net, "c", "n1"), "a pair cut must not cut anyone else"
        net.heal()
        assert _ping(net, "n2", "n1")
        # The subnet exists only inside the run's namespaces, never in the host's own.
        assert netns.SUBNET not in netns.run("ip", "-4", "addr").stdout
    finally:
        names = {h.netns for h in net.hosts.values()} | {net.bridge_ns}
        net.destroy()
    assert not names & _namespaces()


def test_leftovers_of_a_crashed_run_are_removed_and_a_live_run_is_left_alone(
    chaos_support: None,
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    crashed = f"{netns.PREFIX}{gone.pid}-dead"
    live = f"{netns.PREFIX}{os.getppid()}-live"  # a live process: someone else's run
    for name in (crashed, live):
        netns.run("ip", "netns", "add", name)
    try:
        removed = netns.cleanup_leftovers()
        assert crashed in removed and crashed not in _namespaces()
        assert live in _namespaces()
    finally:
        for name in (crashed, live):
            netns.run("ip", "netns", "del", name, check=False)
