"""The fencer's window under a CPU quota, from the kept directories of soak runs.

For every fence the fencers fired (their `fence deadline reached (L s late, took T s)` line
in `<member>/run/fencer.log`): how late the fencer woke, how long its stop took, and the
writes that member acknowledged after the deadline (from the attempts file the chaos runner
writes with CHAOS_ATTEMPTS=<path>). The deadline's wall time is the log line's time minus
both (the fencer writes the line once PostgreSQL is gone). One table row per run, then the
median over the runs of each label.

    CHAOS_KEEP=1 CHAOS_ATTEMPTS=/tmp/a1.tsv python -m tests.chaos.soak --minutes 3 \\
        --profiles default --cpu-quota 0.01          # prints "kept <dir> for inspection"
    .venv/bin/python bench/fence_window.py "nice 10=<dir>:/tmp/a1.tsv" ...
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_FENCE = re.compile(
    r"^(\S+) fencer\[\d+\] fence deadline reached \(([\d.]+) s late, took ([\d.]+) s\)"
)


@dataclass(frozen=True, slots=True)
class Fence:
    member: str
    deadline: float  # wall-clock seconds
    late_s: float
    took_s: float


def fences(kept: Path) -> list[Fence]:
    found = []
    for log in sorted(kept.glob("pg-*/run/fencer.log")):
        member = log.parts[-3]
        for line in log.read_text(errors="replace").splitlines():
            match = _FENCE.match(line)
            if match is None:
                continue
            logged = datetime.fromisoformat(match[1].replace("Z", "+00:00")).timestamp()
            late, took = float(match[2]), float(match[3])
            found.append(Fence(member, logged - took - late, late, took))
    return found


def acks_after(fence: Fence, attempts: Path) -> list[tuple[float, float]]:
    """(sent, acknowledged) in seconds from the deadline, of each write `fence.member`
    acknowledged after it and before the fencer's log line (PostgreSQL gone; a later one is
    from a server started again): one sent after the deadline was committed after it."""
    past = []
    gone = fence.deadline + fence.late_s + fence.took_s
    for line in attempts.read_text().splitlines():
        _writer, member, acked, sent, ended = line.split("\t")
        if member == fence.member and acked == "1" and fence.deadline < float(ended) <= gone:
            past.append((float(sent) - fence.deadline, float(ended) - fence.deadline))
    return past


def row(
    label: str, kept: Path, attempts: Path
) -> tuple[str, list[Fence], list[tuple[float, float]]]:
    found = fences(kept)
    past = [s for f in found for s in acks_after(f, attempts)]
    return label, found, past


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=KEPT_DIR:ATTEMPTS_TSV")
    args = parser.parse_args(argv)
    rows = []
    for spec in args.runs:
        label, _, paths = spec.partition("=")
        kept, _, attempts = paths.partition(":")
        rows.append(row(label, Path(kept), Path(attempts)))
    print("| run | fences | woke late (s) | stop took (s) | deadline to gone (s) | acks after it |")
    print("|---|---:|---|---|---|---:|")
    for label, found, past in rows:
        late = [f.late_s for f in found]
        took = [f.took_s for f in found]
        gone = [f.late_s + f.took_s for f in found]
        sent_after = sum(1 for sent, _ in past if sent > 0)
        last = max((ended for _, ended in past), default=0.0)
        acks = f"{len(past)}, {sent_after} sent after (last +{last:.2f} s)" if past else "0"
        print(
            f"| {label} | {len(found)} | {_span(late)} | {_span(took)} | {_span(gone)} | {acks} |"
        )
    print()
    print("| label | runs | median late (s) | median took (s) | median deadline to gone (s) |")
    print("|---|---:|---:|---:|---:|")
    for label in dict.fromkeys(r[0] for r in rows):
        found = [f for r in rows if r[0] == label for f in r[1]]
        if not found:
            print(f"| {label} | {sum(r[0] == label for r in rows)} | - | - | - |")
            continue
        print(
            f"| {label} | {sum(r[0] == label for r in rows)}"
            f" | {statistics.median(f.late_s for f in found):.2f}"
            f" | {statistics.median(f.took_s for f in found):.2f}"
            f" | {statistics.median(f.late_s + f.took_s for f in found):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
