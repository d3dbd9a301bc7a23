"""`python -m tests.k8s_apiserver --port P ...`: run the test API server until SIGTERM/SIGINT.

Prints one line `listening on <url>` (flushed) once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from tests.k8s_apiserver.server import KubeApiServer, ServerOptions


def parse_args(argv: list[str]) -> ServerOptions:
    """Command-line options to ServerOptions."""
    parser = argparse.ArgumentParser(prog="python -m tests.k8s_apiserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="accepted bearer token, as TOKEN or TOKEN=USER (repeatable; USER defaults to admin)",
    )
    parser.add_argument("--audit-log", type=Path)
    parser.add_argument("--history-size", type=int, default=1000)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tokens: dict[str, str] = {}
    for item in args.token:
        token, _, user = item.partition("=")
        tokens[token] = user or "admin"
    return ServerOptions(
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tokens=tokens,
        audit_log=args.audit_log,
        history_size=args.history_size,
        bookmark_interval_s=args.bookmark_interval,
    )


async def serve(options: ServerOptions) -> None:
    """Serve until a termination signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = KubeApiServer(options)
    await server.start()
    print(f"listening on {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    """Entry point."""
    asyncio.run(serve(parse_args(sys.argv[1:])))


if __name__ == "__main__":
    main()
