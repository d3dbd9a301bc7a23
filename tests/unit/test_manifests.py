"""The Kubernetes manifests (k8s/): they render, validate against the Kubernetes schemas
offline, and agree with the agent they deploy (settings, probe routes, labels, timing, RBAC).

Skipped when kubectl (which renders the kustomizations) is not installed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.api import build_app
from agent.api.auth import MUTATING_METHODS
from agent.api_settings import ClientVerify
from agent.clock import FakeClock
from agent.config import DcsKind, LockKind, Settings, Timing, load_settings
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.metrics import Metrics
from agent.model import AgentStatus, LocalRequestKind, MemberName, PgState, Role
from agent.postgres_settings import TlsVerify
from tests.support import manifests as m
from tests.support.rbac import allowed, grants
from tests.support.served import Served

pytestmark = pytest.mark.skipif(m.kubectl() is None, reason="kubectl is not installed")

KUBERNETES_VERSION = "1.32"  # the installed kubectl's; schemas are bundled (no network)
EXAMPLES = ("kubernetes-dcs", "kubernetes-dcs-endpoints", "migrate-to-lease", "etcd-dcs")
ALL = ("base", *EXAMPLES)
KUBE_DCS = ("kubernetes-dcs", "kubernetes-dcs-endpoints", "migrate-to-lease")
LOCK_OF_EXAMPLE = {
    "kubernetes-dcs": LockKind.LEASE,
    "kubernetes-dcs-endpoints": LockKind.ENDPOINTS,
    "migrate-to-lease": LockKind.ENDPOINTS_AND_LEASE,
}
APP_LABELS = {"app.kubernetes.io/name": "pgwarden", "app.kubernetes.io/instance": "pgwarden"}


@cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(m.render(name))


def objects(name: str) -> list[dict[str, Any]]:
    return list(rendered(name))


@pytest.fixture(params=EXAMPLES)
def example(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(example: str, tmp_path: Path) -> Settings:
    return m.pod_settings(objects(example), tmp_path)


def pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = m.find(objects(name), "StatefulSet")["spec"]["template"]["spec"]
    return spec


def handover_bound_s(t: Timing) -> float:
    """The longest a SIGTERM'd agent may take to stop (see the StatefulSet's comment):
    a leader's hand-over is a checkpoint, a stop and a wait for the candidate, each bounded by
    switchover_timeout_s; one DCS read, one probe and the release, each by retry_timeout_s;
    stopping PostgreSQL (a replica) and the final cleanup, each by shutdown_timeout_s."""
    return 3 * t.switchover_timeout_s + 3 * t.retry_timeout_s + 2 * t.shutdown_timeout_s


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("name", ALL)
def test_every_kustomization_renders_the_objects_of_a_cluster(name: str) -> None:
    kinds = sorted(o["kind"] for o in objects(name))
    assert kinds == sorted(
        [
            "ConfigMap",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet",
        ]
    )


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("name", ALL)
def test_rendered_objects_validate_against_the_kubernetes_schemas_in_strict_mode(
    name: str, version: str
) -> None:
    for obj in objects(name):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {where}: {exc.message}")


def test_the_schema_check_rejects_an_unknown_field() -> None:
    """Guards the test above: strict validation really reports misspelt fields."""
    statefulset = m.find(objects("base"), "StatefulSet")
    broken = yaml.safe_load(yaml.safe_dump(statefulset))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_deploy_into_their_own_namespace(name: str) -> None:
    for obj in objects(name):
        assert obj["metadata"].get("namespace") == "pgwarden", obj["kind"]
    binding = m.find(objects(name), "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "pgwarden"


# --------------------------------------------------------------------------- the agent's settings


def test_the_mounted_settings_load_in_a_pod(example: str, settings: Settings) -> None:
    assert settings.name == m.POD_ENV["POD_NAME"]
    assert settings.postgresql.connect_host == m.POD_ENV["POD_IP"]
    assert settings.api.url == f"http://{m.POD_ENV['POD_IP']}:{settings.api.port}"
    assert settings.api.token is not None, "mutating API routes need a token"
    assert settings.postgresql.superuser.password is not None
    assert settings.postgresql.replication.password is not None
    assert settings.postgresql.os_user is None, "the container already runs as postgres"
    if example == "etcd-dcs":
        assert settings.dcs.kind is DcsKind.ETCD
    else:
        assert settings.dcs.kind is DcsKind.KUBERNETES
        assert settings.dcs.kubernetes is not None
        assert settings.dcs.kubernetes.namespace == m.POD_ENV["POD_NAMESPACE"]
        assert settings.dcs.kubernetes.pod_ip == m.POD_ENV["POD_IP"]
        assert settings.dcs.kubernetes.lock is LOCK_OF_EXAMPLE[example]


def test_the_container_provides_what_the_settings_point_at(
    example: str, settings: Settings
) -> None:
    spec = pod_spec(example)
    container = m.container(objects(example))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"postgresql": settings.postgresql.port, "api": settings.api.port}
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for e in container["env"]
    }
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_IP"] == "status.podIP"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {
        c["metadata"]["name"]
        for c in m.find(objects(example), "StatefulSet")["spec"]["volumeClaimTemplates"]
    }
    # The data directory is a subdirectory of the persistent volume.
    data_mount = str(Path(settings.postgresql.data_dir).parent)
    assert mounts[data_mount] in claims
    # The run directory keeps state that must outlive the pod (an unfinished clone's marker):
    # on the persistent volume too, beside the data directory, not inside it.
    assert str(Path(settings.run_dir).parent) == data_mount
    assert not Path(settings.run_dir).is_relative_to(settings.postgresql.data_dir)
    # The root filesystem is read-only: the other writable directories are emptyDirs.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The sockets go to a subdirectory of an emptyDir, never its mount point: Kubernetes makes
    # that root-owned and world-writable, and the entrypoint refuses it (docker/prepare.py).
    socket_dir = settings.postgresql.socket_dir
    assert socket_dir is not None
    socket_mount = str(Path(socket_dir).parent)
    assert "emptyDir" in volumes[mounts[socket_mount]], socket_dir
    # Settings and secrets are mounted from the ConfigMap and the Secret.
    assert mounts[m.mount_path(objects(example), m.CONFIG_VOLUME)] == m.CONFIG_VOLUME
    assert volumes[m.CONFIG_VOLUME]["configMap"]["name"].startswith(m.AGENT_CONFIGMAP + "-")
    assert volumes[m.SECRETS_VOLUME]["secret"]["secretName"] == "pgwarden-credentials"


def test_every_secret_file_in_the_settings_comes_from_the_mounted_secret(
    example: str, tmp_path: Path
) -> None:
    document = m.rendered_document(objects(example), tmp_path, m.POD_ENV)
    secrets_dir = m.mount_path(objects(example), m.SECRETS_VOLUME)
    files = re.findall(r"_file: (\S+)", yaml.safe_dump(document))
    assert len(files) == 3  # api token, superuser and replication passwords
    assert all(f.startswith(secrets_dir + "/") for f in files), files
    assert not re.search(r"\b(password|token): ", yaml.safe_dump(document)), "no inline secret"


def test_the_entrypoint_reads_the_settings_where_the_configmap_is_mounted() -> None:
    entrypoint = (m.REPO / "docker" / "entrypoint.sh").read_text()
    default = re.search(r"PGW_CONFIG_SOURCE:-([^}]+)\}", entrypoint)
    assert default is not None
    for name in EXAMPLES:
        assert m.mount_path(objects(name), m.CONFIG_VOLUME) == default.group(1)


# --------------------------------------------------------------------------- pods and timing


def test_the_pods_run_as_the_images_postgres_user() -> None:
    dockerfile = (m.REPO / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile, re.S)
    gid = re.search(r"groupadd .*--gid (\d+)", dockerfile)
    assert uid is not None and gid is not None
    security = pod_spec("base")["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(uid.group(1))
    assert security["runAsGroup"] == int(gid.group(1))
    assert security["fsGroup"] == int(gid.group(1))
    # Never a recursive ownership change over an existing data directory (mode 0700).
    assert security["fsGroupChangePolicy"] == "OnRootMismatch"


def test_the_grace_period_covers_the_sigterm_hand_over(example: str, settings: Settings) -> None:
    grace = pod_spec(example)["terminationGracePeriodSeconds"]
    assert grace >= handover_bound_s(settings.timing) + settings.timing.ttl_s / 2
    # No preStop hook: it would only delay the SIGTERM the agent hands over on.
    assert "lifecycle" not in m.container(objects(example))


def test_the_statefulset_starts_members_in_parallel_and_updates_them_on_delete() -> None:
    spec = m.find(objects("base"), "StatefulSet")["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "OnDelete"}


def test_the_liveness_probe_tolerates_more_than_a_lease_ttl_of_trouble(
    example: str, settings: Settings
) -> None:
    probe = m.container(objects(example))["livenessProbe"]
    tolerated_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert tolerated_s >= 3 * settings.timing.ttl_s
    assert probe["timeoutSeconds"] > settings.timing.retry_timeout_s


class _Inbox:
    def submit(self, kind: LocalRequestKind) -> None:
        raise AssertionError("probes must not queue requests")

    def wake(self) -> None:
        raise AssertionError("probes must not wake the loop")

    def accept_failsafe(self, leader: str) -> str | None:
        raise AssertionError("probes must not confirm a failsafe primary")


@pytest.fixture
async def agent_api(settings: Settings) -> AsyncIterator[Served]:
    """The agent's REST API built from the example's settings, serving a healthy replica."""
    clock = FakeClock()
    status = AgentStatus(
        name=MemberName(settings.name),
        cluster=settings.cluster,
        role=Role.REPLICA,
        state=PgState.STREAMING,
        api_url=settings.api.url,
        lag_bytes=0,
        observed_at=clock.monotonic(),
        dcs_ok=True,
    )
    app = build_app(
        settings=settings,
        status=lambda: status,
        dcs=MemoryDcs(MemoryStore(clock), settings.name, ttl_s=settings.timing.ttl_s, clock=clock),
        requests=_Inbox(),
        metrics=Metrics(),
        clock=clock,
    )
    async with await Served.start(app) as client:
        yield client


async def test_probes_use_routes_the_agent_serves_without_credentials(
    example: str, agent_api: Served
) -> None:
    container = m.container(objects(example))
    probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/liveness"
    for kind, probe in probes.items():
        get = probe["httpGet"]
        assert get["port"] == "api", kind
        assert get.get("scheme", "HTTP") == "HTTP"
        assert "httpHeaders" not in get, "the kubelet has no credentials to send"
        assert "GET" not in MUTATING_METHODS
        # A healthy streaming replica passes every probe, without credentials.
        response = await agent_api.get(get["path"])
        assert response.status == 200, f"{kind} {get['path']}: {await response.text()}"
    assert (await agent_api.get("/no-such-probe")).status == 404


# --------------------------------------------------------------------------- services and labels


def test_the_statefulset_selects_its_pods_by_the_cluster_labels_never_by_role(
    example: str, settings: Settings
) -> None:
    statefulset = m.find(objects(example), "StatefulSet")
    selector = statefulset["spec"]["selector"]["matchLabels"]
    template_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selector == APP_LABELS
    assert selector.items() <= template_labels.items()
    role_label = settings.dcs.kubernetes.role_label if settings.dcs.kubernetes else "role"
    assert role_label not in selector and role_label not in template_labels
    if settings.dcs.kubernetes is not None:
        assert dict(settings.dcs.kubernetes.labels) == selector


def test_the_headless_service_gives_stable_names_before_readiness(example: str) -> None:
    statefulset = m.find(objects(example), "StatefulSet")
    headless = m.find(objects(example), "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == APP_LABELS


@pytest.mark.parametrize("name", KUBE_DCS)
def test_the_primary_service_is_selector_less_and_named_after_the_cluster(
    name: str, tmp_path: Path
) -> None:
    settings = m.pod_settings(objects(name), tmp_path)
    primary = m.find(objects(name), "Service", settings.cluster)
    assert "selector" not in primary["spec"], "the leader's agent routes it"
    # The agent writes its endpoints with this port name (agent/dcs/kubernetes.py PORT_NAME).
    from agent.dcs.kubernetes import PORT_NAME  # noqa: PLC0415 - only this test needs it

    assert [p["name"] for p in primary["spec"]["ports"]] == [PORT_NAME]
    assert primary["spec"]["ports"][0]["port"] == settings.postgresql.port


def test_with_etcd_the_primary_service_selects_the_pod_labelled_primary(tmp_path: Path) -> None:
    primary = m.find(objects("etcd-dcs"), "Service", "pgwarden")
    assert primary["spec"]["selector"] == {**APP_LABELS, "role": "primary"}


def test_the_replicas_service_selects_the_role_label_the_agent_sets(
    example: str, settings: Settings
) -> None:
    replicas = m.find(objects(example), "Service", "pgwarden-replicas")
    k8s = settings.dcs.kubernetes
    role_label, replica_value = (k8s.role_label, k8s.replica_value) if k8s else ("role", "replica")
    assert replicas["spec"]["selector"] == {**APP_LABELS, role_label: replica_value}


def test_the_pod_disruption_budget_covers_the_pods_one_at_a_time(example: str) -> None:
    pdb = m.find(objects(example), "PodDisruptionBudget")
    template_labels = m.find(objects(example), "StatefulSet")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


# --------------------------------------------------------------------------- RBAC


def test_the_pods_run_under_the_service_account_the_role_is_bound_to(example: str) -> None:
    objs = objects(example)
    account = m.find(objs, "ServiceAccount")["metadata"]["name"]
    role = m.find(objs, "Role")["metadata"]["name"]
    binding = m.find(objs, "RoleBinding")
    assert pod_spec(example)["serviceAccountName"] == account
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "pgwarden"}
    ]


def test_the_endpoints_role_names_exactly_the_objects_of_this_cluster(tmp_path: Path) -> None:
    settings = m.pod_settings(objects("kubernetes-dcs-endpoints"), tmp_path)
    role = m.find(objects("kubernetes-dcs-endpoints"), "Role")
    cluster = settings.cluster
    assert allowed(role, "update", "", "endpoints", name=cluster)
    assert not allowed(role, "update", "", "endpoints", name="some-other-service")
    assert allowed(role, "update", "", "configmaps", name=f"{cluster}-config")
    assert not allowed(role, "update", "", "configmaps", name=m.AGENT_CONFIGMAP)
    assert allowed(role, "patch", "", "pods", name=settings.name)
    assert not allowed(role, "delete", "", "pods", name=settings.name)
    assert not allowed(role, "update", "coordination.k8s.io", "leases", name=f"{cluster}-leader")
    assert not any(g.resource in ("secrets", "*") for g in grants(role))


def test_the_lease_role_names_the_lease_and_the_endpointslice_and_only_reads_the_endpoints(
    tmp_path: Path,
) -> None:
    settings = m.pod_settings(objects("kubernetes-dcs"), tmp_path)
    role = m.find(objects("kubernetes-dcs"), "Role")
    cluster = settings.cluster
    assert allowed(role, "update", "coordination.k8s.io", "leases", name=f"{cluster}-leader")
    assert allowed(role, "update", "discovery.k8s.io", "endpointslices", name=cluster)
    assert allowed(role, "create", "discovery.k8s.io", "endpointslices")
    assert not allowed(role, "update", "discovery.k8s.io", "endpointslices", name="other")
    # The skipped-migration guard (agent/dcs/kubernetes/guard.py) reads the Endpoints lock.
    endpoints = {(g.verb, g.resource_names) for g in grants(role) if g.resource == "endpoints"}
    assert endpoints == {("get", (cluster,))}


def test_with_etcd_the_role_only_labels_pods_and_reports_events() -> None:
    role = m.find(objects("etcd-dcs"), "Role")
    assert {(g.verb, g.api_group, g.resource) for g in grants(role)} == {
        ("patch", "", "pods"),
        ("create", "events.k8s.io", "events"),
    }


# --------------------------------------------------------------------------- the image


def _dockerfile_runtime_stage() -> str:
    """The Dockerfile's last stage (the image that runs), without comments."""
    text = (m.REPO / "Dockerfile").read_text()
    stage = text.rsplit("\nFROM ", 1)[1]
    return "\n".join(line for line in stage.splitlines() if not line.lstrip().startswith("#"))


