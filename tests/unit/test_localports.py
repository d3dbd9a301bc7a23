"""The ports local clusters and tests start servers on (agent/localports.py): outside the
ephemeral range, and never handed to two live processes (a fresh-clone CI run: a PostgreSQL
restarted on its port found it taken, "Address already in use")."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from agent import localports
from agent.localports import ephemeral_range, free_port, port_span

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from agent.localports import free_port
span = range(int(sys.argv[1]), int(sys.argv[2]))
print(" ".join(str(free_port(span=span)) for _ in range(int(sys.argv[3]))), flush=True)
sys.stdin.read()
"""


def _small_span(size: int) -> range:
    """`size` ports of the usual span at a random place (the other workers' picks are spread
    over all of it)."""
    whole = port_span()
    start = whole.start + random.randrange(len(whole) - size)
    return range(start, start + size)


def _all_of(span: range) -> set[int]:
    """Every port of `span` this process can still be handed."""
    got = set()
    with pytest.raises(RuntimeError, match="in use or reserved"):
        while True:
            got.add(free_port(span=span))
    return got


def test_the_ports_lie_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert not [p for p in ports if low <= p <= high], (low, high)
    assert all(p in port_span() for p in ports)


def test_a_port_reserved_by_another_live_process_is_never_handed_out() -> None:
    """A child takes half of a small span and holds it (bound by nothing, as between picking a
    port and starting its server); this process gets only the other half. Once the child has
    exited, its ports can be handed out again."""
    span = _small_span(16)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(span.start), str(span.stop), "8"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        theirs = {int(p) for p in child.stdout.readline().split()}
        assert len(theirs) == 8
        ours = _all_of(span)
        assert ours, "no port left for this process"
        assert not ours & theirs
    finally:
        child.communicate("", timeout=10)
    assert _all_of(span) & theirs  # released when the child exited


def test_one_process_is_never_handed_the_same_port_twice() -> None:
    span = _small_span(8)
    ports = _all_of(span)
    assert ports and ports <= set(span)
    with pytest.raises(RuntimeError, match="in use or reserved"):
        free_port(span=span)


def test_no_room_outside_the_ephemeral_range_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(localports, "ephemeral_range", lambda: (1500, 65000))
    with pytest.raises(RuntimeError, match="ip_local_port_range"):
        free_port()
