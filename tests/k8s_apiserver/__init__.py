"""An in-tree Kubernetes API server for tests (no real kube-apiserver can run here).

It serves core/v1 pods, endpoints, services, configmaps, namespaces, discovery.k8s.io/v1
endpointslices, coordination.k8s.io/v1 leases, events.k8s.io/v1 events (with the real server's
field validation of Events on create, validation.py), apps/v1 statefulsets and
controllerrevisions and policy/v1 poddisruptionbudgets (stored only: no controller updates
their status or creates pods; tests/support/statefulset.py plays those controllers) with the
semantics clients depend on: one cluster-wide resourceVersion, 409 Conflict on stale writes and
failed delete preconditions, merge / strategic-merge / JSON patches, label and field selectors,
watches that resume from a resourceVersion (410 Expired when it is too old), bearer tokens,
TLS, fault injection and an audit log. kubectl get/label/annotate work against it.

Known differences from a real kube-apiserver (on purpose, to stay small):
- strategic merge patch merges lists by key only for a table of well-known fields
  (patch.py `MERGE_KEYS`), other lists are replaced; `$patch`, `$retainKeys`,
  `$deleteFromPrimitiveList` are honoured, `$setElementOrder` is ignored;
  `application/apply-patch+yaml` (server-side apply) is a 415; no managedFields;
- no finalizers or graceful deletion: DELETE removes at once; no admission, no RBAC
  enforcement (the audit log records what an RBAC Role must allow), no spec validation
  beyond names, labels and string maps;
- create keeps a given `status` (so tests can make pods with a podIP); a Pod without one
  gets `phase: Pending`;
- a watch or list from a future resourceVersion is a 504 at once (the real server waits
  up to 3 s first); BOOKMARKs every `bookmark_interval_s` (default 60 s);
- request bodies: JSON, YAML, and Kubernetes protobuf only for ConfigMap and Namespace (what
  `kubectl create configmap|namespace` send, bodies.py); other media types and the protobuf
  of other kinds are a 415 UnsupportedMediaType `Status` (client-go does not retry those in
  JSON: its 415 fallback is for CBOR only, so e.g. `kubectl create service` fails);
- /openapi/v3 is a minimal document per group version (openapi.py): operations, path
  parameters and `fieldValidation`, no schemas; enough for `kubectl create -f` / `replace -f`
  / `apply -f` with the default strict validation (which then relies on the server; the
  server keeps unknown fields). `apply -f` of a changed object warns "error calculating patch
  from openapi v3 spec" and still patches. /openapi/v2 is 404;
- the admin endpoints (`/_fault`, `/_audit`, `/_compact`, `/_state`) need no token.

Run it in-process with `KubeApiServer` or as a process with
`python -m tests.k8s_apiserver --port P [--tls-cert F --tls-key F] [--token T[=USER]]
[--audit-log FILE] [--history-size N] [--bookmark-interval S]`.
"""

from tests.k8s_apiserver.faults import Fault, FaultMode
from tests.k8s_apiserver.server import KubeApiServer, ServerOptions

__all__ = ["Fault", "FaultMode", "KubeApiServer", "ServerOptions"]
