"""What the OpenAPI fuzzer (tests/integration/test_openapi_fuzz.py) found, each kept as a
unit test against the in-process API (tests/unit/test_api.py's fixtures)."""

from __future__ import annotations

from tests.unit.api_harness import (
    AUTH,
    Api,
)


async def test_a_switchover_scheduled_after_9999_in_utc_is_refused_not_stored(api: Api) -> None:
    # 9999-12-31T23:59:59-23:59 is 10000-01-01 in UTC: it parsed and was in the future, so it
    # was written to the DCS, and the answer (times in UTC) raised: a 500, and every later
    # GET /cluster too, while the record stood.
    revision = api.backend.revision
    answer = await api.client.post(
        "/switchover", json={"scheduled_at": "9999-12-31T23:59:59-23:59"}, headers=AUTH
    )
    assert answer.status == 400
    assert (await answer.json())["error"].startswith("scheduled_at: ")
    assert api.backend.revision == revision
    assert (await api.client.get("/cluster")).status == 200