def test_the_image_runs_the_entrypoint_under_tini_as_the_postgres_user() -> None:
    stage = _dockerfile_runtime_stage()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", stage, re.M)
    assert entrypoint is not None
    assert yaml.safe_load(entrypoint.group(1)) == [
        "/usr/bin/tini",
        "--",
        "/usr/local/lib/pgwarden/entrypoint.sh",
    ]
    # The helper is installed next to the entrypoint, where the script looks for it.
    assert re.search(
        r"^COPY docker/entrypoint.sh docker/prepare.py /usr/local/lib/pgwarden/$", stage, re.M
    )
    assert re.search(r"^USER 999:999$", stage, re.M)
    assert " tini " in stage and "postgresql-15" in stage
    assert "create_main_cluster = false" in stage, "the agent alone runs initdb"
    # The container's command is the image's: no command or args in the pod template.
    for name in EXAMPLES:
        assert "command" not in m.container(objects(name))
        assert "args" not in m.container(objects(name))


def test_the_image_provides_what_the_settings_and_the_entrypoint_expect(
    example: str, settings: Settings
) -> None:
    stage = _dockerfile_runtime_stage()
    entrypoint = (m.REPO / "docker" / "entrypoint.sh").read_text()
    python = re.search(r"PGW_PYTHON:-([^}]+)\}", entrypoint)
    assert python is not None
    venv = str(Path(python.group(1)).parent.parent)
    assert f"COPY --from=build {venv} {venv}" in stage
    assert f"PATH={venv}/bin:{settings.postgresql.bin_dir}:" in stage  # pgwarden, pg_ctl
    assert f"PGDATA={settings.postgresql.data_dir} " in stage
    data_mount = str(Path(settings.postgresql.data_dir).parent)
    assert f"VOLUME {data_mount}" in stage


