"""The `pgwarden` command: `run` the agent, `ctl` (operate a cluster), `demo` (a local cluster);
`pgwarden --version` prints the installed package's version.

Exit codes of `run`: 0 clean stop (or `--check-config` found no problem), 1 the agent failed,
2 invalid configuration or command line (nothing was started, nothing touched).

`ctl` and `demo` own their options: everything after the subcommand is passed to
`agent.ctl.main` / `agent.demo.main` unchanged. Every command module is imported only when
its command runs, so a broken or missing one cannot stop the others.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence

from agent.config import CONFIG_ENV_VAR, ConfigError, Settings, load_settings, render_effective
from agent.pgparams import precedence_comment

EXIT_OK = 0
EXIT_CONFIG = 2

_PASSTHROUGH = ("ctl", "demo")
DISTRIBUTION = "pgwarden"


def package_version() -> str:
    """The installed `pgwarden` distribution's version; "unknown" when the code runs from a
    checkout that was never installed (no package metadata to read). importlib.metadata is
    imported here, only for `--version`: it would cost the running agent 0.6 MB."""
    import importlib.metadata  # noqa: PLC0415 - see the docstring

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """`--version`: print the installed version and exit; looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        del kwargs
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version"
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(f"{parser.prog} {package_version()}\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwarden", description="High-availability agent for PostgreSQL."
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the agent for one PostgreSQL instance",
        description="Run the agent. Settings come from the YAML file and PGWARDEN_* variables.",
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML configuration file (default: ${CONFIG_ENV_VAR}; none: environment only)",
    )
    run.add_argument(
        "--check-config",
        action="store_true",
        help="validate, print the effective settings (secrets masked) and exit",
    )
    for name, text in (
        ("ctl", "operate a cluster through its REST API (see `pgwarden ctl --help`)"),
        ("demo", "start a local demonstration cluster (see `pgwarden demo --help`)"),
    ):
        sub = commands.add_parser(name, help=text, add_help=False)
        sub.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _run(config: str | None, check_only: bool, env: Mapping[str, str]) -> int:
    path = config if config is not None else (env.get(CONFIG_ENV_VAR) or None)
    try:
        settings = load_settings(path, env)
    except ConfigError as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if check_only:
        sys.stdout.write(render_effective(settings) + precedence_comment(settings))
        return EXIT_OK
    return asyncio.run(load_runtime()(settings))


def load_runtime() -> Callable[[Settings], Coroutine[None, None, int]]:
    """The agent's entry, imported now: lazily, since `--check-config` must work without the
    agent's dependencies loaded."""
    from agent.app import run_agent  # noqa: PLC0415

    return run_agent


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the command, return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # `ctl`/`demo` options are theirs, including ones argparse would take for its own
    # (`--help`, or an option before the first positional), so hand them over verbatim.
    if args and args[0] in _PASSTHROUGH:
        return _passthrough(args[0], args[1:])
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:  # argparse exits 2 on a bad command line, 0 after --help
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    if ns.command in _PASSTHROUGH:  # pragma: no cover - handled above
        return _passthrough(ns.command, ns.args)
    return _run(ns.config, ns.check_config, os.environ)


def _passthrough(command: str, rest: list[str]) -> int:
    if command == "ctl":
        from agent import ctl  # noqa: PLC0415 - lazily, see the module docstring

        return ctl.main(rest)
    from agent import demo  # noqa: PLC0415 - lazily, see the module docstring

    return demo.main(rest)


if __name__ == "__main__":
    sys.exit(main())
