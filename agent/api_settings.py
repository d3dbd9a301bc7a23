"""The REST API's settings types (`api:`): where it listens, its token and its TLS.

Like every settings type (agent/settings.py), each class checks its own rules when built.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from agent.value_rules import (
    ConfigProblem,
    Credentials,
    Secret,
    absolute,
    check,
    is_wildcard,
    non_empty,
    one_of,
    port_number,
    url_rule,
)


class ClientVerify(StrEnum):
    """Whether the API asks TLS clients for a certificate signed by `api.tls.ca_file`."""

    OFF = "off"
    OPTIONAL = "optional"  # asked for; a client without one is served, a bad one refused
    REQUIRED = "required"  # a client without a verified certificate fails the handshake


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiTlsSettings:
    """The REST API's TLS: its certificate and key (re-read when the files change), the CA
    that signs the members' certificates (peers and client certificates are verified
    against it), and whether clients must present a certificate. A verified client
    certificate does not replace the token: mutating routes need both (the certificate
    says who may connect, the token what they may change)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    verify_client: ClientVerify = ClientVerify.OFF

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("cert_file", "key_file", "ca_file"):
            yield from absolute(name, getattr(self, name))
        yield from non_empty("cert_file", self.cert_file)
        yield from non_empty("key_file", self.key_file)
        yield from one_of("verify_client", self.verify_client, ClientVerify)
        if self.verify_client != ClientVerify.OFF and self.ca_file is None:
            yield ConfigProblem(
                "verify_client", "requires ca_file (the CA client certificates are checked against)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    listen_host: str = "127.0.0.1"
    port: int = 8008
    connect_url: str | None = None  # default http(s)://<listen_host>:<port>
    token: Secret | None = None
    basic: Credentials | None = None
    insecure_no_auth: bool = False
    tls: ApiTlsSettings | None = None

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from non_empty("listen_host", self.listen_host)
        yield from port_number("port", self.port)
        if self.connect_url is not None:
            rule = url_rule(self.connect_url, require_port=False)
            if rule is not None:
                yield ConfigProblem("connect_url", rule)
            elif self.tls is not None and not self.connect_url.startswith("https://"):
                yield ConfigProblem("connect_url", "must be an https URL when api.tls is set")
        elif self.listen_host and is_wildcard(self.listen_host):
            yield ConfigProblem(
                "connect_url",
                "is required when api.listen_host is a wildcard address (peers need a reachable "
                "URL)",
            )

    @property
    def url(self) -> str:
        """The URL peers and `pgwarden ctl` use to reach this agent's API."""
        if self.connect_url:
            return self.connect_url
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def authorization_header(self) -> dict[str, str]:
        """The `Authorization` header this agent sends to its peers' APIs (failsafe mode): the
        members of a cluster share the API credentials. Empty with neither configured."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token.reveal()}"}
        if self.basic is not None:
            password = self.basic.password.reveal() if self.basic.password else ""
            raw = f"{self.basic.username}:{password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        return {}
