# syntax=docker/dockerfile:1
# pgwarden image: Debian bookworm slim, PostgreSQL 15 from Debian, the agent in a venv at
# /opt/pgwarden. It runs as the unprivileged `postgres` user (uid/gid 999); PGDATA lives on the
# volume mounted at /var/lib/postgresql/data (k8s/base/statefulset.yaml).
#
#   docker build -t pgwarden:0.1.0 .          # with Docker (BuildKit)
#   make image                                # podman, no Docker engine, no registry (docker/image.sh)
#
# Where pip needs a CA that is not in the build stage's trust (a TLS-inspecting proxy), pass
# the host's bundle as a build secret: it is mounted for the pip step only and lands in no
# layer:  docker build --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt ...

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------- build the venv
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every Python package is pinned (docker/constraints.txt), the isolated build's setuptools and
# wheel too: PIP_CONSTRAINT reaches the pip that prepares the build environment. pip itself is
# the one Debian's python3-venv ships (no upgrade from the network).
ENV PIP_CONSTRAINT=/src/docker/constraints.txt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY docker/constraints.txt ./docker/
# The dependencies first, in a layer of their own: an edit of agent/ reuses it.
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && python3 -m venv /opt/pgwarden \
 && grep -Ev '^(#|$|setuptools==|wheel==)' docker/constraints.txt > /tmp/requirements.txt \
 && /opt/pgwarden/bin/pip install --no-deps -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY agent ./agent
# A non-editable install: the runtime image gets the venv only, not the sources. `pip check`
# fails the build when a runtime dependency is missing from the pins. Then pip and setuptools
# leave the venv: nothing at run time installs packages.
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && /opt/pgwarden/bin/pip install --no-deps . \
 && /opt/pgwarden/bin/pip check \
 && /opt/pgwarden/bin/pip uninstall -y -q pip setuptools \
 && rm -rf /src/build /src/*.egg-info \
 && /opt/pgwarden/bin/pgwarden --help >/dev/null

# ---------------------------------------------------------------------------- runtime
FROM ${DEBIAN_IMAGE}
# The postgres user first, with a fixed uid/gid, so that runAsUser/fsGroup in the manifests
# can name it (the Debian package would otherwise pick the next free system uid).
RUN groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql \
      --shell /bin/bash --comment "PostgreSQL administrator" postgres
# PostgreSQL's JIT compiler is left out by default: its LLVM (libLLVM-14, libz3 and the
# bitcode for inlining) is 156 MB of a 510 MB image, for a feature that speeds up only long
# analytical queries (docs/kubernetes.md, "The image"). The files are excluded the way the
# slim base image excludes documentation (dpkg path-exclude), so the packages stay installed
# for apt and derived images install on top as usual; PostgreSQL then reports
# pg_jit_available() = false and plans without JIT. `--build-arg POSTGRES_JIT=on` keeps it.
ARG POSTGRES_JIT=off
RUN case "$POSTGRES_JIT" in \
      on) ;; \
      off) printf '%s\n' '# Written by the pgwarden Dockerfile (POSTGRES_JIT=off).' \
             'path-exclude=/usr/lib/*/libLLVM-14.so*' 'path-exclude=/usr/lib/*/libz3.so*' \
             'path-exclude=/usr/lib/postgresql/15/lib/llvmjit*' \
             'path-exclude=/usr/lib/postgresql/15/lib/bitcode/*' \
             > /etc/dpkg/dpkg.cfg.d/pgwarden-no-jit ;; \
      *) echo "POSTGRES_JIT must be on or off, got '$POSTGRES_JIT'" >&2; exit 2 ;; \
    esac
# postgresql-common first, told not to create a default cluster when postgresql-15 is
# installed: the agent runs initdb itself (only on the member that wins `initialize`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf \
 && grep -q '^create_main_cluster = false$' /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 python3 tini ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log /var/cache/debconf/*-old \
 && rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
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
# No HEALTHCHECK: Kubernetes ignores it (the StatefulSet's probes call /liveness and
# /readiness), and podman would need systemd timers to run it.

# Last, so that a new revision changes only this metadata layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="pgwarden" \
      org.opencontainers.image.description="High-availability agent for PostgreSQL 15 (etcd v3 or the Kubernetes API as the DCS)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
