"""`pgwarden ctl rollout STATEFULSET`: update the pods of an `OnDelete` StatefulSet to its new
revision with one switchover (the order and the rules are agent/rollout.py's, a pure function
of what this shell observes).

Each round it reads the StatefulSet, its pods and the PodDisruptionBudgets from the Kubernetes
API (the operator's credentials: a kubeconfig, or a service account in a pod) and the
cluster view from the members' REST API (`--url`, `--token`), then does the one step
`rollout.next_step` names: delete a pod (with a uid precondition), or ask for a switchover
(POST /switchover), and waits for its effect (the pod back with the new revision; the new
leader) before the next round. An unhealthy cluster stops it before the first step; after a
step it waits up to `--timeout` for the cluster to heal, then stops (exit 1). Run it again to
continue: what is updated already is not touched again.

Kubernetes permissions it needs (k8s/examples/operator-rollout/role.yaml): get statefulsets
(apps), list and delete pods, list poddisruptionbudgets (policy).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TextIO
from urllib.parse import quote

import aiohttp
import yaml

from agent import rollout
from agent.ctl import CtlError, Target, request

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class Io(Protocol):
    @property
    def out(self) -> TextIO: ...
    @property
    def sleep(self) -> Callable[[float], Awaitable[None]]: ...
    @property
    def monotonic(self) -> Callable[[], float]: ...
    @property
    def env(self) -> Mapping[str, str]: ...


def add_parser(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    sub = add("rollout", "update an OnDelete StatefulSet's pods: replicas, switchover, old leader")
    sub.add_argument("statefulset", help="the StatefulSet's name")
    sub.add_argument("-n", "--namespace", help="default: the kubeconfig context's, or the pod's")
    sub.add_argument("--kubeconfig", help="default $KUBECONFIG, ~/.kube/config, or in-cluster")
    sub.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    sub.add_argument("--timeout", type=float, default=600.0, help="seconds to wait per step")
    sub.add_argument("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------- Kubernetes


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeAccess:
    server: str
    namespace: str
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None  # None: plain http (or the system CAs)


def _pick(entries: object, name: object, what: str) -> Mapping[str, object]:
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name:
            inner = entry.get(what)
            return inner if isinstance(inner, dict) else {}
    raise CtlError(f"kubeconfig: no {what} named {name!r}")


def _kubeconfig_access(path: Path, namespace: str | None) -> KubeAccess:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CtlError(f"kubeconfig {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise CtlError(f"kubeconfig {path}: not a mapping")
    context = _pick(doc.get("contexts"), doc.get("current-context"), "context")
    cluster = _pick(doc.get("clusters"), context.get("cluster"), "cluster")
    user = _pick(doc.get("users"), context.get("user"), "user")
    server = str(cluster.get("server") or "")
    if not server:
        raise CtlError(f"kubeconfig {path}: the cluster has no server")
    ctx: ssl.SSLContext | None = None
    if server.startswith("https"):
        ctx = ssl.create_default_context(cafile=_str(cluster.get("certificate-authority")))
        if isinstance(cluster.get("certificate-authority-data"), str):
            ctx.load_verify_locations(
                cadata=base64.b64decode(str(cluster["certificate-authority-data"])).decode()
            )
        if cluster.get("insecure-skip-tls-verify") is True:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if isinstance(user.get("client-certificate"), str):
            ctx.load_cert_chain(str(user["client-certificate"]), _str(user.get("client-key")))
    token = _str(user.get("token"))
    if token is None and isinstance(user.get("tokenFile"), str):
        token = Path(str(user["tokenFile"])).read_text().strip()
    return KubeAccess(
        server=server.rstrip("/"),
        namespace=namespace or _str(context.get("namespace")) or "default",
        token=token,
        ssl_context=ctx,
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def kube_access(
    kubeconfig: str | None, namespace: str | None, env: Mapping[str, str]
) -> KubeAccess:
    """From `--kubeconfig`, $KUBECONFIG (its first file), ~/.kube/config, or else the pod's
    service account. Raises CtlError naming what is wrong."""
    path = kubeconfig or (env.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
    home = Path(env.get("HOME") or "~").expanduser() / ".kube" / "config"
    if path is None and home.exists():
        path = str(home)
    try:
        if path is not None:
            return _kubeconfig_access(Path(path), namespace)
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise CtlError("no kubeconfig (--kubeconfig, $KUBECONFIG) and not in a pod")
        return KubeAccess(
            server=f"https://{host}:{port}",
            namespace=namespace or (SA_DIR / "namespace").read_text().strip(),
            token=(SA_DIR / "token").read_text().strip(),
            ssl_context=ssl.create_default_context(cafile=str(SA_DIR / "ca.crt")),
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CtlError(f"Kubernetes credentials: {exc}") from None


async def _kube(
    session: aiohttp.ClientSession,
    access: KubeAccess,
    method: str,
    path: str,
    body: object = None,
    *,
    timeout_s: float,
) -> Mapping[str, object]:
    headers = {"Accept": "application/json"}
    if access.token:
        headers["Authorization"] = f"Bearer {access.token}"
    try:
        async with (
            asyncio.timeout(timeout_s),
            session.request(
                method,
                access.server + path,
                json=body,
                headers=headers,
                ssl=access.ssl_context if access.ssl_context is not None else True,
            ) as response,
        ):
            text = await response.text()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise CtlError(f"Kubernetes API {method} {path}: {exc or type(exc).__name__}") from None
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {}
    if response.status >= 300:
        message = parsed.get("message") if isinstance(parsed, dict) else None
        raise CtlError(f"Kubernetes API {method} {path}: {response.status} {message or text}")
    return parsed if isinstance(parsed, dict) else {}


# ----------------------------------------------------------------------------- the shell


@dataclass(slots=True)
class _Shell:
    session: aiohttp.ClientSession
    access: KubeAccess
    target: Target
    name: str
    io: Io

    def _ns(self, group: str, plural: str) -> str:
        prefix = "/api/v1" if not group else f"/apis/{group}"
        return f"{prefix}/namespaces/{quote(self.access.namespace)}/{plural}"

    async def get(self, path: str) -> Mapping[str, object]:
        return await _kube(self.session, self.access, "GET", path, timeout_s=self.target.timeout_s)

    async def observe(self) -> rollout.Observation:
        sts = rollout.statefulset_from(
            await self.get(self._ns("apps/v1", "statefulsets") + "/" + quote(self.name))
        )
        if not sts.selector:
            raise CtlError(f"statefulset {self.name} has no spec.selector.matchLabels")
        selector = ",".join(f"{k}={v}" for k, v in sorted(sts.selector.items()))
        pods = await self.get(self._ns("", "pods") + "?labelSelector=" + quote(selector))
        pdbs = await self.get(self._ns("policy/v1", "poddisruptionbudgets"))
        reply = await request(self.session, self.target, "GET", "/cluster")
        if not reply.ok:
            raise CtlError(f"GET /cluster: {reply.error_message()}")
        return rollout.Observation(
            statefulset=sts,
            pods=rollout.pods_from(_items(pods)),
            cluster=rollout.cluster_from(reply.object()),
            disruptions_allowed=rollout.disruptions_from(_items(pdbs), sts.selector),
        )

    async def observe_tolerant(self) -> rollout.Observation | str:
        """An observation, or why none could be made (members restarting)."""
        try:
            return await self.observe()
        except CtlError as exc:
            return str(exc)


def _items(listed: Mapping[str, object]) -> list[object]:
    items = listed.get("items")
    return items if isinstance(items, list) else []


async def run_command(
    args: argparse.Namespace, session: aiohttp.ClientSession, target: Target, io: Io
) -> int:
    """`ctl rollout`; raises CtlError to exit 1 with its message."""
    access = kube_access(args.kubeconfig, args.namespace, io.env)
    shell = _Shell(session=session, access=access, target=target, name=args.statefulset, io=io)
    obs = await shell.observe()
    if args.dry_run:
        for number, step in enumerate(rollout.plan(obs), 1):
            _say(io, f"{number}. {rollout.describe(step)}")
        return 0
    step = rollout.next_step(obs)
    if isinstance(step, rollout.Unhealthy | rollout.Refuse):
        raise CtlError(f"not starting: {rollout.describe(step)}")
    started = io.monotonic()
    old_leaders: set[str] = set()
    while True:
        if isinstance(step, rollout.DeletePod) and step.pod in old_leaders:
            step = replace(step, was_leader=True)
        if isinstance(step, rollout.Switchover):
            old_leaders.add(step.leader)
        if isinstance(step, rollout.Done):
            _say(io, f"[{io.monotonic() - started:6.1f}s] {rollout.describe(step)}")
            return 0
        if isinstance(step, rollout.Refuse):
            raise CtlError(rollout.describe(step))
        _say(io, f"[{io.monotonic() - started:6.1f}s] {rollout.describe(step)}")
        if isinstance(step, rollout.DeletePod):
            await _delete_and_wait(shell, obs, step, args)
        elif isinstance(step, rollout.Switchover):
            await _switchover_and_wait(shell, step, args)
        obs, step = await _next_ready(shell, args, started)


async def _next_ready(
    shell: _Shell, args: argparse.Namespace, started: float
) -> tuple[rollout.Observation, rollout.Step]:
    """The next step that is not a wait, waiting up to --timeout for the cluster to heal."""
    io = shell.io
    deadline = io.monotonic() + args.timeout
    said = ""
    while True:
        obs = await shell.observe_tolerant()
        if isinstance(obs, str):
            step: rollout.Step = rollout.Unhealthy(obs)
        else:
            step = rollout.next_step(obs)
            if not isinstance(step, rollout.Unhealthy | rollout.WaitBudget):
                return obs, step
        line = rollout.describe(step)
        if line != said:
            _say(io, f"[{io.monotonic() - started:6.1f}s] waiting: {line}")
            said = line
        if io.monotonic() >= deadline:
            raise CtlError(f"stopped after {args.timeout:g} s: {line} (run it again to continue)")
        await _sleep(io, args.poll_interval)


async def _delete_and_wait(
    shell: _Shell, obs: rollout.Observation, step: rollout.DeletePod, args: argparse.Namespace
) -> None:
    """Delete the pod (only the very pod observed: uid precondition) and wait until the
    StatefulSet controller created it again with the new revision."""
    io = shell.io
    uid = next((p.uid for p in obs.pods if p.name == step.pod), "")
    body: dict[str, object] = {"kind": "DeleteOptions", "apiVersion": "v1"}
    if uid:
        body["preconditions"] = {"uid": uid}
    await _kube(
        shell.session,
        shell.access,
        "DELETE",
        shell._ns("", "pods") + "/" + quote(step.pod),
        body,
        timeout_s=shell.target.timeout_s,
    )
    deadline = io.monotonic() + args.timeout
    while True:
        current = await shell.observe_tolerant()
        if not isinstance(current, str):
            pod = next((p for p in current.pods if p.name == step.pod), None)
            if pod is not None and pod.uid != uid and pod.revision == step.new_revision:
                return
        if io.monotonic() >= deadline:
            raise CtlError(
                f"pod {step.pod} not back with revision {step.new_revision} after "
                f"{args.timeout:g} s (run it again to continue)"
            )
        await _sleep(io, args.poll_interval)


async def _switchover_and_wait(
    shell: _Shell, step: rollout.Switchover, args: argparse.Namespace
) -> None:
    io = shell.io
    body = {"leader": step.leader, "candidate": step.candidate}
    reply = await request(shell.session, shell.target, "POST", "/switchover", body)
    if not reply.ok:
        raise CtlError(f"switchover refused: {reply.error_message()}")
    deadline = io.monotonic() + args.timeout
    while True:
        current = await shell.observe_tolerant()
        if not isinstance(current, str) and current.cluster.leader == step.candidate:
            return
        if io.monotonic() >= deadline:
            raise CtlError(f"{step.candidate} is not the leader after {args.timeout:g} s")
        await _sleep(io, args.poll_interval)


async def _sleep(io: Io, seconds: float) -> None:
    await io.sleep(seconds)


def _say(io: Io, line: str) -> None:
    print(line, file=io.out, flush=True)
