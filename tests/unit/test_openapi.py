"""The OpenAPI document (agent/api/openapi.py) against the app's routes and docs/openapi.json."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]  # no stubs installed

from agent.api import openapi, openapi_schemas
from agent.api.server import build_app
from agent.clock import FakeClock
from agent.http.routing import App
from agent.metrics import Metrics
from tests.unit.api_harness import (
    Backend,
    Inbox,
    StatusBox,
    make_settings,
    primary_status,
    serve,
    standard_cluster,
)

DOCS_FILE = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
METHODS = {"get", "post", "patch", "put", "delete"}


def _app() -> App:
    clock = FakeClock()
    return build_app(
        settings=make_settings(None),
        status=StatusBox(primary_status(clock)),
        dcs=Backend(clock).handle("a"),
        requests=Inbox(),
        metrics=Metrics(),
        clock=clock,
    )


def _routed() -> set[tuple[str, str]]:
    return {(path, method.lower()) for method, path in _app().routes()}


def _documented() -> set[tuple[str, str]]:
    paths = openapi.document()["paths"]
    assert isinstance(paths, dict)
    return {(path, method) for path, ops in paths.items() for method in ops if method in METHODS}


def test_every_route_and_method_is_documented_and_nothing_else() -> None:
    assert _documented() == _routed()


def test_every_schema_is_valid_json_schema_2020_12() -> None:
    document = openapi.document()
    jsonschema.Draft202012Validator.check_schema(document["components"])
    for schema in openapi_schemas.SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(dict(schema))


def test_the_docs_file_is_the_generated_document() -> None:
    assert DOCS_FILE.read_text(encoding="utf-8") == openapi.rendered(), (
        "regenerate it: python -m agent.api.openapi docs/openapi.json"
    )


def _validator(name: str) -> jsonschema.Draft202012Validator:
    document = openapi.document()
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


async def test_the_served_document_and_views_match_the_schemas() -> None:
    clock = FakeClock()
    backend = Backend(clock)
    await standard_cluster(backend)
    view = await backend.handle("a").get_cluster()
    api = await serve(make_settings(), backend, StatusBox(primary_status(clock, view)), clock)
    try:
        served = await (await api.client.get("/openapi.json")).json()
        assert served == json.loads(openapi.rendered())
        for path, schema in (
            ("/health", "Status"),
            ("/cluster", "Cluster"),
            ("/history", "History"),
            ("/config", "Config"),
            ("/nope", "Error"),
        ):
            _validator(schema).validate(await (await api.client.get(path)).json())
    finally:
        await api.client.close()
