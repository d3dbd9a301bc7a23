"""Which pg_rewind failures mean 'could not reach the source' (retry later) and which are real
failures (re-clone). The lines are pg_rewind 15's stderr as printed on these machines."""

from __future__ import annotations

import pytest

from agent.postgres.bootstrap import could_not_connect

_AT = 'pg_rewind: error: connection to server at "10.0.0.2", port 5432 failed: '


@pytest.mark.parametrize(
    ("stderr", "unreachable"),
    [
        (
            _AT + "Connection refused\n\tIs the server running on that host and accepting"
            " TCP/IP connections?\n",
            True,
        ),
        (_AT + "No route to host\n\tIs the server running on that host and accepting", True),
        (_AT + "timeout expired\n", True),
        (
            _AT + "server closed the connection unexpectedly\n\tThis probably means the server"
            " terminated abnormally\n\tbefore or while processing the request.\n",
            True,
        ),
        (
            'pg_rewind: error: could not translate host name "pg-1.invalid" to address:'
            " Name or service not known\n",
            True,
        ),
        (_AT + "FATAL:  the database system is starting up\n", True),
        (_AT + "FATAL:  the database system is shutting down\n", True),
        (_AT + "FATAL:  sorry, too many clients already\n", True),
        ("pg_rewind: fatal: could not connect to server: Connection refused\n", True),
        # The server answered: a configuration error, not a network one.
        (_AT + 'FATAL:  password authentication failed for user "postgres"\n', False),
        (_AT + 'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "postgres"\n', False),
        # Connected, then failed: the target may be half rewound.
        (
            "pg_rewind: servers diverged at WAL location 0/3000108 on timeline 1\n"
            'pg_rewind: error: could not fetch remote file "global/pg_control":'
            " server closed the connection unexpectedly\n",
            False,
        ),
        (
            "pg_rewind: error: could not find common ancestor of the source and target"
            " cluster's timelines\n",
            False,
        ),
        ("", False),
    ],
)
def test_only_a_failure_to_open_the_connection_counts_as_an_unreachable_source(
    stderr: str, unreachable: bool
) -> None:
    assert could_not_connect(stderr) is unreachable
