"""PostgreSQL TLS and the password file: the renderers, the settings, the files the agent
writes for PostgreSQL's OS user (issue 13, item 2). The real server is in
tests/integration/postgres/test_tls.py."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest
import yaml

from agent.config import ConfigError, Credentials, PostgresSettings, Secret, load_settings
from agent.postgres.datadir import StandbyConfig, standby_conninfo, write_client_files
from agent.postgres.replication import (
    ClientTls,
    passfile_path,
    primary_conninfo,
    render_hba,
    render_passfile,
    server_options,
    tls_paths,
)
from agent.postgres_settings import PostgresTls, TlsVerify
from agent.settings import InvalidSettings
from tests.support.postgres import pg_os_user
from tests.support.tls import ClusterPki
from tests.unit.test_replication_render import parse_conninfo

TLS = PostgresTls(cert_file="/tls/tls.crt", key_file="/tls/tls.key", ca_file="/tls/ca.crt")
PASSWORD = "re pl'pa\\ss:word"


def settings(*, tls: PostgresTls | None = TLS, os_user: str | None = None) -> PostgresSettings:
    return PostgresSettings(
        data_dir="/var/lib/postgresql/data",
        os_user=os_user,
        superuser=Credentials(username="postgres", password=Secret("su:per\\pw")),
        replication=Credentials(username="replicator", password=Secret(PASSWORD)),
        tls=tls,
    )


def _hba(*, tls: bool, passwords: bool = True) -> list[list[str]]:
    text = render_hba(
        superuser="postgres",
        superuser_password_set=passwords,
        replication_user="replicator",
        replication_password_set=passwords,
        tls=tls,
    )
    return [line.split() for line in text.splitlines() if line and not line.startswith("#")]


# --------------------------------------------------------------------------- pg_hba


@pytest.mark.parametrize("passwords", [True, False])
def test_with_tls_every_tcp_line_of_the_agent_is_hostssl(passwords: bool) -> None:
    lines = _hba(tls=True, passwords=passwords)
    tcp = [words for words in lines if words[0] != "local"]
    assert len(tcp) == 4  # replication and the superuser, IPv4 and IPv6
    assert {words[0] for words in tcp} == {"hostssl"}
    assert [words[0] for words in lines if words[0] == "local"] == ["local"]


def test_without_tls_the_tcp_lines_stay_host() -> None:
    assert {words[0] for words in _hba(tls=False) if words[0] != "local"} == {"host"}


# --------------------------------------------------------------------------- server options


def _options(pg: PostgresSettings) -> dict[str, str]:
    args = server_options(pg, member_name="pg-0", run_dir="/run/pgw")
    pairs = [arg.split("=", 1) for arg in args[1::2]]
    return {name: value for name, value in pairs}


def test_tls_turns_ssl_on_with_the_copies_in_the_run_dir() -> None:
    options = _options(settings())
    cert, key, ca = tls_paths("/run/pgw")
    assert options["ssl"] == "on"
    assert (options["ssl_cert_file"], options["ssl_key_file"], options["ssl_ca_file"]) == (
        cert,
        key,
        ca,
    )
    assert all(path.startswith("/run/pgw/postgres/tls/") for path in (cert, key, ca))


def test_without_tls_no_ssl_option_is_set() -> None:
    assert not {"ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file"} & set(
        _options(settings(tls=None))
    )


# --------------------------------------------------------------------------- conninfo


def test_conninfo_with_tls_verifies_the_server_against_the_ca() -> None:
    text = primary_conninfo(
        host="10.0.0.1",
        port=5432,
        user="replicator",
        application_name="pg-1",
        passfile="/run/pgw/postgres/pgpass",
        tls=ClientTls(sslmode=TlsVerify.CA, root_cert="/run/pgw/postgres/tls/ca.crt"),
    )
    parsed = parse_conninfo(text)
    assert parsed["sslmode"] == "verify-ca"
    assert parsed["sslrootcert"] == "/run/pgw/postgres/tls/ca.crt"
    assert parsed["passfile"] == "/run/pgw/postgres/pgpass"


@pytest.mark.parametrize("tls", [TLS, None])
def test_standby_conninfo_names_the_passfile_and_never_holds_the_password(
    tls: PostgresTls | None,
) -> None:
    standby = StandbyConfig(
        primary_host="10.0.0.1", primary_port=5432, slot_name="pg_1", application_name="pg-1"
    )
    text = standby_conninfo(settings(tls=tls), standby, run_dir="/run/pgw")
    assert text is not None
    parsed = parse_conninfo(text)
    assert "password" not in parsed
    assert "pl'pa" not in text and "ss:word" not in text  # nor any fragment of it
    assert parsed["passfile"] == passfile_path("/run/pgw")
    if tls is None:
        assert "sslmode" not in parsed
    else:
        assert (parsed["sslmode"], parsed["sslrootcert"]) == (
            "verify-full",
            tls_paths("/run/pgw")[2],
        )


def test_standby_conninfo_without_passwords_names_no_passfile() -> None:
    pg = PostgresSettings(data_dir="/d")
    standby = StandbyConfig(
        primary_host="h", primary_port=1, slot_name=None, application_name="pg-1"
    )
    text = standby_conninfo(pg, standby, run_dir="/run/pgw")
    assert text is not None and "passfile" not in text


# --------------------------------------------------------------------------- the password file


def _read_pgpass(text: str) -> list[list[str]]:
    """libpq's reading of a password file line: fields split on unescaped `:`."""
    rows = []
    for line in text.splitlines():
        fields, current, i = [], [], 0
        while i < len(line):
            if line[i] == "\\" and i + 1 < len(line):
                current.append(line[i + 1])
                i += 2
                continue
            if line[i] == ":":
                fields.append("".join(current))
                current = []
            else:
                current.append(line[i])
            i += 1
        fields.append("".join(current))
        rows.append(fields)
    return rows


