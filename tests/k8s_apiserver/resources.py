"""The resource types the test API server serves, with the per-type behaviour of the real
registry strategies that matters to clients (create-on-update, unconditional updates, status
subresource, what DELETE returns)."""

from __future__ import annotations

from dataclasses import dataclass

READ_VERBS = ("get", "list", "watch")
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceType:
    """One REST resource (e.g. `pods` in core/v1)."""

    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    # PUT on a missing object creates it (Endpoints, Lease, Service do; Pod, ConfigMap don't).
    create_on_update: bool = False
    # PUT without metadata.resourceVersion is accepted (false for Lease: 422 Invalid).
    unconditional_update: bool = True
    # Has a /status subresource: the main resource ignores status changes and vice versa.
    has_status: bool = False
    # DELETE answers with the deleted object (Pod, Service) instead of a Success Status.
    delete_returns_object: bool = False
    # metadata.generation is maintained (incremented on changes outside metadata/status).
    has_generation: bool = False

    @property
    def api_version(self) -> str:
        """`v1` or `group/version`."""
        return self.version if self.group == "" else f"{self.group}/{self.version}"

    @property
    def group_resource(self) -> str:
        """`pods` or `leases.coordination.k8s.io` (as used in error messages)."""
        return self.plural if self.group == "" else f"{self.plural}.{self.group}"


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        group="",
        version="v1",
        plural="pods",
        singular="pod",
        kind="Pod",
        namespaced=True,
        short_names=("po",),
        has_status=True,
        delete_returns_object=True,
        has_generation=True,
    ),
    ResourceType(
        group="",
        version="v1",
        plural="endpoints",
        singular="endpoints",
        kind="Endpoints",
        namespaced=True,
        short_names=("ep",),
        create_on_update=True,
    ),
    ResourceType(
        group="",
        version="v1",
        plural="services",
        singular="service",
        kind="Service",
        namespaced=True,
        short_names=("svc",),
        create_on_update=True,
        has_status=True,
        delete_returns_object=True,
    ),
    ResourceType(
        group="",
        version="v1",
        plural="configmaps",
        singular="configmap",
        kind="ConfigMap",
        namespaced=True,
        short_names=("cm",),
    ),
    ResourceType(
        group="",
        version="v1",
        plural="namespaces",
        singular="namespace",
        kind="Namespace",
        namespaced=False,
        short_names=("ns",),
        has_status=True,
        delete_returns_object=True,
    ),
    ResourceType(
        group="discovery.k8s.io",
        version="v1",
        plural="endpointslices",
        singular="endpointslice",
        kind="EndpointSlice",
        namespaced=True,
    ),
    ResourceType(
        group="coordination.k8s.io",
        version="v1",
        plural="leases",
        singular="lease",
        kind="Lease",
        namespaced=True,
        create_on_update=True,
        unconditional_update=False,
    ),
    ResourceType(
        group="events.k8s.io",
        version="v1",
        plural="events",
        singular="event",
        kind="Event",
        namespaced=True,
        short_names=("ev",),
        create_on_update=True,
    ),
    # Stored only: no controller runs here. A test (tests/support/statefulset.py) plays the
    # StatefulSet controller (pods again at status.updateRevision) and the disruption
    # controller (the PodDisruptionBudget's status.disruptionsAllowed).
    ResourceType(
        group="apps",
        version="v1",
        plural="statefulsets",
        singular="statefulset",
        kind="StatefulSet",
        namespaced=True,
        short_names=("sts",),
        has_status=True,
        has_generation=True,
    ),
    ResourceType(
        group="apps",
        version="v1",
        plural="controllerrevisions",
        singular="controllerrevision",
        kind="ControllerRevision",
        namespaced=True,
    ),
    ResourceType(
        group="policy",
        version="v1",
        plural="poddisruptionbudgets",
        singular="poddisruptionbudget",
        kind="PodDisruptionBudget",
        namespaced=True,
        short_names=("pdb",),
        has_status=True,
        has_generation=True,
    ),
)


def find_resource(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource served at group/version/plural, if any."""
    for res in RESOURCES:
        if res.group == group and res.version == version and res.plural == plural:
            return res
    return None


def group_versions() -> dict[str, list[str]]:
    """Served versions per group ("" = core)."""
    groups: dict[str, list[str]] = {}
    for res in RESOURCES:
        versions = groups.setdefault(res.group, [])
        if res.version not in versions:
            versions.append(res.version)
    return groups
