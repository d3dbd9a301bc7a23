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


_LISTEN = (
    "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 7000));"
    " print('ready', flush=True); s.settimeout(2.0); n=0\n"
    "try:\n    while True: s.recv(64); n+=1\nexcept OSError: pass\nprint(n)"
)
_SEND = (
    "import socket,sys,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(200):\n"
    "    try: s.sendto(b'x', (sys.argv[1], 7000))\n"
    "    except OSError: pass  # EPERM: dropped by an OUTPUT rule\n"
    "    time.sleep(0.002)"
)


def _datagrams(net: netns.Network, src: str, dst: str) -> int:
    """How many of 200 UDP datagrams sent from `src` to `dst` arrive."""
    listener = subprocess.Popen(
        net.hosts[dst].exec_args("python3", "-c", _LISTEN), stdout=subprocess.PIPE, text=True
    )
    try:
        # Sent only once the listener is bound (ci46: a fixed 0.2 s was too short for a
        # loaded machine, and the first 26 datagrams found no socket).
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        netns.run(*net.hosts[src].exec_args("python3", "-c", _SEND, net.hosts[dst].address))
        out, _ = listener.communicate(timeout=15)
    finally:
        listener.kill()
    return int(out.strip() or 0)


def test_a_one_way_drop_cuts_one_direction_and_a_random_drop_a_share_of_packets(
    chaos_support: None,
) -> None:
    net = netns.Network(keys=("n1", "n2"))
    try:
        net.create()
        net.drop_one_way("n1", ["n2"], outgoing=True)
        assert _datagrams(net, "n1", "n2") == 0
        assert _datagrams(net, "n2", "n1") == 200
        net.heal()
        net.drop_one_way("n1", ["n2"], outgoing=False)
        assert _datagrams(net, "n2", "n1") == 0
        net.heal()
        net.drop_randomly("n1", ["n2"], 0.4)
        arrived = _datagrams(net, "n2", "n1")
        assert 80 <= arrived <= 160, arrived  # 120 expected; binomial sd ~7
    finally:
        net.destroy()


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
