"""What `pgwarden run` imports at start, checked in a fresh interpreter (issue 15: the agent's
resident memory; agent/lean.py): aiohttp is not imported (the API server and the etcd,
Kubernetes and peer clients are the agent's own, agent/http/), so neither its CA bundles
nor the MIME tables are loaded, the environment is left as it was, a peer served over
https is still verified against the system CAs, and modules the running agent does not need
are not imported.

Each check runs `agent.__main__.load_runtime()` (what `pgwarden run` does after reading its
settings) in a child interpreter and reads what it reports. The "system CAs" there are a CA
made here, named by SSL_CERT_FILE, so the outcome does not depend on the host's bundle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trustme

REPO = Path(__file__).resolve().parents[2]

_REPORT = """
import json, mimetypes, os, ssl, sys
# A system MIME table of the test's own, as /etc/mime.types is on Debian.
mimetypes.knownfiles.append(sys.argv[1])
from agent.__main__ import load_runtime
load_runtime()
modules = sorted(sys.modules)
# Everything the runtime may import later: both backends, the Kubernetes helpers.
import agent.dcs.etcd, agent.dcs.kubernetes, agent.kube.events, agent.kube.labels
from agent.lean import system_ca_context
print(json.dumps({
    "aiohttp": sorted(m for m in sys.modules if m.partition(".")[0] == "aiohttp"),
    "env": [os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")],
    "system_cas": system_ca_context().cert_store_stats()["x509"],
    "mime_read": mimetypes.inited,
    "modules": modules,
}))
"""

# A peer served over https with a certificate of the "system" CA; the agent's peer client,
# with no api.tls of its own, must verify it against the system CAs.
_PEER = """
import asyncio, json, ssl, sys
from agent.__main__ import load_runtime
load_runtime()
from agent.clock import FakeClock
from agent.http.routing import App, Request, Response, json_response
from agent.http.server import HttpServer
from agent.config import ApiSettings, DcsKind, DcsSettings, EtcdSettings, PostgresSettings
from agent.config import Secret, Settings
from agent.model import Member, MemberName, PgState, Role
from agent.peers import HttpPeers

async def main(cert: str, key: str) -> bool:
    async def health(request: Request) -> Response:
        return json_response({"role": "replica", "state": "running"})
    app = App()
    app.add_get("/health", health)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = await HttpServer.start(app, "127.0.0.1", 0, ssl_context=server_tls)
    port = server.port
    settings = Settings(
        name="a", cluster="demo", run_dir="/nonexistent/run",
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=PostgresSettings(data_dir="/nonexistent/data"),
        api=ApiSettings(token=Secret("t")),
    )
    peers = HttpPeers(settings, FakeClock())
    member = Member(
        name=MemberName("b"), role=Role.REPLICA, state=PgState.RUNNING,
        api_url=f"https://127.0.0.1:{port}", host="127.0.0.1", port=5432,
    )
    try:
        (status,) = await peers.health([member])
        return status.reachable
    finally:
        await peers.close()
        await server.close()

print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
"""


def _child(code: str, env: dict[str, str], *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _mime_table(tmp_path: Path) -> str:
    (tmp_path / "mime.types").write_text("application/x-pgwarden-test\tpgwtest\n")
    return str(tmp_path / "mime.types")


def _system_ca(tmp_path: Path) -> tuple[trustme.CA, dict[str, str]]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "system-ca.pem"))
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["SSL_CERT_FILE"] = str(tmp_path / "system-ca.pem")
    return ca, env


def test_the_runtime_imports_no_aiohttp_nor_mime_table_and_leaves_things_as_they_were(
    tmp_path: Path,
) -> None:
    _, env = _system_ca(tmp_path)
    report = _child(_REPORT, env, _mime_table(tmp_path))
    assert isinstance(report, dict)
    # No aiohttp (about 9.5 MB, and its two CA bundles loaded at import), with either
    # backend: the API server and every client are the agent's own (agent/http/).
    assert report["aiohttp"] == []
    assert report["env"] == [env["SSL_CERT_FILE"], None]
    assert report["system_cas"] == 1  # the agent's own context, on first use, trusts them
    # Nothing read the system's MIME tables (aiohttp.web did at import: about 0.35 MB).
    assert report["mime_read"] is False


def test_a_peer_over_https_is_verified_against_the_system_cas(
    tmp_path: Path,
) -> None:
    ca, env = _system_ca(tmp_path)
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp_path / "peer.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "peer.crt"))
    args = (str(tmp_path / "peer.crt"), str(tmp_path / "peer.key"))
    assert _child(_PEER, env, *args) is True
    # ... and one whose CA the system does not trust is not.
    (tmp_path / "other").mkdir()
    _, other = _system_ca(tmp_path / "other")
    assert _child(_PEER, other, *args) is False


def test_the_running_agent_imports_no_module_it_needs_only_on_demand(tmp_path: Path) -> None:
    _, env = _system_ca(tmp_path)
    report = _child(_REPORT, env, _mime_table(tmp_path))
    assert isinstance(report, dict)
    loaded = set(report["modules"])
    # importlib.metadata: only for `--version` (0.6 MB); the OpenAPI document: only when asked
    # for (0.1 MB); the rest: other commands' code.
    on_demand = {
        "aiohttp.web",  # the API has its own server (agent/http/server.py)
        "importlib.metadata",
        "agent.api.openapi",
        "agent.api.openapi_schemas",
        "agent.ctl",
        "agent.demo",
        "agent.rollout",
        "agent.config.reference",
    }
    assert loaded & on_demand == set()
    # The DCS backend is imported by the configured kind only (agent.app.build_dcs), and the
    # Kubernetes helpers (labels, Events) only with Kubernetes settings.
    backends = {m for m in loaded if m.startswith(("agent.dcs.etcd", "agent.dcs.kubernetes"))}
    assert backends == set()
    assert {m for m in loaded if m.startswith("agent.kube")} == set()
