"""Container benchmark: the built image (`make image`) and a cluster of its containers.

Prints two tables:

1. The image: its size as podman reports it and what it is made of (`du` of its main parts,
   run inside the image).
2. Three containers of it against an etcd on the host, or with `--dcs kubernetes` against
   the test API server (tests/support/container_dcs.py: service-account token and CA mounted
   where Kubernetes mounts them, the shipped 10-dcs.yaml), each with the pods' hardening
   (tests/support/containers.py; host network on 127.0.0.1, the shipped settings with
   ttl 10 s), `--runs`
   rounds of: `podman stop` of the primary (SIGTERM through tini: the agent hands over) with
   the time an application writer (libpq multi-host, target_session_attrs=read-write, an
   insert every 50 ms) got no write acknowledged, and how long the stop took; the container
   started again and the time until it streams (rejoin); `podman kill` of the primary and the
   time from the kill to the first write acknowledged by the new primary (failover); started
   again, its rejoin. Median, min and max of each; bootstrap once.

    .venv/bin/python bench/containers.py [--runs 5] [--dcs etcd|kubernetes] [--image IMAGE]

Needs root and podman (make image installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.container_dcs import etcd_cluster, kubernetes_cluster
from tests.support.containers import (
    PodmanCluster,
    first_write_elsewhere,
    fresh_values,
    podman,
    podman_unusable_reason,
)
from tests.support.etcd import running_cluster
from tests.support.workload import AppWriter, ensure_table

PARTS = {
    "the agent's venv (/opt/pgwarden)": "/opt/pgwarden",
    "PostgreSQL 15 (/usr/lib/postgresql, /usr/share/postgresql)": (
        "/usr/lib/postgresql /usr/share/postgresql"
    ),
    "Python 3.11 stdlib (/usr/lib/python3.11)": "/usr/lib/python3.11",
    "shared libraries (/usr/lib/x86_64-linux-gnu)": "/usr/lib/x86_64-linux-gnu",
    "/usr/share (zoneinfo, i18n, ...) without PostgreSQL's": "/usr/share",
    "/usr/bin, /usr/sbin": "/usr/bin /usr/sbin",
    "/var (dpkg database, ...)": "/var",
}


def image_table(image: str) -> list[str]:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).strip())
    script = "; ".join(
        f"echo $(du -skxc {paths} 2>/dev/null | tail -1 | cut -f1)" for paths in PARTS.values()
    )
    script += "; du -skx / 2>/dev/null | cut -f1"
    out = podman("run", "--rm", "--network=none", "--entrypoint", "sh", image, "-c", script)
    sizes = [int(x) for x in out.split()]
    parts = dict(zip(PARTS, sizes, strict=False))
    share_pg = int(
        podman(
            "run", "--rm", "--network=none", "--entrypoint", "sh", image, "-c",
            "du -skx /usr/share/postgresql | cut -f1",
        ).strip()
    )  # fmt: skip
    parts["/usr/share (zoneinfo, i18n, ...) without PostgreSQL's"] -= share_pg
    total = sizes[-1]
    rows = [f"image {image}: {size / 1e6:.1f} MB (podman), {total / 1024:.1f} MiB on disk (du)"]
    rows.append(f"| {'part':58} | {'MiB':>6} | {'share':>5} |")
    rows.append(f"|{'-' * 60}|{'-' * 8}:|{'-' * 6}:|")
    for name, kib in parts.items():
        rows.append(f"| {name:58} | {kib / 1024:6.1f} | {kib / total:5.0%} |")
    rest = total - sum(parts.values())
    rows.append(f"| {'the rest':58} | {rest / 1024:6.1f} | {rest / total:5.0%} |")
    return rows


async def writer_gap(cluster: PodmanCluster, action: str) -> dict[str, float]:
    """One fault on the primary (`stop` or `kill`), its figures, and the member's rejoin."""
    primary = await cluster.wait_converged(120)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    writer = AppWriter(
        hosts=[("127.0.0.1", m.pg_port) for m in cluster.members], start_value=fresh_values()
    )
    writer.start()
    await asyncio.sleep(1.0)
    at = time.monotonic()
    figures: dict[str, float] = {}
    if action == "stop":
        figures["stop took"] = await asyncio.to_thread(cluster.stop, primary)
    else:
        await asyncio.to_thread(cluster.kill, primary)
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if (await cluster.primary_index(session)) not in (None, primary):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no new primary within 60 s:\n{cluster.diagnose()}")
    await asyncio.sleep(1.0)
    log = await writer.stop()
    figures["no write acknowledged"] = log.longest_gap(at, time.monotonic())
    first = first_write_elsewhere(log, at, cluster.members[primary])
    if action == "kill" and first is not None:
        figures["kill to the first write on the new primary"] = first - at
    started = time.monotonic()
    await asyncio.to_thread(cluster.start, primary)
    await cluster.wait_converged(120)
    figures["rejoin (start to streaming)"] = time.monotonic() - started
    return figures


async def cluster_table(image: str, runs: int, dcs: str) -> list[str]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-bench-containers-", dir="/tmp"))
    results: dict[str, list[float]] = {}
    try:
        with contextlib.ExitStack() as stack:
            if dcs == "etcd":
                etcd = stack.enter_context(running_cluster(1, base / "etcd"))
                cluster = etcd_cluster(base, etcd.endpoints, image=image)
            else:
                cluster = stack.enter_context(kubernetes_cluster(base, image=image))
            os.environ["PGPASSWORD"] = cluster.superuser_password
            try:
                started = time.monotonic()
                cluster.start_all()
                await cluster.wait_converged(180)
                results["bootstrap (3 containers to 1 + 2 streaming)"] = [
                    time.monotonic() - started
                ]
                for _ in range(runs):
                    for action in ("stop", "kill"):
                        for name, value in (await writer_gap(cluster, action)).items():
                            results.setdefault(f"podman {action}: {name}", []).append(value)
            finally:
                cluster.remove_all()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = [f"| {'figure (s)':52} | {'median':>6} | {'min':>6} | {'max':>6} | runs |"]
    rows.append(f"|{'-' * 54}|{'-' * 7}:|{'-' * 7}:|{'-' * 7}:|-----:|")
    for name, values in results.items():
        median = statistics.median(values)
        rows.append(
            f"| {name:52} | {median:6.2f} | {min(values):6.2f} | {max(values):6.2f} |"
            f" {len(values):4} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dcs", choices=["etcd", "kubernetes"], default="etcd")
    parser.add_argument("--image", default=os.environ.get("PGWARDEN_TEST_IMAGE", "pgwarden:0.1.0"))
    args = parser.parse_args()
    os.environ["PGWARDEN_TEST_IMAGE"] = args.image
    reason = podman_unusable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    print("\n".join(image_table(args.image)))
    print()
    print("\n".join(asyncio.run(cluster_table(args.image, args.runs, args.dcs))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
