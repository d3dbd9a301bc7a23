"""The agent's HTTP clients are its own (agent/http/client.py), not aiohttp's (issue 15: aiohttp
is about 9.5 MB of every agent's resident memory, and `pgwarden run` pays for it as soon as
any module it imports pulls it in). Checked in a fresh interpreter per module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CLIENT_MODULES = [
    "agent.http.client",
    "agent.dcs.etcd",
    "agent.kube.client",
    "agent.dcs.kubernetes",
    "agent.peers",
]


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_the_client_module_imports_no_aiohttp(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if 'aiohttp' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
