"""PostgreSQL's TLS files and the agent's own TLS to other members' PostgreSQL.

- `install_server_files`: the copies of postgresql.tls's certificate, key and CA that
  PostgreSQL reads (owned by its OS user, mode 0600), replaced only by a set that loads.
- `TlsRenewal`: a rotated certificate (a Kubernetes Secret updated in place) reaches the
  running server without a restart: PostgreSQL re-reads its SSL files on SIGHUP (since 10;
  PostgreSQL 15 docs, 19.9.3 "SSL Server File Usage": read at start and at every
  configuration reload; an error found on a reload keeps the old SSL configuration). Existing
  connections, walsenders included, keep the session they have; new ones get the new
  certificate. The change is noticed the way the REST API notices its own (agent/filewatch.py).
- `client_ssl_context`: the agent's asyncpg connections to other members (rewind's
  pre-check, the received-position check); libpq tools get the same rule through their
  conninfo (replication.client_tls).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable

import structlog

from agent.config import PostgresSettings
from agent.filewatch import FileSetWatch
from agent.postgres import replication
from agent.postgres.osfiles import PostgresError, RunAs, ensure_dir, write_file
from agent.postgres_settings import PostgresTls, TlsVerify

_log = structlog.get_logger(__name__)


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


def check_server_files(cert_file: str, key_file: str, ca_file: str) -> None:
    """Raise OSError or ssl.SSLError unless the key matches the certificate and the CA file
    holds certificates: what PostgreSQL needs to start (or to take them on a reload)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cafile=ca_file)


def install_server_files(tls: PostgresTls, run_dir: str, who: RunAs) -> None:
    """Copy postgresql.tls's files to `replication.tls_paths(run_dir)`, owned by PostgreSQL's
    OS user with mode 0600. PostgreSQL refuses a key file that is not owned by its OS user
    with mode 0600 (or root-owned with 0640), which a mounted Secret or a root-owned file
    seldom is; the copies always are.

    The copies are written next to their targets and checked together (`check_server_files`)
    before any target is replaced, so a half-rotated Secret (a new certificate with the old
    key) never reaches PostgreSQL, which would refuse to start on it. Raises PostgresError
    when the set does not load (the previous copies are left as they were), OSError when a
    source cannot be read or a copy written.
    """
    ensure_dir(replication.tls_dir(run_dir), who)
    targets = replication.tls_paths(run_dir)
    staged = tuple(f"{target}.new" for target in targets)
    try:
        for source, copy in zip((tls.cert_file, tls.key_file, tls.ca_file), staged, strict=True):
            with open(source, encoding="utf-8") as handle:
                write_file(copy, handle.read(), who)
        check_server_files(*staged)
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        for copy in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy)
        if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
            raise
        raise PostgresError(
            f"postgresql.tls: the certificate, key or CA does not load ({exc}); "
            "the previous copies are kept"
        ) from None
    for copy, target in zip(staged, targets, strict=True):
        os.replace(copy, target)


class TlsRenewal:
    """Has the running PostgreSQL use postgresql.tls's files once they change on disk.

    `running()` says whether a postmaster runs; `reload()` re-copies the files (through
    `install_server_files`) and sends SIGHUP (`Postmaster.reload`). A stopped server is left
    alone: its next start copies the files anyway. The first check after the agent starts
    reloads once (nothing is taken as applied yet): a postmaster adopted from before an agent
    restart may still run with older copies. A new set that does not load is refused and
    logged once (`postgres_tls_reload_failed`), and PostgreSQL keeps the certificate it has;
    a reload that fails for another reason is retried at the next check.
    """

    def __init__(
        self,
        tls: PostgresTls,
        *,
        running: Callable[[], bool],
        reload: Callable[[], Awaitable[None]],
    ) -> None:
        self._tls = tls
        self._running = running
        self._reload = reload
        self._files = FileSetWatch((tls.cert_file, tls.key_file, tls.ca_file), accepted=False)

    async def check(self) -> bool:
        """Reload PostgreSQL if the files changed since they were last applied; True when it
        was reloaded with them."""
        signature = self._files.pending()
        if signature is None or not self._running():
            return False
        try:
            check_server_files(self._tls.cert_file, self._tls.key_file, self._tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            self._files.refuse(signature)
            _log.error(
                "postgres_tls_reload_failed",
                cert_file=self._tls.cert_file,
                error=str(exc),
                kept="the previous certificate",
            )
            return False
        try:
            await self._reload()
        except (PostgresError, OSError) as exc:
            _log.warning("postgres_tls_reload_retry", error=str(exc))
            return False
        self._files.accept(signature)
        _log.info("postgres_tls_reloaded", cert_file=self._tls.cert_file)
        return True

    async def run(self, interval_s: float) -> None:
        """`check` every `interval_s` until cancelled; an unexpected error is logged, never
        raised (it must not stop the agent)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception as exc:
                _log.exception("postgres_tls_check_failed", error=repr(exc))