# --------------------------------------------------------------------------- the secure example
# k8s/examples/secure (issue 13, item 6): TLS for PostgreSQL and the API from the Secret
# `pgwarden-tls`, members addressed by DNS names the certificate holds, a NetworkPolicy.

SECURE = "secure"
TLS_VOLUME = "tls"


def secure_pod_env() -> dict[str, str]:
    """The container's environment in pod pgwarden-1: the downward-API values, then each
    literal variable with its $(VAR) references expanded as the kubelet does (only from
    variables defined earlier in the list)."""
    env = dict(m.POD_ENV)
    seen: set[str] = set()
    for var in m.container(objects(SECURE))["env"]:
        seen.add(var["name"])
        if "value" in var:
            env[var["name"]] = re.sub(
                r"\$\((\w+)\)",
                lambda ref: env[ref.group(1)] if ref.group(1) in seen else ref.group(0),
                var["value"],
            )
    return env


def secure_settings(directory: Path) -> Settings:
    """Settings as a pod of the secure example loads them (secret and TLS files faked)."""
    env = secure_pod_env()
    document = m.rendered_document(objects(SECURE), directory, env)
    fake_dir = directory / "fake"
    fake_dir.mkdir()
    for volume in (m.SECRETS_VOLUME, TLS_VOLUME):
        document = m._fake_secret_files(document, m.mount_path(objects(SECURE), volume), fake_dir)
    path = directory / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_settings(str(path), env)


