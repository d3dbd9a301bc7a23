"""The callback runner (agent/callbacks.py) with real processes: a script that writes its
argument vector to a file, one that hangs, one that fails. As root, the callbacks run as the
`postgres` OS user (PostgreSQL's), as the agent runs them."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.callback_settings import CallbackEvent, CallbackSettings
from agent.callbacks import CallbackResult, Callbacks
from agent.clock import SystemClock
from agent.metrics import Metrics
from agent.settings import Settings
from tests.unit.test_decide import make_settings

pytestmark = pytest.mark.timeout(60)

RECORD = """#!/bin/sh
echo "$(id -un) $*" >> {out}
"""
HANG = """#!/bin/sh
echo "started $*" >> {out}
CALLBACK_TEST_LOG={out} sleep 60 &
wait
echo "finished $*" >> {out}
"""
FAIL = """#!/bin/sh
echo "no can do: $*"
exit 3
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parent is root's, mode 0700, and the callbacks run as
    # postgres under root.
    path = Path(tempfile.mkdtemp(prefix="pgwarden-callbacks-", dir="/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _script(workdir: Path, name: str, text: str) -> str:
    path = workdir / name
    path.write_text(text.format(out=workdir / "calls.log"))
    path.chmod(0o755)
    return str(path)


def _settings(callbacks: CallbackSettings) -> Settings:
    base = make_settings("a")
    os_user = "postgres" if os.geteuid() == 0 else None
    return replace(
        base,
        cluster="main",
        postgresql=replace(base.postgresql, os_user=os_user),
        callbacks=callbacks,
    )


def _calls(workdir: Path) -> list[str]:
    path = workdir / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


async def _until(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _count(metrics: Metrics, event: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "pgwarden_callbacks_total", {"event": event, "result": result}
    )
    return value or 0.0


async def test_a_callback_gets_its_words_then_event_role_and_cluster(workdir: Path) -> None:
    record = _script(workdir, "record.sh", RECORD)
    metrics = Metrics()
    runner = Callbacks(
        _settings(CallbackSettings(on_role_change=f"{record} 'two words' x")),
        clock=SystemClock(),
        metrics=metrics,
    )
    runner.fire(CallbackEvent.ON_ROLE_CHANGE, "primary")
    runner.fire(CallbackEvent.ON_START, "primary")  # not configured: nothing runs
    await _until(lambda: _count(metrics, "on_role_change", "ok") == 1)
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert _calls(workdir) == [f"{user} two words x on_role_change primary main"]
    await runner.close()


async def test_fire_returns_at_once_and_a_hanging_callback_is_killed_at_its_timeout(
    workdir: Path,
) -> None:
    hang = _script(workdir, "hang.sh", HANG)
    metrics = Metrics()
    runner = Callbacks(
        _settings(CallbackSettings(on_stop=hang, timeout_s=0.5)),
        clock=SystemClock(),
        metrics=metrics,
    )
    t0 = time.monotonic()
    runner.fire(CallbackEvent.ON_STOP, "replica")
    assert time.monotonic() - t0 < 0.1  # the caller (the HA loop) never waits
    await _until(lambda: _count(metrics, "on_stop", "timeout") == 1)
    took = time.monotonic() - t0
    assert 0.5 <= took < 5.0  # at its timeout, far from the script's 60 s (slack: shared CPU)
    # The whole process group went: the script's own child (sleep) too.
    await _until(lambda: not _sleepers(workdir), timeout_s=2.0)
    assert _calls(workdir) == ["started on_stop replica main"]


def _sleepers(workdir: Path) -> list[int]:
    """Processes still running `sleep 60` started by this test's hang script."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if cmdline[:2] == [b"sleep", b"60"] and str(workdir).encode() in environ:
            found.append(int(entry))
    return found


async def test_a_new_call_for_the_same_event_kills_the_older_one(workdir: Path) -> None:
    hang = _script(workdir, "hang.sh", HANG)
    metrics = Metrics()
    runner = Callbacks(
        _settings(CallbackSettings(on_role_change=hang, timeout_s=30)),
        clock=SystemClock(),
        metrics=metrics,
    )
    runner.fire(CallbackEvent.ON_ROLE_CHANGE, "primary")
    await _until(lambda: len(_calls(workdir)) == 1)
    runner.fire(CallbackEvent.ON_ROLE_CHANGE, "demoted")
    await _until(lambda: _count(metrics, "on_role_change", "superseded") == 1)
    await _until(lambda: len(_calls(workdir)) == 2)
    assert _calls(workdir) == ["started on_role_change primary main",
                               "started on_role_change demoted main"]  # fmt: skip
    await runner.close()  # kills the second one (after loop_wait_s)
    assert _count(metrics, "on_role_change", "superseded") == 2
    await _until(lambda: not _sleepers(workdir), timeout_s=2.0)  # SIGKILL lands at once


async def test_run_reports_exit_status_output_and_timeout(workdir: Path) -> None:
    fail = _script(workdir, "fail.sh", FAIL)
    hang = _script(workdir, "hang.sh", HANG)
    runner = Callbacks(
        _settings(CallbackSettings(pre_promote=fail, post_bootstrap=hang)),
        clock=SystemClock(),
        metrics=Metrics(),
    )
    failed = await runner.run(CallbackEvent.PRE_PROMOTE, "replica", timeout_s=5)
    assert failed is not None
    assert (failed.result, failed.exit_code) == (CallbackResult.FAILED, 3)
    assert failed.output == "no can do: pre_promote replica main"
    t0 = time.monotonic()
    hung = await runner.run(CallbackEvent.POST_BOOTSTRAP, "primary", timeout_s=0.3)
    assert hung is not None and hung.result is CallbackResult.TIMEOUT
    assert time.monotonic() - t0 < 5.0  # not the script's 60 s
    assert await runner.run(CallbackEvent.ON_START, "primary", timeout_s=1) is None


async def test_a_callback_that_cannot_start_is_an_error_not_an_exception(workdir: Path) -> None:
    gone = _script(workdir, "gone.sh", RECORD)
    runner = Callbacks(
        _settings(CallbackSettings(pre_promote=gone)), clock=SystemClock(), metrics=Metrics()
    )
    os.unlink(gone)  # removed after the configuration was checked
    run = await runner.run(CallbackEvent.PRE_PROMOTE, "replica", timeout_s=5)
    assert run is not None and run.result is CallbackResult.ERROR
