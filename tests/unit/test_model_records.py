"""Reading DCS records: a record the agent cannot use is refused when read (and so treated as
absent), never carried into the API where rendering it would fail."""

from __future__ import annotations

import json

import pytest

from agent.model import RawRecord, parse_switchover


def _switchover(scheduled_at: object) -> RawRecord:
    value = json.dumps({"leader": "a", "candidate": "b", "scheduled_at": scheduled_at})
    return RawRecord(value=value, version="1")


@pytest.mark.parametrize("at", [253402300800.0, 1e300, -1e300])
def test_a_switchover_time_no_date_can_show_is_refused(at: float) -> None:
    # 253402300800 is 10000-01-01T00:00:00Z: /cluster rendered it with a 500 before.
    with pytest.raises(ValueError, match="scheduled_at"):
        parse_switchover(_switchover(at))


def test_a_switchover_time_in_range_is_read() -> None:
    assert parse_switchover(_switchover(1.7e9)).scheduled_at == 1.7e9
