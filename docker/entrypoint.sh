#!/bin/sh
# pgwarden container entrypoint (run under tini, see the Dockerfile).
#
#   entrypoint.sh [run-options]     prepare, render the settings, exec `pgwarden run`
#   entrypoint.sh ctl|demo|run ...  exec `pgwarden ...` unchanged (no preparation)
#   entrypoint.sh fencer ...        exec the fencer (agent/fencer.py) with these options: the
#                                   fencer sidecar (k8s/examples/fencer-sidecar)
#
# 1. refuse to run as root: PostgreSQL would refuse later, after the agent has started;
# 2. docker/prepare.py merges the settings files (a mounted ConfigMap), fills the per-pod
#    values from the downward API (POD_NAME, POD_IP), creates the data directory (0700) on the
#    volume, the run directory and the private directory (0700) on the emptyDir mounted at
#    /run/pgwarden (root-owned, world-writable: not usable as it is), and writes the rendered
#    file there;
# 3. exec: the agent replaces this shell, so it is the process tini forwards SIGTERM to, and
#    its exit status is the container's.
#
# Paths, overridable through the environment (the tests run this script as is):
#   PGW_CONFIG_SOURCE  settings file or directory   default /etc/pgwarden/conf.d
#   PGW_CONFIG_OUTPUT  the rendered file   default /run/pgwarden/private/pgwarden.yaml
#   PGW_PYTHON         python with PyYAML            default /opt/pgwarden/bin/python
#   PGW_PREPARE        the helper                    default prepare.py next to this script
#   PGW_PGWARDEN       the agent's command           default pgwarden (on PATH)
# Not PGWARDEN_*: the agent treats every PGWARDEN_* variable as a setting and refuses unknown
# ones.
set -eu

prog="pgwarden entrypoint"
here=$(dirname -- "$0")
source_path=${PGW_CONFIG_SOURCE:-/etc/pgwarden/conf.d}
output_path=${PGW_CONFIG_OUTPUT:-/run/pgwarden/private/pgwarden.yaml}
python=${PGW_PYTHON:-/opt/pgwarden/bin/python}
prepare=${PGW_PREPARE:-$here/prepare.py}
pgwarden=${PGW_PGWARDEN:-pgwarden}

case "${1:-}" in
  ctl | demo | run | --help | -h)
    exec "$pgwarden" "$@"
    ;;
  fencer)
    # Isolated (-I): no PYTHON* variable or user site changes what the fencer imports.
    shift
    exec "$python" -I -m agent.fencer "$@"
    ;;
esac

if [ "$(id -u)" = 0 ]; then
  echo "$prog: refusing to run as root: PostgreSQL runs as the container's user;" \
    "set securityContext.runAsUser (the image's postgres user is uid 999)" >&2
  exit 2
fi

# New files (the rendered settings, directories) are private to the postgres user.
umask 0077

"$python" "$prepare" --source "$source_path" --output "$output_path"

exec "$pgwarden" run --config "$output_path" "$@"
