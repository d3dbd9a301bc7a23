"""The PostgreSQL version each e2e module's cluster runs on: one module pass per version that
PGWARDEN_TEST_PG selects for the cluster tier (tests/support/pgversions.py)."""

from __future__ import annotations

import pytest

from tests.support.pgversions import PgInstall, Tier, params


@pytest.fixture(scope="module", params=params(Tier.CLUSTER))
def pg_install(request: pytest.FixtureRequest) -> PgInstall:
    install: PgInstall = request.param
    return install


@pytest.fixture(scope="module", params=params(Tier.CLUSTER, needs_ssl=True))
def pg_install_ssl(request: pytest.FixtureRequest) -> PgInstall:
    """The same for clusters that run PostgreSQL with TLS (the wheel's 18 has no SSL)."""
    install: PgInstall = request.param
    return install
