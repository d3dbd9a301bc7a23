"""The watch cache of the Kubernetes backend (agent/dcs/kubernetes/cache.py), pure: when it
may be read instead of the API server."""

from __future__ import annotations

from agent.dcs.kubernetes.cache import ObjectCache


def pod(name: str, rv: int) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}}


def test_a_cache_is_trusted_only_once_filled_and_while_its_watch_is_live() -> None:
    cache = ObjectCache()
    cache.set_live(True)
    assert not cache.usable(0.0)  # never filled
    cache.fill([pod("a", 5)], 10, now=0.0)
    assert cache.usable(0.0)
    cache.set_live(False)  # the stream fails and retries: it may miss changes
    assert not cache.usable(0.0)


def test_events_update_the_objects_and_own_writes_wait_until_seen() -> None:
    cache = ObjectCache()
    cache.set_live(True)
    cache.fill([pod("a", 5), pod("b", 6)], 10, now=0.0)
    cache.own_write(12)  # our own write: read from the server until its event is here
    assert not cache.usable(0.0)
    cache.apply("MODIFIED", pod("a", 12), now=0.1)
    assert cache.usable(0.1)
    cache.apply("DELETED", pod("b", 13), now=0.2)
    assert [o["metadata"] for o in cache.objects()] == [{"name": "a", "resourceVersion": "12"}]


def test_a_cache_whose_objects_change_on_a_schedule_is_not_trusted_when_quiet() -> None:
    cache = ObjectCache(max_quiet_s=6.0)
    cache.set_live(True)
    cache.fill([pod("a", 5)], 10, now=0.0)
    assert cache.usable(5.9)
    assert not cache.usable(6.0)  # no heartbeat for twice its period: maybe a dead stream
    cache.apply("BOOKMARK", pod("", 20), now=6.5)
    assert cache.usable(6.5)
