"""`eventually`, the polling helper of the integration tests: a check that raises counts as
not yet, and a timeout names (and chains) the exception that kept it failing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.support.postgres import eventually


def answers(*outcomes: bool | Exception) -> Callable[[], Awaitable[bool]]:
    """A check that gives `outcomes` in turn (raising the exceptions), then repeats the last."""
    remaining = list(outcomes)

    async def check() -> bool:
        outcome = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return check


async def test_a_check_that_raises_then_holds_succeeds() -> None:
    took = await eventually(
        answers(ConnectionRefusedError("starting"), False, True), timeout_s=5.0, interval_s=0
    )
    assert took < 5.0


async def test_a_timeout_shows_and_chains_the_last_exception_of_the_check() -> None:
    last = ConnectionRefusedError("port 5432 refused")
    check = answers(ValueError("an older failure"), last)
    with pytest.raises(AssertionError, match=r"within 0\.05 s.*port 5432 refused") as caught:
        await eventually(check, timeout_s=0.05, interval_s=0.01)
    assert caught.value.__cause__ is last


async def test_a_timeout_after_a_false_answer_blames_no_older_exception() -> None:
    check = answers(ValueError("an older failure"), False)
    with pytest.raises(AssertionError) as caught:
        await eventually(check, timeout_s=0.05, interval_s=0.01)
    assert "older failure" not in str(caught.value)
    assert caught.value.__cause__ is None
