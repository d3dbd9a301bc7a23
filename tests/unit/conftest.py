"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.clock import FakeClock
from tests.unit.api_harness import (
    Api,
    Backend,
    StatusBox,
    make_settings,
    primary_status,
    serve,
    standard_cluster,
)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """The API of member a of the standard cluster (api_harness.standard_cluster: a leads;
    b is a good candidate; c nofailover; d lags; e stopped), a's status published."""
    clock = FakeClock()
    backend = Backend(clock)
    await standard_cluster(backend)
    view = await backend.handle("a").get_cluster()
    served = await serve(make_settings(), backend, StatusBox(primary_status(clock, view)), clock)
    try:
        yield served
    finally:
        await served.client.close()