def test_the_secure_example_renders_the_cluster_and_a_network_policy() -> None:
    kinds = sorted(o["kind"] for o in objects(SECURE))
    assert kinds == sorted([o["kind"] for o in objects("kubernetes-dcs")] + ["NetworkPolicy"])
    for obj in objects(SECURE):
        assert obj["metadata"].get("namespace") == "pgwarden", obj["kind"]


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
def test_the_secure_example_validates_against_the_kubernetes_schemas(version: str) -> None:
    for obj in objects(SECURE):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {where}: {exc.message}")


def test_the_secure_example_loads_with_tls_from_the_mounted_secret(tmp_path: Path) -> None:
    settings = secure_settings(tmp_path)
    tls_dir = m.mount_path(objects(SECURE), TLS_VOLUME)
    pg_tls, api_tls = settings.postgresql.tls, settings.api.tls
    assert pg_tls is not None and api_tls is not None
    assert pg_tls.verify is TlsVerify.FULL
    # Every TLS file was a path in the Secret's mount (faked here): the rendered document's.
    document = yaml.safe_dump(m.rendered_document(objects(SECURE), tmp_path / "r", m.POD_ENV))
    tls_files = re.findall(r"(?:cert|key|ca)_file: (\S+)", document)
    assert len(tls_files) == 6 and all(f.startswith(tls_dir + "/") for f in tls_files)
    volumes = {v["name"]: v for v in pod_spec(SECURE)["volumes"]}
    assert volumes[TLS_VOLUME]["secret"]["secretName"] == "pgwarden-tls"
    assert volumes[TLS_VOLUME]["secret"]["defaultMode"] == 0o440
    assert settings.postgresql.os_user is None


