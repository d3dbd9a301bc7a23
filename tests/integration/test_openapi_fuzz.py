"""A property-based fuzzer of the REST API, driven by its OpenAPI document, against a live
agent (one member: real etcd, real PostgreSQL, the agent as a process).

For every documented route and method, hypothesis generates requests from the document's
schemas (valid bodies and query values) mixed with arbitrary JSON, non-JSON bytes and odd
query strings, each sent without credentials, with wrong ones, and (second phase) with the
right token. Every answer must: not be a 500; carry a status the document lists for that
operation (404/405 only for what the router refuses); be JSON that matches the documented
schema of that status (the Prometheus text for /metrics). Requests without valid
credentials must change nothing: every etcd key and value but the members' own records (which
the agent rewrites as its WAL position moves) is the same before and after, and no local
request (restart, reinitialize) was queued.

Bounded: a fixed number of examples per operation, derandomized, no example database.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode, urlsplit

import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api import openapi
from agent.localcluster import LocalCluster
from tests.support.cluster import converge, local_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EXAMPLES = 25
SEEN: Counter[tuple[str, str, int]] = Counter()  # (method, path, status): answers seen
METHODS = ("get", "post", "patch", "put", "delete")
DOCUMENT = openapi.document()
COMPONENTS = DOCUMENT["components"]
assert isinstance(COMPONENTS, dict)
SCHEMAS = COMPONENTS["schemas"]
assert isinstance(SCHEMAS, dict)

Schema = Mapping[str, object]


# ------------------------------------------------------------------------- strategies


def _resolve(schema: Schema) -> Schema:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        resolved = SCHEMAS[ref.rsplit("/", 1)[-1]]
        assert isinstance(resolved, dict)
        return resolved
    return schema


_NAMES = st.sampled_from(["pg-0", "pg-1", "", "x" * 300, "pg-0\n", "../etc", "ü"])
_TEXT = st.one_of(_NAMES, st.text(max_size=30))
# ISO-8601 times with a zone, the extremes included (the year 1 and 9999, zones of +-23:59).
_TIMESTAMPS = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.one_of(st.datetimes(), st.datetimes(min_value=datetime(9999, 12, 31))),
    st.integers(min_value=-1439, max_value=1439),
) | st.just("9999-12-31T23:59:59-23:59")  # after 9999 in UTC (finding 1)


def from_schema(schema: Schema) -> st.SearchStrategy[object]:
    """Values valid against `schema` (the subset of JSON Schema the document uses)."""
    schema = _resolve(schema)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        enum = schema["enum"]
        assert isinstance(enum, list)
        return st.sampled_from(enum)
    if "oneOf" in schema:
        options = schema["oneOf"]
        assert isinstance(options, list)
        return st.one_of(*(from_schema(o) for o in options))
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of(*(from_schema({**schema, "type": k}) for k in kind))
    if kind == "object":
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        assert isinstance(properties, dict) and isinstance(required, list)
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in properties.items() if k in required},
            optional={k: from_schema(v) for k, v in properties.items() if k not in required},
        )
    if kind == "array":
        items = schema.get("items", {})
        assert isinstance(items, dict)
        return st.lists(from_schema(items), max_size=3)
    if kind == "string" and schema.get("format") == "date-time":
        return st.one_of(_TIMESTAMPS, _TEXT)
    if kind == "string":
        return _TEXT
    if kind == "integer":
        low = schema.get("minimum")
        return st.integers(min_value=low if isinstance(low, int) else None)
    if kind == "number":
        return st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _ANY_JSON


_ANY_JSON: st.SearchStrategy[object] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        _TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8,
)


@dataclass(frozen=True, slots=True)
class Operation:
    path: str
    method: str
    spec: Mapping[str, object]

    @property
    def mutating(self) -> bool:
        return self.method != "get"

    def body_schema(self) -> Schema | None:
        body = self.spec.get("requestBody")
        if not isinstance(body, dict):
            return None
        schema = body["content"]["application/json"]["schema"]
        assert isinstance(schema, dict)
        return schema

    def response_schema(self, status: int) -> Schema | None:
        """The documented JSON schema for `status` (None: not JSON); KeyError: undocumented."""
        responses = self.spec["responses"]
        assert isinstance(responses, dict)
        answer = responses[str(status)]
        content = answer.get("content", {})
        if "application/json" not in content:
            return None
        schema = content["application/json"]["schema"]
        assert isinstance(schema, dict)
        return schema


def operations() -> list[Operation]:
    paths = DOCUMENT["paths"]
    assert isinstance(paths, dict)
    return [
        Operation(path, method, spec)
        for path, ops in sorted(paths.items())
        for method, spec in sorted(ops.items())
        if method in METHODS
    ]


@dataclass(frozen=True, slots=True)
class Request:
    query: str
    body: bytes | None
    content_type: str | None


def requests_for(op: Operation) -> st.SearchStrategy[Request]:
    declared = op.spec.get("parameters", [])
    assert isinstance(declared, list)
    params = [str(p["name"]) for p in declared]
    query = st.one_of(
        st.just(""),
        st.dictionaries(
            st.sampled_from([*params, "x", "lag"]),
            st.one_of(st.sampled_from(["1MB", "0", "-1", "16kB", "1e99", "abc"]), _TEXT),
            max_size=2,
        ).map(urlencode),
    )
    schema = op.body_schema()
    json_bodies = _ANY_JSON if schema is None else st.one_of(from_schema(schema), _ANY_JSON)
    body = st.one_of(
        st.none(),
        json_bodies.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=40),
        st.sampled_from([b"{", b"[]", b'{"a":', b"\xff\xfe", b"null", b"{}" + b" " * 70000]),
    )
    content_type = st.sampled_from(["application/json", None, "text/plain"])
    return st.builds(Request, query=query, body=body, content_type=content_type)


# ------------------------------------------------------------------------- the live agent


@dataclass(frozen=True, slots=True)
class Agent:
    cluster: LocalCluster
    host: str
    port: int

    def send(
        self, op: Operation, request: Request, authorization: str | None
    ) -> tuple[int, str, bytes]:
        """One request; (status, content type, body)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            headers = {}
            if authorization is not None:
                headers["Authorization"] = authorization
            if request.content_type is not None:
                headers["Content-Type"] = request.content_type
            url = op.path + (f"?{request.query}" if request.query else "")
            connection.request(op.method.upper(), url, body=request.body, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.getheader("Content-Type", ""), answer.read()
        finally:
            connection.close()

    def dcs_state(self) -> dict[str, str]:
        """Every etcd key and value, the members' own records and the leader's `position` left
        out (rewritten by the agent as it runs: the position moves with the WAL)."""
        body = json.dumps({"key": base64.b64encode(b"\0").decode(), "range_end": "AA=="})
        endpoint = urlsplit(self.cluster.etcd_endpoints[0])
        connection = http.client.HTTPConnection(endpoint.hostname or "", endpoint.port, timeout=5)
        try:
            connection.request("POST", "/v3/kv/range", body=body)
            kvs = json.loads(connection.getresponse().read()).get("kvs", [])
        finally:
            connection.close()
        state = {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in kvs
        }
        assert state, "etcd holds no keys"
        return {
            k: v for k, v in state.items() if "/members/" not in k and not k.endswith("/position")
        }


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with local_cluster(size=1, cluster="fuzz") as cluster:
        asyncio.run(converge(cluster, timeout=60))
        url = urlsplit(cluster.members[0].api_url)
        yield Agent(cluster=cluster, host=url.hostname or "", port=url.port or 0)


def _check_answer(op: Operation, status: int, content_type: str, body: bytes) -> None:
    assert status != 500, f"{op.method.upper()} {op.path}: 500 {body[:300]!r}"
    try:
        schema = op.response_schema(status)
    except KeyError:
        raise AssertionError(
            f"{op.method.upper()} {op.path}: status {status} is not documented: {body[:200]!r}"
        ) from None
    if schema is None:
        assert content_type.startswith("text/plain"), content_type
        return
    assert content_type.startswith("application/json"), (op.path, status, content_type)
    validator = jsonschema.Draft202012Validator({**schema, "components": COMPONENTS})
    validator.validate(json.loads(body))


_WRONG_AUTH = st.sampled_from(
    [
        None,
        "Bearer wrong",
        "Bearer ",
        "Basic " + base64.b64encode(b"admin:wrong").decode(),
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Digest x",
        "",
        "Bearer " + "A" * 5000,
    ]
)


def _fuzz(agent: Agent, op: Operation, authorization: st.SearchStrategy[str | None]) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests_for(op), auth=authorization)
    def run(request: Request, auth: str | None) -> None:
        status, content_type, body = agent.send(op, request, auth)
        SEEN[(op.method.upper(), op.path, status)] += 1
        _check_answer(op, status, content_type, body)
        if op.mutating and auth != f"Bearer {agent.cluster.token}":
            assert status in (401, 413), (op.method, op.path, status, body[:200])

    run()


