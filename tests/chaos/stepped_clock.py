"""Run the agent with a wall clock that the chaos suite can step: `python -m
tests.chaos.stepped_clock <offset file> run --config ...` (the clock-step faults of the
random mix, issue 16).

`time.time()` and `time.time_ns()` of this process return the host's wall clock plus the
offset in seconds written in the file (a float; absent or unreadable: 0), re-read every
OFFSET_POLL_S by a daemon thread: writing 3600 to the file is a step of +1 hour as NTP or an
operator would make it, and writing 0 steps it back. CLOCK_MONOTONIC is untouched, as a real
step leaves it. Only the agent's own process is stepped: its fencer and PostgreSQL (children
started with exec) keep the host's wall clock, which a real step of the host would move too
(both use the wall clock only in log lines and `now()`; the fencer's deadline is monotonic).

Why not libfaketime: docs/chaos.md ("What it does not cover" had it) — with
`FAKETIME_DONT_FAKE_MONOTONIC=1` Python 3.11's `time.sleep` fails with EINVAL, and the preload
leaks into every child. The agent reads the wall clock through `time.time` only
(agent/clock.py SystemClock; agent/kube/events.py binds it at import, after the patch here).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

OFFSET_POLL_S = 0.05

_real_time = time.time
_real_time_ns = time.time_ns


class SteppedWallClock:
    """The offset read from `path`; `time()`/`time_ns()` are the host's plus it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_s = 0.0
        self.read()

    def read(self) -> None:
        try:
            self.offset_s = float(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            self.offset_s = 0.0

    def time(self) -> float:
        return _real_time() + self.offset_s

    def time_ns(self) -> int:
        return _real_time_ns() + int(self.offset_s * 1e9)

    def watch(self) -> None:
        while True:
            time.sleep(OFFSET_POLL_S)
            self.read()


def install(path: Path) -> SteppedWallClock:
    """Patch `time.time`/`time.time_ns` of this process and start the watcher thread."""
    clock = SteppedWallClock(path)
    time.time = clock.time
    time.time_ns = clock.time_ns
    threading.Thread(target=clock.watch, name="stepped-wall-clock", daemon=True).start()
    return clock


def write_offset(path: Path, offset_s: float) -> None:
    """Step the clock of the agent reading `path` to the host's plus `offset_s` (atomic)."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(f"{offset_s}\n")
    partial.replace(path)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m tests.chaos.stepped_clock OFFSET_FILE AGENT_ARGS...")
        return 2
    install(Path(argv[0]))
    from agent.__main__ import main as agent_main  # noqa: PLC0415 - after the patch

    return agent_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