def test_passfile_escapes_colons_and_backslashes_as_libpq_reads_them() -> None:
    text = render_passfile([("replicator", PASSWORD), ("post:gres", "a\\b")])
    assert _read_pgpass(text) == [
        ["*", "*", "*", "replicator", PASSWORD],
        ["*", "*", "*", "post:gres", "a\\b"],
    ]


def test_passfile_refuses_a_line_break_in_a_password() -> None:
    with pytest.raises(ValueError, match="line break"):
        render_passfile([("u", "a\nb")])


def test_client_files_are_the_os_users_with_a_private_key_and_password_file(
    tmp_path: Path,
) -> None:
    pki = ClusterPki.create(tmp_path / "secret")  # files as loose as a Secret's: mode 0644
    tls = pki.pg_tls()
    os.chmod(tmp_path, 0o755)
    run_dir = str(tmp_path / "run")
    write_client_files(settings(tls=tls, os_user=pg_os_user()), run_dir)
    os_user = pg_os_user()
    owner = os.getuid() if os_user is None else pwd.getpwnam(os_user).pw_uid
    cert, key, ca = tls_paths(run_dir)
    for path, source in ((cert, tls.cert_file), (key, tls.key_file), (ca, tls.ca_file)):
        assert Path(path).read_text() == Path(source).read_text()
    for path in (key, passfile_path(run_dir)):
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o600, path
        assert info.st_uid == owner, path
    rows = _read_pgpass(Path(passfile_path(run_dir)).read_text())
    assert ["*", "*", "*", "replicator", PASSWORD] in rows


# --------------------------------------------------------------------------- settings


def test_tls_settings_need_all_three_files() -> None:
    with pytest.raises(InvalidSettings, match="key_file"):
        PostgresTls(cert_file="/a", key_file="", ca_file="/c")


def test_ssl_parameters_are_refused_alongside_postgresql_tls() -> None:
    with pytest.raises(InvalidSettings, match="ssl_cert_file"):
        PostgresSettings(data_dir="/d", tls=TLS, parameters=(("ssl_cert_file", "/x"),))
    PostgresSettings(data_dir="/d", parameters=(("ssl", "on"),))  # without tls: the user's


def _document(tmp_path: Path, tls: dict[str, str]) -> str:
    document = {
        "name": "pg-0",
        "cluster": "demo",
        "run_dir": "/run/pgwarden",
        "dcs": {"kind": "etcd", "etcd": {"endpoints": ["http://127.0.0.1:2379"]}},
        "postgresql": {"data_dir": "/var/lib/postgresql/data", "tls": tls},
        "api": {"insecure_no_auth": True},
    }
    path = tmp_path / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_the_loader_builds_postgresql_tls_with_verify_full_by_default(tmp_path: Path) -> None:
    files = {}
    for name in ("cert_file", "key_file", "ca_file"):
        (tmp_path / name).write_text("x")
        files[name] = str(tmp_path / name)
    loaded = load_settings(_document(tmp_path, files), {}).postgresql.tls
    assert loaded == PostgresTls(**files, verify=TlsVerify.FULL)
    ca = load_settings(_document(tmp_path, files | {"verify": "verify-ca"}), {})
    assert ca.postgresql.tls is not None and ca.postgresql.tls.verify is TlsVerify.CA


def test_the_loader_names_a_missing_or_unreadable_tls_file(tmp_path: Path) -> None:
    (tmp_path / "cert").write_text("x")
    document = _document(
        tmp_path, {"cert_file": str(tmp_path / "cert"), "ca_file": str(tmp_path / "nope")}
    )
    with pytest.raises(ConfigError) as info:
        load_settings(document, {})
    fields = {p.field: p.rule for p in info.value.problems}
    assert fields["postgresql.tls.key_file"] == "is required"
    assert fields["postgresql.tls.ca_file"] == "file does not exist"
