"""`pgwarden ctl rollout`'s Kubernetes credentials (agent/ctl_rollout.py `kube_access`): a
kubeconfig's current context, or a clear error that names what is missing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from agent import ctl
from agent.ctl import CtlError
from agent.ctl_rollout import kube_access


def _kubeconfig(tmp_path: Path, **user: object) -> Path:
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1/"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_the_current_context_gives_server_token_and_namespace(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, token="t0k")
    access = kube_access(str(path), None, {})
    assert (access.server, access.token, access.namespace) == (
        "http://127.0.0.1:1",
        "t0k",
        "default",
    )
    assert kube_access(None, "ns", {"KUBECONFIG": str(path)}).namespace == "ns"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert kube_access(str(_kubeconfig(tmp_path, tokenFile=str(token_file))), None, {}).token == (
        "from-file"
    )


def test_bad_credentials_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CtlError, match="not in a pod"):
        kube_access(None, None, {"HOME": str(tmp_path)})
    with pytest.raises(CtlError, match=r"kubeconfig .*missing"):
        kube_access(str(tmp_path / "missing"), None, {})
    bad = tmp_path / "bad"
    bad.write_text(yaml.safe_dump({"current-context": "nope", "contexts": []}))
    with pytest.raises(CtlError, match="no context named 'nope'"):
        kube_access(str(bad), None, {})


async def test_the_command_reports_an_unreachable_api_server(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["rollout", "pg", f"--kubeconfig={_kubeconfig(tmp_path, token='t')}"]
    assert await ctl.run(argv, env={}, out=out, err=err) == 1
    assert "Kubernetes API GET /apis/apps/v1/namespaces/default/statefulsets/pg" in err.getvalue()
    assert out.getvalue() == ""
