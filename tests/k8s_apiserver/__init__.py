"""An in-tree Kubernetes API server for tests (no real kube-apiserver can run here).

It serves core/v1 pods, endpoints, services, configmaps, namespaces, discovery.k8s.io/v1
endpointslices and coordination.k8s.io/v1 leases with the semantics clients depend on:
one cluster-wide resourceVersion, 409 Conflict on stale writes and failed delete
preconditions, merge / strategic-merge / JSON patches, label and field selectors, watches that
resume from a resourceVersion (410 Expired when it is too old), bearer tokens, TLS, fault
injection and an audit log. kubectl get/label/annotate work against it.

Run it in-process with `KubeApiServer` or as a process with
`python -m tests.k8s_apiserver --port P [--tls-cert F --tls-key F] [--token T[=USER]]
[--audit-log FILE] [--history-size N] [--bookmark-interval S]`.
"""

from tests.k8s_apiserver.faults import Fault, FaultMode
from tests.k8s_apiserver.server import KubeApiServer, ServerOptions

__all__ = ["Fault", "FaultMode", "KubeApiServer", "ServerOptions"]
