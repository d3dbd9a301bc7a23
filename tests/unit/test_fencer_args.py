"""The fencer's command line (agent/fencer.py parses it without argparse)."""

from __future__ import annotations

import pytest

from agent.fencer import main, parse_args


def test_the_options_parse_into_their_types_with_the_grace_defaulting() -> None:
    argv = ["--socket", "/run/f.sock", "--data-dir", "/data", "--agent-pid", "42"]
    assert parse_args(argv) == ("/run/f.sock", "/data", 42, 0.5)
    assert parse_args([*argv, "--grace", "1.5"])[3] == 1.5


def test_an_external_fencer_takes_no_agent_pid() -> None:
    argv = ["--socket", "/run/f.sock", "--data-dir", "/data"]
    assert parse_args(["--external", *argv]) == ("/run/f.sock", "/data", None, 0.5)
    assert parse_args([*argv, "--external", "--grace", "1"])[2:] == (None, 1.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--socket", "/s", "--data-dir", "/d"], r"--agent-pid is required \(or --external\)"),
        (["--external", "--data-dir", "/d"], "--socket is required"),
        (
            ["--external", "--socket", "/s", "--data-dir", "/d", "--agent-pid", "1"],
            "--agent-pid and --external exclude each other",
        ),
        (["--socket", "/s", "--data-dir", "/d"], "--agent-pid is required"),
        (["--socket", "/s", "--data-dir", "/d", "--agent-pid"], "--agent-pid: expected a value"),
        (["--socket", "/s", "--data-dir", "/d", "--agent-pid", "x"], "bad number"),
        (["--socket", "/s", "--data-dir", "/d", "--agent-pid", "1", "--grace", "-"], "bad number"),
        (["--socket", "/s", "--data-dir", "/d", "--agent-pid", "1", "--kill", "1"], "--kill"),
    ],
)
def test_bad_options_are_refused_with_what_is_wrong(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_main_exits_2_with_the_usage_on_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", "/s"]) == 2
    err = capsys.readouterr().err
    assert "usage: pgwarden-fencer" in err and "--data-dir is required" in err
