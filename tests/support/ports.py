"""Free TCP ports on loopback for servers the tests start: outside the ephemeral range and
reserved for this process across processes (see `agent.localports`), so a server restarted on
its port finds it free."""

from __future__ import annotations

from agent.localports import free_port

__all__ = ["free_port", "free_ports"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports, each reserved for this process."""
    return [free_port(host) for _ in range(count)]
