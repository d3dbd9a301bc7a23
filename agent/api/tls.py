"""TLS for the REST API and for the calls members make to each other's APIs.

`ReloadingTls` holds the SSL contexts built from `api.tls` and rebuilds them when the
certificate, key or CA file changes (a Kubernetes Secret rotated in place): the server
checks the files at every new connection (one `stat` per file, in the handshake's SNI
callback, then the connection is switched to the current context), a client before every
request. A new set that does not load (a half-written file, a key that does not match its
certificate) is refused: the old contexts stay in use and `api_tls_reload_failed` is logged
once per set of files seen.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import structlog

from agent.api_settings import ApiTlsSettings, ClientVerify
from agent.filewatch import FileSetWatch

_log = structlog.get_logger(__name__)

_VERIFY_MODES = {
    ClientVerify.OFF: ssl.CERT_NONE,
    ClientVerify.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientVerify.REQUIRED: ssl.CERT_REQUIRED,
}


def server_context(tls: ApiTlsSettings) -> ssl.SSLContext:
    """The API server's context: its certificate and key, client certificates asked for and
    verified against `ca_file` as `verify_client` says. Raises OSError or ssl.SSLError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=tls.ca_file)
    ctx.verify_mode = _VERIFY_MODES[tls.verify_client]
    return ctx


def client_context(tls: ApiTlsSettings | None) -> ssl.SSLContext:
    """The context for calls to `https` members: their certificate must verify against
    `ca_file` (the system CAs without one) and name the host called; this member presents
    its own certificate when clients are verified. Raises OSError or ssl.SSLError."""
    ca_file = tls.ca_file if tls is not None else None
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and tls.verify_client != ClientVerify.OFF:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


@dataclass(frozen=True, slots=True)
class _Loaded:
    server: ssl.SSLContext
    client: ssl.SSLContext


class ReloadingTls:
    """The current server and client contexts of `api.tls`, reloaded on file changes.

    Built from the files at start (raises if they do not load: the agent must not start
    without its certificate). Afterwards a failed reload never raises: it is logged and the
    previous contexts are kept.
    """

    def __init__(self, tls: ApiTlsSettings) -> None:
        self._tls = tls
        self._files = FileSetWatch([p for p in (tls.cert_file, tls.key_file, tls.ca_file) if p])
        self._loaded = self._load()
        # The context the listening socket is made with; each handshake is moved to the
        # current one in `_on_hello`, so a rotation never needs a new socket.
        self.listener = server_context(tls)
        self.listener.sni_callback = self._on_hello

    def _load(self) -> _Loaded:
        return _Loaded(server_context(self._tls), client_context(self._tls))

    def _current(self) -> _Loaded:
        signature = self._files.pending()
        if signature is None:
            return self._loaded
        try:
            self._loaded = self._load()
        except (OSError, ssl.SSLError) as exc:
            self._files.refuse(signature)
            _log.error(
                "api_tls_reload_failed",
                cert_file=self._tls.cert_file,
                error=str(exc),
                kept="the previous certificate",
            )
            return self._loaded
        self._files.accept(signature)
        _log.info("api_tls_reloaded", cert_file=self._tls.cert_file)
        return self._loaded

    def _on_hello(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        sock.context = self._current().server

    def client(self) -> ssl.SSLContext:
        """The client context as of now (the files checked first)."""
        return self._current().client
