"""agent/namecheck.py: an agent refuses to start under the name of another live agent of its
cluster (chaos finding 24), and only then: a record of its own, a former incarnation that no
longer answers, an agent of another name or cluster at that URL, or a DCS that does not
answer are no reason to stop. On the in-memory DCS with the answers of the agents at each
URL given by a table (the real REST call is HttpPeers.identify; the whole start is checked by
tests/chaos/test_unlisted_faults.py)."""

from __future__ import annotations

from agent.clock import FakeClock
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.model import Member, MemberName, PgState, Role
from agent.namecheck import name_in_use
from tests.unit.test_decide import make_settings

OURS = make_settings("a")  # api: http://127.0.0.1:8008 (the default), cluster "c"
ELSEWHERE = "http://10.0.0.2:8008"


def _record(name: str, api_url: str) -> Member:
    return Member(
        name=MemberName(name),
        role=Role.PRIMARY,
        state=PgState.RUNNING,
        api_url=api_url,
        host="10.0.0.2",
        port=5432,
    )


class Agents:
    """Who answers at which URL: (name, cluster), or nothing; and which URLs were asked."""

    def __init__(self, answers: dict[str, tuple[str, str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def identify(self, url: str) -> tuple[str, str] | None:
        self.asked.append(url)
        return self.answers.get(url)


async def _dcs_with(*records: Member) -> MemoryDcs:
    store = MemoryStore(FakeClock())
    for record in records:
        await MemoryDcs(store, record.name, ttl_s=10).publish_member(record)
    return MemoryDcs(store, "a", ttl_s=10)


async def test_a_live_agent_answering_for_our_name_elsewhere_is_found() -> None:
    dcs = await _dcs_with(_record("a", ELSEWHERE), _record("b", "http://10.0.0.3:8008"))
    agents = Agents({ELSEWHERE: ("a", "c")})
    found = await name_in_use(OURS, dcs, agents.identify)
    assert found is not None and found.url == ELSEWHERE
    assert "'a'" in found.message(OURS) and ELSEWHERE in found.message(OURS)


async def test_a_former_incarnation_that_does_not_answer_is_no_reason_to_stop() -> None:
    dcs = await _dcs_with(_record("a", ELSEWHERE))
    agents = Agents({})
    assert await name_in_use(OURS, dcs, agents.identify) is None
    assert agents.asked == [ELSEWHERE]


async def test_an_agent_of_another_name_or_cluster_at_that_url_is_no_reason_to_stop() -> None:
    # The address was reused by another member, or by a member of another cluster.
    for answer in (("b", "c"), ("a", "other")):
        dcs = await _dcs_with(_record("a", ELSEWHERE))
        assert await name_in_use(OURS, dcs, Agents({ELSEWHERE: answer}).identify) is None


async def test_our_own_record_and_no_record_are_not_asked_about() -> None:
    agents = Agents({OURS.api.url: ("a", "c")})
    for dcs in (await _dcs_with(_record("a", OURS.api.url)), await _dcs_with()):
        assert await name_in_use(OURS, dcs, agents.identify) is None
    assert agents.asked == []


async def test_a_dcs_that_does_not_answer_skips_the_check() -> None:
    dcs = await _dcs_with(_record("a", ELSEWHERE))
    dcs.faults.unavailable = True
    agents = Agents({ELSEWHERE: ("a", "c")})
    assert await name_in_use(OURS, dcs, agents.identify, read_attempts=1) is None
    assert agents.asked == []