def test_secure_members_are_addressed_by_the_dns_names_the_certificate_holds(
    tmp_path: Path,
) -> None:
    """verify-full and the API's https checks need a name in the certificate: each member's
    name in the headless Service (the StatefulSet's serviceName), never its pod IP."""
    settings = secure_settings(tmp_path)
    service = m.find(objects(SECURE), "StatefulSet")["spec"]["serviceName"]
    headless = m.find(objects(SECURE), "Service", service)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # reachable while cloning
    name = f"{m.POD_ENV['POD_NAME']}.{service}.{m.POD_ENV['POD_NAMESPACE']}.svc"
    assert settings.postgresql.connect_host == name
    assert settings.api.url == f"https://{name}:{settings.api.port}"
    assert m.POD_ENV["POD_IP"] not in (settings.postgresql.connect_host, settings.api.url)


def test_secure_probes_use_https_and_clients_need_no_certificate(tmp_path: Path) -> None:
    """The kubelet presents no client certificate: `required` would fail every probe."""
    settings = secure_settings(tmp_path)
    container = m.container(objects(SECURE))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    assert settings.api.tls is not None
    assert settings.api.tls.verify_client is not ClientVerify.REQUIRED


def test_secure_pg_hba_admits_no_connection_without_tls(tmp_path: Path) -> None:
    lines = secure_settings(tmp_path).postgresql.pg_hba
    assert lines and all(line.split()[0] == "hostssl" for line in lines), lines


