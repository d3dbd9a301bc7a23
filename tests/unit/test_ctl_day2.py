"""agent/ctl_day2.py: the edit-config document, --set, the diff shown and the PATCH body sent
(only what changed; a removed parameter is null), and edit-config against a live API: asks,
honours a refusal, writes with If-Match (a concurrent change fails the write)."""

from __future__ import annotations

import json

import pytest

from agent.ctl import CtlError
from agent.ctl_day2 import apply_body, apply_sets, diff, editable, patch_body, to_yaml
from tests.unit.test_ctl import Node, node  # noqa: F401 - the fixture

CONFIG = {
    "paused": False,
    "synchronous_mode": "off",
    "synchronous_node_count": 1,
    "synchronous_mode_strict": False,
    "maximum_lag_on_syncnode_bytes": -1,
    "failsafe_mode": False,
    "postgresql": {"parameters": {"work_mem": "4MB", "jit": "off"}, "pg_hba": []},
}


def test_the_document_leaves_pause_to_its_own_commands() -> None:
    document = editable(CONFIG)
    assert "paused" not in document
    assert document["postgresql"] == CONFIG["postgresql"]


def test_set_changes_ha_fields_and_parameters_and_null_removes() -> None:
    old = editable(CONFIG)
    new = apply_sets(old, ["synchronous_node_count=2", "work_mem=64MB", "jit=null", "x.y=on"])
    body = patch_body(old, new)
    assert body == {
        "synchronous_node_count": 2,
        "postgresql": {"parameters": {"work_mem": "64MB", "x.y": True, "jit": None}},
    }
    assert apply_body(old, body) == new
    shown = diff(to_yaml(old), to_yaml(new))
    assert "-    work_mem: 4MB" in shown and "+    work_mem: 64MB" in shown
    assert patch_body(old, old) == {}
    with pytest.raises(CtlError):
        apply_sets(old, ["novalue"])
    with pytest.raises(CtlError):
        patch_body(old, {**old, "paused": True})


def test_hba_lines_are_sent_whole_when_they_changed() -> None:
    old = editable(CONFIG)
    new = {**old, "postgresql": {**old["postgresql"], "pg_hba": ["host all all ::1/128 trust"]}}  # type: ignore[dict-item]
    assert patch_body(old, new) == {"postgresql": {"pg_hba": ["host all all ::1/128 trust"]}}


async def test_edit_config_asks_and_a_no_writes_nothing(node: Node) -> None:  # noqa: F811
    answers: list[str] = []
    code, out, _ = await node.ctl(
        "edit-config", "--set", "synchronous_node_count=2", ask="n", asked=answers
    )
    assert code == 1 and "Not applied." in out and answers
    assert json.loads(node.store.get_raw("config") or b"{}").get("synchronous_node_count", 1) == 1
    code, out, _ = await node.ctl("edit-config", "--set", "synchronous_node_count=2", "--force")
    assert code == 0, out
    assert "+synchronous_node_count: 2" in out and "Configuration changed." in out
    assert json.loads(node.store.get_raw("config") or b"{}")["synchronous_node_count"] == 2
