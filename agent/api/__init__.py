"""The agent's REST API (served by agent/http/server.py): probes, cluster view, operator
requests, /metrics."""

from agent.api.operator import LocalRequestSink
from agent.api.server import MetricsSource, build_app, start_api

__all__ = ["LocalRequestSink", "MetricsSource", "build_app", "start_api"]