def _admits(
    policy: dict[str, Any],
    *,
    pod_labels: dict[str, str],
    namespace: str,
    port: str,
) -> bool:
    """Whether the NetworkPolicy lets a pod (its labels, its namespace) connect to the named
    port of a selected pod in the policy's namespace (the rules as Kubernetes applies them:
    a podSelector alone means the policy's own namespace; the peers of a rule are ORed)."""
    own_namespace = policy["metadata"]["namespace"]
    namespace_labels = {"kubernetes.io/metadata.name": namespace}

    def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
        assert set(selector) <= {"matchLabels"}, "only matchLabels is evaluated here"
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    def peer_admits(peer: dict[str, Any]) -> bool:
        assert set(peer) <= {"podSelector", "namespaceSelector"}, peer
        if "namespaceSelector" in peer:
            ns_ok = matches(peer["namespaceSelector"], namespace_labels)
        else:
            ns_ok = namespace == own_namespace
        return ns_ok and matches(peer.get("podSelector", {}), pod_labels)

    for rule in policy["spec"]["ingress"]:
        assert rule.get("from") and rule.get("ports"), "a rule without peers or ports admits all"
        if any(p["port"] == port for p in rule["ports"]) and any(
            peer_admits(peer) for peer in rule["from"]
        ):
            return True
    return False


MEMBER = dict(APP_LABELS)
CLIENT = {"pgwarden.io/client": "true"}


@pytest.mark.parametrize(
    ("who", "pod_labels", "namespace", "port", "admitted"),
    [
        ("a member, for replication", MEMBER, "pgwarden", "postgresql", True),
        ("a member, for peer checks", MEMBER, "pgwarden", "api", True),
        ("an application pod", CLIENT, "pgwarden", "postgresql", True),
        ("an application pod, at the API", CLIENT, "pgwarden", "api", False),
        ("an unlabelled pod", {}, "pgwarden", "postgresql", False),
        ("an unlabelled pod, at the API", {"app": "x"}, "pgwarden", "api", False),
        ("Prometheus, for /metrics", {"app": "prometheus"}, "monitoring", "api", True),
        ("Prometheus, at PostgreSQL", {"app": "prometheus"}, "monitoring", "postgresql", False),
        ("a client label in another namespace", CLIENT, "other", "postgresql", False),
        ("member labels in another namespace", MEMBER, "other", "api", False),
    ],
)
def test_the_network_policy_lets_only_members_clients_and_monitoring_in(
    who: str, pod_labels: dict[str, str], namespace: str, port: str, admitted: bool
) -> None:
    policy = m.find(objects(SECURE), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert _admits(policy, pod_labels=pod_labels, namespace=namespace, port=port) is admitted, who


def test_the_network_policy_covers_the_members_and_names_their_ports() -> None:
    policy = m.find(objects(SECURE), "NetworkPolicy")
    template = m.find(objects(SECURE), "StatefulSet")["spec"]["template"]
    assert policy["spec"]["podSelector"] == {"matchLabels": APP_LABELS}
    assert all(template["metadata"]["labels"].get(k) == v for k, v in APP_LABELS.items())
    names = {p["name"] for p in m.container(objects(SECURE))["ports"]}
    used = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert used == names == {"postgresql", "api"}
