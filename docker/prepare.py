"""Container start-up helper: prepare the volume and render the agent's settings file.

Run by docker/entrypoint.sh before it execs `pgwarden run --config <output>`. It needs only
the standard library and PyYAML (the agent's venv has both), never imports the agent, and
does nothing an unprivileged user cannot do.

1. Render. The source is a YAML file, or a directory whose `*.yaml` / `*.yml` files (a mounted
   ConfigMap) are merged in name order: mappings merge key by key, any other value of a later
   file replaces the earlier one. Then what differs per pod is filled in, only where the
   merged document does not set it:
     name                     <- $POD_NAME
     postgresql.connect_host  <- $POD_IP
     api.connect_url          <- http(s)://$POD_IP:<api port>  (IPv6 in brackets; https
                                 when api.tls is set)
     postgresql.data_dir      <- $PGDATA
   The api port is $PGWARDEN_API__PORT, else `api.port`, else 8008. Nothing set explicitly is
   ever changed; PGWARDEN_* variables still override the file when the agent loads it. The
   result is written atomically with mode 0600 (it may name secret files, or hold secrets).
2. Prepare. The data directory (PGWARDEN_POSTGRESQL__DATA_DIR, else `postgresql.data_dir`) is
   created if missing and set to mode 0700 (PostgreSQL refuses group/other access, and a
   volume's fsGroup handling may have added it); the run directory (PGWARDEN_RUN_DIR, else
   `run_dir`), the socket directory and the directory of the rendered file likewise.
   Each must be owned by this user. A volume's mount point never is (Kubernetes makes an
   emptyDir root-owned, mode 0777, or 2777 with fsGroup), so the settings name
   subdirectories of the mounts, which this script creates itself (see `ensure_private_dir`).

Exit codes: 0 done, 2 the input is unusable (the message names the file, field or directory
and the rule); nothing is written then. Run `prepare.py --help` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

EXIT_OK = 0
EXIT_INPUT = 2
DEFAULT_API_PORT = 8008
_YAML_SUFFIXES = (".yaml", ".yml")


class PrepareError(Exception):
    """The input cannot be used; the message says which file/field/directory and why."""


# -------------------------------------------------------------------------- rendering (pure)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merge recursively, other values replace."""
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def source_files(source: Path) -> list[Path]:
    """The YAML files of `source` in merge order: the file itself, or a directory's `*.yaml`
    and `*.yml` files sorted by name (dot-files skipped: a mounted ConfigMap keeps its real
    files in `..data/`, reached through the top-level symlinks)."""
    if source.is_dir():
        files = sorted(
            p
            for p in source.iterdir()
            if p.suffix in _YAML_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise PrepareError(f"{source}: no *.yaml file in this directory")
        return files
    if not source.is_file():
        raise PrepareError(f"{source}: no such file or directory")
    return [source]


def load_document(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping (an empty file is an empty mapping)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PrepareError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # No excerpt of the file: it might hold a secret.
        raise PrepareError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PrepareError(f"{path}: must be a mapping at the top level")
    return data


def _section(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    if value is None:
        value = {}
        document[key] = value
    if not isinstance(value, dict):
        raise PrepareError(f"{key}: must be a mapping")
    return value


def _unset(section: Mapping[str, Any], key: str) -> bool:
    return section.get(key) in (None, "")


def _url_host(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise PrepareError(f"POD_IP: must be an IP address, got {ip[:80]!r}") from None
    return f"[{address}]" if address.version == 6 else str(address)


def _api_port(api: Mapping[str, Any], env: Mapping[str, str]) -> int:
    text = env.get("PGWARDEN_API__PORT", "")
    if text:
        if not text.isdigit():
            raise PrepareError(f"PGWARDEN_API__PORT: must be an integer, got {text[:80]!r}")
        return int(text)
    port = api.get("port")
    if port is None:
        return DEFAULT_API_PORT
    if isinstance(port, bool) or not isinstance(port, int):
        raise PrepareError(f"api.port: must be an integer, got {port!r}")
    return port


def render(document: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The merged `document` with the per-pod values filled from `env` (see the module
    docstring). Pure: returns a new mapping, reads nothing but its arguments."""
    out = merge({}, document)
    pod_name = env.get("POD_NAME", "")
    pod_ip = env.get("POD_IP", "")
    pgdata = env.get("PGDATA", "")
    if pod_name and _unset(out, "name"):
        out["name"] = pod_name
    postgresql = _section(out, "postgresql")
    if pod_ip and _unset(postgresql, "connect_host"):
        postgresql["connect_host"] = pod_ip
    if pgdata and _unset(postgresql, "data_dir"):
        postgresql["data_dir"] = pgdata
    if pod_ip:
        api = _section(out, "api")
        if _unset(api, "connect_url"):
            # With api.tls the agent serves https (and refuses an http connect_url).
            tls = isinstance(api.get("tls"), dict) or any(
                k.startswith("PGWARDEN_API__TLS__") for k in env
            )
            scheme = "https" if tls else "http"
            api["connect_url"] = f"{scheme}://{_url_host(pod_ip)}:{_api_port(api, env)}"
    return out


def render_sources(source: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Merge the files of `source` (see `source_files`) and `render` the result."""
    merged: dict[str, Any] = {}
    for path in source_files(source):
        merged = merge(merged, load_document(path))
    return render(merged, env)


# -------------------------------------------------------------------------- preparing (I/O)


def _setting(document: Mapping[str, Any], env: Mapping[str, str], path: str) -> str | None:
    """A path-valued setting as the agent will see it: PGWARDEN_* variable, else the file."""
    env_value = env.get("PGWARDEN_" + path.upper().replace(".", "__"), "")
    if env_value:
        return env_value
    node: Any = document
    for key in path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    if node in (None, ""):
        return None
    if not isinstance(node, str):
        raise PrepareError(f"{path}: must be a string, got {node!r}")
    return node


def _others_may_replace_entries(directory: os.stat_result) -> bool:
    """Whether users other than its owner may rename or delete entries of this directory
    (group- or world-writable without the sticky bit, like a Kubernetes emptyDir: root-owned,
    mode 0777, or 2777 with fsGroup)."""
    writable_by_others = directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return bool(writable_by_others) and not directory.st_mode & stat.S_ISVTX


def ensure_private_dir(path: Path, what: str) -> None:
    """Create `path` (and missing parents) and make it mode 0700, owned by this user.

    A directory owned by someone else is refused, never used as it is. That is deliberate for
    a shared mount point such as the pod's emptyDir (root-owned, world-writable, no sticky
    bit): any user with access to it could unlink PostgreSQL's socket and put its own in its
    place, and the agent, which probes and controls PostgreSQL over that socket, would take
    an impostor's answers (recovery state, WAL positions) into its failover decisions; or
    replace the rendered settings before the agent reads them. chmod cannot close that (only
    the owner may chmod). A subdirectory this user creates with mode 0700 inside
    the mount can: nobody else may enter it, nor rename it (that needs write access to the
    directory itself, to update its `..`). So the settings point at such subdirectories (as
    PGDATA is a subdirectory of its volume), and this function creates them.

    In a directory where others may replace entries, `path` must be a real directory, not a
    symbolic link (which its owner could later point elsewhere)."""
    if not path.is_absolute():
        raise PrepareError(f"{what} {path}: must be an absolute path")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(
            f"{what} {path}: cannot create it ({exc.strerror}); is the volume writable for "
            f"uid {os.getuid()} (securityContext.fsGroup)?"
        ) from None
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise PrepareError(f"{what} {path}: exists and is not a directory")
    if info.st_uid != os.getuid():
        raise PrepareError(
            f"{what} {path}: owned by uid {info.st_uid}, not by this user (uid {os.getuid()});"
            " if it is a volume's mount point, name a subdirectory of it instead: the"
            " entrypoint creates that with mode 0700"
        )
    if path.is_symlink() and _others_may_replace_entries(path.parent.lstat()):
        raise PrepareError(
            f"{what} {path}: a symbolic link in a directory other users may write to"
        )
    # chmod also clears a setgid bit inherited from an fsGroup-managed volume root.
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


HEADER = (
    "# Rendered by docker/prepare.py at container start from {source};\n"
    "# do not edit: it is rewritten at every start. PGWARDEN_* variables override it.\n"
)


def prepare(source: Path, output: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Render `source` into `output` and prepare the directories it names. Returns the
    rendered document. Raises PrepareError (nothing written) on unusable input."""
    document = render_sources(source, env)
    data_dir = _setting(document, env, "postgresql.data_dir")
    run_dir = _setting(document, env, "run_dir")
    socket_dir = _setting(document, env, "postgresql.socket_dir")
    if data_dir is None:
        raise PrepareError("postgresql.data_dir: not set (in the file, $PGDATA or its variable)")
    ensure_private_dir(Path(data_dir), "data directory")
    for what, directory in (("run directory", run_dir), ("socket directory", socket_dir)):
        if directory is not None:
            ensure_private_dir(Path(directory), what)
    # The rendered file may name secret files or hold secrets, and whoever could replace it
    # would choose the agent's commands (postgresql.bin_dir): it goes to a private directory
    # too. By default it shares the socket directory, which then is never empty, so nobody
    # can delete it and put their own in its place before PostgreSQL creates its socket.
    ensure_private_dir(output.parent.absolute(), "directory of the rendered settings")
    text = HEADER.format(source=source) + yaml.safe_dump(
        document, sort_keys=False, default_flow_style=False
    )
    write_private_file(output, text)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prepare.py", description="Prepare the volume and render pgwarden's settings."
    )
    parser.add_argument("--source", required=True, type=Path, help="YAML file or directory")
    parser.add_argument("--output", required=True, type=Path, help="the rendered file")
    args = parser.parse_args(argv)
    try:
        prepare(args.source, args.output, os.environ)
    except PrepareError as exc:
        print(f"pgwarden entrypoint: {exc}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
