"""The etcd backend's mirror (agent/dcs/etcd_mirror.py): when it may stand in for a read."""

from __future__ import annotations

from agent.dcs.etcd_mirror import Mirror
from agent.dcs.etcd_wire import EventType, KeyValue, WatchEvent

LEADER = b"/ns/c/leader"
MEMBER = b"/ns/c/members/b"
E1, E2 = "http://etcd-1:2379", "http://etcd-2:2379"


def kv(key: bytes, revision: int, value: bytes = b"a") -> KeyValue:
    return KeyValue(
        key=key, value=value, create_revision=revision, mod_revision=revision, version=1, lease=7
    )


def put(key: bytes, revision: int, value: bytes = b"a") -> WatchEvent:
    return WatchEvent(type=EventType.PUT, kv=kv(key, revision, value))


def delete(key: bytes, revision: int) -> WatchEvent:
    return WatchEvent(type=EventType.DELETE, kv=kv(key, revision, b""))


def current_mirror() -> Mirror:
    """Watch from revision 5, stream open, read at 10 with a leader, a request answered at 0."""
    mirror = Mirror(LEADER)
    mirror.watching_from(5)
    mirror.stream_open(E1)
    mirror.load((kv(LEADER, 4),), 10, epoch=mirror.epoch)
    mirror.answered(0.0, E1)
    return mirror


def test_a_read_after_the_stream_opened_with_a_recent_answer_and_a_leader_is_current() -> None:
    assert current_mirror().current(1.0, max_age_s=10.0)


def test_events_after_the_read_are_applied_and_events_before_it_are_not() -> None:
    mirror = current_mirror()
    mirror.apply(delete(LEADER, 9))  # already in the read at 10
    mirror.apply(put(MEMBER, 11))
    assert mirror.leader() is not None
    assert {k.key for k in mirror.kvs()} == {LEADER, MEMBER}
    mirror.apply(delete(MEMBER, 12))
    assert {k.key for k in mirror.kvs()} == {LEADER}


def test_a_read_older_than_events_already_delivered_is_not_trusted() -> None:
    mirror = current_mirror()
    mirror.apply(put(MEMBER, 12))
    # A slow read: events 11, 12 would be lost.
    mirror.load((kv(LEADER, 4),), 10, epoch=mirror.epoch)
    assert not mirror.current(1.0, max_age_s=10.0)


def test_a_new_stream_needs_a_new_read() -> None:
    mirror = current_mirror()
    mirror.stream_open(None)
    assert not mirror.current(1.0, max_age_s=10.0)
    mirror.stream_open(E1)
    assert not mirror.current(1.0, max_age_s=10.0)
    mirror.load((kv(LEADER, 4),), 11, epoch=mirror.epoch)
    assert mirror.current(1.0, max_age_s=10.0)


def test_a_read_sent_before_the_stream_opened_is_not_loaded_when_answered_after() -> None:
    # Review E4: the events after such a read come through the new stream's catch-up, up to
    # 100 ms later; the mirror would stand in for a read while it lags.
    mirror = current_mirror()
    mirror.stream_open(None)
    sent = mirror.epoch  # get_cluster sends its range now
    mirror.stream_open(E1)  # the stream is re-created while the range is in flight
    mirror.load((kv(LEADER, 4),), 11, epoch=sent)
    assert not mirror.current(1.0, max_age_s=10.0)
    mirror.load((kv(LEADER, 4),), 12, epoch=mirror.epoch)  # the next read, made after
    assert mirror.current(1.0, max_age_s=10.0)


def test_an_own_write_must_come_back_through_the_watch_first() -> None:
    mirror = current_mirror()
    mirror.own(13)
    assert not mirror.current(1.0, max_age_s=10.0)
    mirror.apply(put(MEMBER, 13))
    assert mirror.current(1.0, max_age_s=10.0)


def test_a_failed_request_or_an_old_answer_puts_the_store_in_doubt() -> None:
    mirror = current_mirror()
    assert not mirror.current(10.0, max_age_s=10.0)
    mirror.failed()
    assert not mirror.current(1.0, max_age_s=10.0)
    mirror.answered(2.0, E1)
    assert mirror.current(3.0, max_age_s=10.0)


def test_without_a_leader_members_race_on_a_fresh_read() -> None:
    mirror = current_mirror()
    mirror.apply(delete(LEADER, 11))
    assert not mirror.current(1.0, max_age_s=10.0)


def test_a_compacted_watch_unloads_the_keys() -> None:
    mirror = current_mirror()
    mirror.unload()
    assert not mirror.current(1.0, max_age_s=10.0)
    assert mirror.kvs() == ()


def test_an_answer_from_another_endpoint_than_the_watch_s_puts_the_store_in_doubt() -> None:
    mirror = current_mirror()
    mirror.answered(1.0, E2)  # the watch's member may be frozen: its stream silent
    assert not mirror.current(2.0, max_age_s=10.0)
    mirror.answered(2.0, E1)
    assert mirror.current(3.0, max_age_s=10.0)
