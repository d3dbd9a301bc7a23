# syntax=docker/dockerfile:1
# pgwarden image: Debian bookworm slim, PostgreSQL 15 from Debian, the agent in a venv at
# /opt/pgwarden. It runs as the unprivileged `postgres` user (uid/gid 999); PGDATA lives on the
# volume mounted at /var/lib/postgresql/data (k8s/base/statefulset.yaml).
#
#   docker build -t pgwarden:0.1.0 .

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------- build the venv
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
# A non-editable install: the runtime image gets the venv only, not the sources.
RUN python3 -m venv /opt/pgwarden \
 && /opt/pgwarden/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/pgwarden/bin/pip install --no-cache-dir . \
 && /opt/pgwarden/bin/pgwarden --help >/dev/null

# ---------------------------------------------------------------------------- runtime
FROM ${DEBIAN_IMAGE}
# The postgres user first, with a fixed uid/gid, so that runAsUser/fsGroup in the manifests
# can name it (the Debian package would otherwise pick the next free system uid).
RUN groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql \
      --shell /bin/bash --comment "PostgreSQL administrator" postgres
# postgresql-common first, told not to create a default cluster when postgresql-15 is
# installed: the agent runs initdb itself (only on the member that wins `initialize`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf \
 && grep -q '^create_main_cluster = false$' /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 python3 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/pgwarden /opt/pgwarden
COPY docker/entrypoint.sh docker/prepare.py /usr/local/lib/pgwarden/
RUN chmod 0755 /usr/local/lib/pgwarden/entrypoint.sh \
 && mkdir -p /var/lib/postgresql/data /run/pgwarden /etc/pgwarden/conf.d \
 && chown postgres:postgres /var/lib/postgresql /var/lib/postgresql/data /run/pgwarden \
 && chmod 0700 /var/lib/postgresql/data /run/pgwarden

ENV PATH=/opt/pgwarden/bin:/usr/lib/postgresql/15/bin:$PATH \
    LANG=C.UTF-8 \
    PGDATA=/var/lib/postgresql/data/pgdata \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 999:999
WORKDIR /var/lib/postgresql
VOLUME /var/lib/postgresql/data
EXPOSE 5432 8008

# tini is PID 1: it reaps orphans (a backend whose postmaster was killed is re-parented to
# PID 1, and the agent does not reap processes it did not start) and forwards SIGTERM to the
# agent, which the entrypoint `exec`s into. Not `tini -g`: the agent alone decides how and when
# PostgreSQL stops (hand-over first); PostgreSQL runs in its own session in any case.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/lib/pgwarden/entrypoint.sh"]
CMD []