def test_without_valid_credentials_nothing_breaks_and_nothing_changes(agent: Agent) -> None:
    before = agent.dcs_state()
    postmaster = agent.cluster.members[0].postmaster_pid()
    for op in operations():
        _fuzz(agent, op, _WRONG_AUTH)
    assert agent.dcs_state() == before
    assert agent.cluster.members[0].postmaster_pid() == postmaster  # no restart queued


_UNDOCUMENTED = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    st.one_of(
        st.sampled_from(["/", "/nope", "/cluster/x", "/switchover/", "/HEALTH", "/%00", "//"]),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz/-_.", max_size=20).map(lambda p: "/" + p),
    ),
)


def test_unknown_routes_and_methods_answer_404_or_405_as_json(agent: Agent) -> None:
    documented = {(op.method.upper(), op.path) for op in operations()}
    before = agent.dcs_state()

    @settings(max_examples=60, derandomize=True, database=None, deadline=None)
    @given(call=_UNDOCUMENTED, auth=_WRONG_AUTH)
    def run(call: tuple[str, str], auth: str | None) -> None:
        method, path = call
        if (method, path) in documented or (method == "HEAD"):
            return
        connection = http.client.HTTPConnection(agent.host, agent.port, timeout=10)
        try:
            headers = {} if auth is None else {"Authorization": auth}
            connection.request(method, path, headers=headers)
            answer = connection.getresponse()
            status, body = answer.status, answer.read()
        finally:
            connection.close()
        assert status in (404, 405), (method, path, status, body[:200])
        validator = jsonschema.Draft202012Validator({**_ERROR, "components": COMPONENTS})
        validator.validate(json.loads(body))

    run()
    assert agent.dcs_state() == before


_ERROR: Schema = {"$ref": "#/components/schemas/Error"}


# Last: requests with the token change the cluster (pause, restart, configuration).
def test_with_credentials_every_answer_is_documented_and_no_500(agent: Agent) -> None:
    token = st.just(f"Bearer {agent.cluster.token}")
    for op in operations():
        _fuzz(agent, op, token)
