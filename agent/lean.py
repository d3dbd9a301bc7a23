"""The agent's resident memory (issue 15): the TLS context for the system CAs, built on first
use only.

`pgwarden run` imports no aiohttp: its REST API is served by agent/http/server.py and its
etcd, Kubernetes and peer clients use agent/http/client.py, each handing the client a context
of its own for every `https` URL (the configured CA, or `system_ca_context()` for the system
CAs). aiohttp, when it was imported, built two contexts at import time, each loading the
system CA bundle (Debian's 144 certificates: 2.3 MB and 0.8 MB resident), and its web part read
the system MIME tables (0.35 MB); the agent no longer pays for either. `pgwarden ctl` and the
demo still use aiohttp (separate processes).
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def system_ca_context() -> ssl.SSLContext:
    """A client context verified against the system CAs, loaded on the first call only (an
    agent whose URLs are all plain http, or all have their own CA, never pays for them)."""
    return ssl.create_default_context()
