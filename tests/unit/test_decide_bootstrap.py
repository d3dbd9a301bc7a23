"""A bootstrap that did not complete (agent/decide/__init__.py): its server listens on its
Unix socket only, or its data directory holds the incomplete-bootstrap marker (the server is
down: the whole pod died), and the cluster is not recorded as its system. It is discarded (stopped,
its data directory emptied), never recorded as the cluster; a server that is open, or whose
system the `initialize` record names, is kept."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.actions import ClearInitialize, ReleaseLeader, StartPostgres, StopMode, StopPostgres
from agent.decide import Memory, decide
from agent.model import ControlData, LocalState
from tests.unit.test_decide import EMPTY, LEASED, ME_PRIMARY, NOW, PRIMARY, A, B, C, obs, view

DISCARD = StopPostgres(mode=StopMode.IMMEDIATE, clear_data=True)
SOCKET_ONLY = replace(PRIMARY, socket_only=True)
# Not running, the data directory marked as an incomplete bootstrap; the system id from
# pg_controldata.
MARKED_DOWN = LocalState(
    data_dir_initialized=True,
    running=False,
    bootstrap_incomplete=True,
    control=ControlData(
        system_id="42",
        cluster_state="in production",
        timeline=1,
        checkpoint_lsn=1000,
        min_recovery_end_lsn=None,
    ),
)


@pytest.mark.parametrize(
    ("initialize", "local", "memory", "discarded"),
    [
        ("", SOCKET_ONLY, Memory(), True),  # claimed, never recorded: its agent restarted
        ("", SOCKET_ONLY, LEASED, True),  # the open failed: the bootstrap failed
        (None, SOCKET_ONLY, Memory(), True),  # the claim was withdrawn meanwhile
        ("77", SOCKET_ONLY, Memory(), True),  # another member made the cluster meanwhile
        ("42", SOCKET_ONLY, LEASED, False),  # recorded as this system: complete
        ("", PRIMARY, LEASED, False),  # open: the cluster is recorded (SetInitialize)
        ("", replace(SOCKET_ONLY, running=False), Memory(), False),  # nothing says so
        ("", MARKED_DOWN, Memory(), True),  # the whole pod died during post_bootstrap
        (None, MARKED_DOWN, Memory(), True),
        ("42", MARKED_DOWN, Memory(), False),  # recorded as this system: complete
        ("", replace(PRIMARY, bootstrap_incomplete=True), Memory(), True),
        # Recorded, and the probe's SQL failed (no system id): nothing says it is another
        # system, so the recorded cluster's only data is kept.
        ("42", replace(SOCKET_ONLY, system_id=None), LEASED, False),
        ("42", replace(PRIMARY, system_id=None, bootstrap_incomplete=True), LEASED, False),
        ("", replace(SOCKET_ONLY, system_id=None), LEASED, True),  # not recorded: discarded
    ],
)
def test_an_unfinished_bootstrap_is_discarded_and_nothing_else_is(
    initialize: str | None, local: LocalState, memory: Memory, discarded: bool
) -> None:
    cluster = replace(view("a", ME_PRIMARY), initialize=initialize, initialize_version="3")
    decision, _ = decide(obs(cluster, local), memory, A)
    assert (DISCARD in decision.actions) is discarded, decision
    if discarded:
        assert decision.actions == (DISCARD,)


@pytest.mark.parametrize(
    "local",
    [
        SOCKET_ONLY,  # its agent died between the record and the opening
        replace(PRIMARY, bootstrap_incomplete=True),  # opened, the marker left (any start)
    ],
)
def test_a_recorded_bootstrap_not_yet_opened_is_opened_by_its_leader(local: LocalState) -> None:
    # The bootstrap records the cluster before it opens the server (crash points, issue 16):
    # an agent that died in between leaves a recorded server on its socket; the leader
    # starts it as a primary, which opens it (`open_to_clients`).
    cluster = replace(view("a", ME_PRIMARY), initialize="42", initialize_version="3")
    decision, _ = decide(obs(cluster, replace(local, system_id="42")), LEASED, A)
    assert StartPostgres(upstream=None, as_primary=True) in decision.actions, decision
    assert DISCARD not in decision.actions


@pytest.mark.parametrize("initialize", ["42", None])
def test_a_leader_with_no_data_releases_the_lease(initialize: str | None) -> None:
    # "42": its data directory was emptied under it. None: a withdrawn claim whose release
    # failed (the claim cleared, the key kept). Holding the lease (which, on etcd, its member
    # record keeps alive) would keep every member waiting to clone from a leader with none.
    cluster = replace(view("a", ME_PRIMARY), initialize=initialize, initialize_version="3")
    empty = LocalState(data_dir_initialized=False, running=False)
    decision, _ = decide(obs(cluster, empty), LEASED, A)
    assert ReleaseLeader() in decision.actions, decision


def test_a_leader_whose_data_directory_holds_another_system_releases_the_lease() -> None:
    # It refuses to join (reinitialize to clone): as leader it must also let the lease go,
    # or every member waits on a leader that will never run the cluster's system.
    cluster = replace(view("a", ME_PRIMARY), initialize="77", initialize_version="3")
    other = replace(MARKED_DOWN, bootstrap_incomplete=False)  # down, system 42
    decision, memory = decide(obs(cluster, other), LEASED, A)
    assert memory.refused is not None and ReleaseLeader() in decision.actions, decision
    decision, _ = decide(obs(cluster, other), memory, A)  # and on every later cycle
    assert ReleaseLeader() in decision.actions, decision


def test_a_claim_with_no_leader_yet_is_withdrawn_only_after_a_ttl() -> None:
    """Another member claimed the empty cluster and has not taken the lease yet (its claim and
    its AcquireLeader are two writes; a view read between them). Withdrawn at once, as it was,
    the claimant's bootstrap failed at its record step and members withdrew each other's
    fresh claims round after round (a loop of 3-member bootstraps: 12 failed bootstraps before
    one completed). A claimant that died holds no lease after a ttl: withdrawn then."""
    claimed = replace(view(None, B, C), initialize="", initialize_version="7")
    ttl = A.timing.ttl_s
    decision, memory = decide(obs(claimed, EMPTY), Memory(), A)
    assert decision.actions == ()
    assert "no leader yet" in decision.reason
    later = replace(obs(claimed, EMPTY), now=NOW + ttl - 0.1)
    decision, memory = decide(later, memory, A)
    assert decision.actions == ()
    # The claimant took the lease meanwhile: nothing to withdraw, and the wait starts over.
    led = replace(claimed, leader=view("b", B).leader)
    _, memory = decide(replace(obs(led, EMPTY), now=NOW + ttl), memory, A)
    assert memory.unled_claim is None
    decision, memory = decide(replace(obs(claimed, EMPTY), now=NOW + ttl + 0.1), memory, A)
    assert decision.actions == ()
    # A ttl without a leader: the claimant is gone.
    expired = replace(obs(claimed, EMPTY), now=NOW + 2 * ttl + 0.1)
    decision, memory = decide(expired, memory, A)
    assert decision.actions == (ClearInitialize(version="7"),)
    # Another claim (another version) is waited for again.
    again = replace(claimed, initialize_version="8")
    decision, _ = decide(replace(obs(again, EMPTY), now=NOW + 2 * ttl + 0.2), memory, A)
    assert decision.actions == ()


def test_our_own_failed_claim_is_withdrawn_at_once() -> None:
    claimed = replace(view("a", B, C), initialize="", initialize_version="7")
    decision, _ = decide(obs(claimed, EMPTY), LEASED, A)
    assert decision.actions == (ClearInitialize(version="7"), ReleaseLeader())
