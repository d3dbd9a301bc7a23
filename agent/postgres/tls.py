"""The agent's own TLS to other members' PostgreSQL (asyncpg): rewind's pre-check, the
received-position check. libpq tools get the same rule through their conninfo
(replication.client_tls)."""

from __future__ import annotations

import ssl

from agent.config import PostgresSettings
from agent.settings import TlsVerify


def client_ssl_context(settings: PostgresSettings) -> ssl.SSLContext | None:
    """An SSL context that verifies another member against postgresql.tls's CA, and its name
    too with `verify-full`; None without postgresql.tls (plain connections, as before).
    Reads the CA file: raises OSError or ssl.SSLError when it cannot."""
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    context.check_hostname = tls.verify is TlsVerify.FULL
    return context
