"""What a read of an unchanged view costs (agent/dcs/keys.py `ViewCache`, the remembered
`member_signature`, agent/dcs/kubernetes/objects.py `hash_version`): an idle agent reads
the same records every cycle, and parsing or hashing them again was most of such a read."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from agent.dcs import keys
from agent.dcs.kubernetes.objects import hash_version
from agent.model import MemberName, SyncRecord
from tests.contract.dcs_contract import member


def items(wal_lsn: int = 0, leader_version: str = "7") -> list[tuple[str, bytes, str]]:
    record = member("a", wal_lsn=wal_lsn).to_json().encode()
    return [("members/a", record, hash_version(record.decode())), ("leader", b"a", leader_version)]


def test_the_same_records_give_the_same_view_without_parsing_again() -> None:
    cache = keys.ViewCache(structlog.get_logger("test"))
    first = cache.view(items())
    assert cache.view(items()) is first  # equal records read again: no parse
    moved = cache.view(items(wal_lsn=16))
    assert moved is not first
    seen = moved.member("a")
    assert seen is not None and seen.wal_lsn == 16
    assert moved.leader is not None and moved.leader.name == "a"


def test_a_renewal_alone_gives_the_new_leader_version_without_parsing_the_rest() -> None:
    """The lock's resourceVersion, the leader record's version, moves every cycle."""
    cache = keys.ViewCache(structlog.get_logger("test"))
    first = cache.view(items())
    renewed = cache.view(items(leader_version="8"))
    assert renewed.leader is not None and renewed.leader.version == "8"
    assert renewed.members is first.members  # not parsed again
    assert cache.view(items(leader_version="8")) is renewed
    assert cache.view([("leader", b"a", "9")]).members == ()


def test_a_new_holder_or_a_record_rewritten_alike_is_never_hidden_by_the_cache() -> None:
    """Only the leader record's version is compared apart: the lock taken by another member
    at the same version (a fresh handle, a lock object recreated) gives the new holder, and a
    record written again with the same text (the sync record rewritten by a new leader) gives
    its new version, which the next compare-and-set of it must name."""
    cache = keys.ViewCache(structlog.get_logger("test"))
    text = SyncRecord(leader=MemberName("a"), members=(MemberName("a"),), quorum=1).to_json()
    sync = ("sync", text.encode(), "11")
    first = cache.view([*items(), sync])
    rewritten = cache.view([*items(), ("sync", text.encode(), "12")])
    assert first.sync_version == "11"
    assert rewritten.sync_version == "12" and rewritten.sync is not None
    assert rewritten.sync.version == "12"
    taken = cache.view([items()[0], ("leader", b"b", "7"), ("sync", text.encode(), "12")])
    assert taken.leader is not None and taken.leader.name == "b"


def test_a_corrupt_record_is_logged_when_it_is_read_changed() -> None:
    cache = keys.ViewCache(structlog.get_logger("test"))
    corrupt = [("members/a", b"{not json", "h1")]
    with capture_logs() as logs:
        assert cache.view(corrupt).member("a") is None
        cache.view(corrupt)
        cache.view([("members/a", b"{still not json", "h2")])
    assert [e["event"] for e in logs] == ["dcs_record_corrupt"] * 2


def test_signatures_and_hashes_of_records_seen_before_are_not_computed_again() -> None:
    record = member("b", wal_lsn=3).to_json()
    keys.member_signature(record.encode())
    hash_version(record)
    hits = keys.member_signature.cache_info().hits, hash_version.cache_info().hits
    assert keys.member_signature(record.encode()) == keys.member_signature(record.encode())
    assert hash_version(record) == hash_version(record)
    assert keys.member_signature.cache_info().hits == hits[0] + 2
    assert hash_version.cache_info().hits == hits[1] + 2
