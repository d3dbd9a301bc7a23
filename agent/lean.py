"""The agent's resident memory at start (issue 15): what `pgwarden run` does before it
imports its runtime, and the TLS context the runtime uses where it would have used the HTTP
library's.

aiohttp builds two TLS client contexts when `aiohttp.connector` is imported, each loading the
system CA bundle (Debian's 144 certificates: 2.3 MB and 0.8 MB resident in every agent). The
agent never needs them: its etcd, Kubernetes and peer clients hand aiohttp a context of their
own for every `https` URL (the configured CA, or `system_ca_context()` for the system CAs,
built on first use), and plain `http` URLs use none. So `import_runtime()` imports aiohttp
with OpenSSL's default CA locations (SSL_CERT_FILE, SSL_CERT_DIR) pointed at an empty file
for the import only: the two contexts it keeps trust nothing, so a request that reached them
by mistake would fail verification (closed), never pass it. The variables are restored before
anything else runs.

The REST API is served by the agent's own server (agent/http/server.py), so `aiohttp.web`
(its file responses, which read the system MIME tables at import, and websockets; about
2 MB, docs/facts.md) is not imported at all.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import ssl
from collections.abc import Iterator

_CA_LOCATIONS = ("SSL_CERT_FILE", "SSL_CERT_DIR")


@contextlib.contextmanager
def no_default_cas() -> Iterator[None]:
    """OpenSSL's default CA file and directory are an empty file inside this block (contexts
    made in it that load the defaults trust nothing); the environment is restored after."""
    saved = {name: os.environ.get(name) for name in _CA_LOCATIONS}
    os.environ.update(dict.fromkeys(_CA_LOCATIONS, os.devnull))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def import_runtime() -> None:
    """Import the HTTP client library without its import-time CA bundles (see the module
    docstring); the caller imports the agent after this."""
    with no_default_cas():
        importlib.import_module("aiohttp.connector")


@functools.cache
def system_ca_context() -> ssl.SSLContext:
    """A client context verified against the system CAs, loaded on the first call only (an
    agent whose URLs are all plain http, or all have their own CA, never pays for them)."""
    return ssl.create_default_context()
