# ruff: noqa: RUF001 - the docs text uses en dashes and the multiplication sign on purpose
"""The one list of configuration keys: every setting once, with its type, rule and meaning.

The loader (known keys and value types, `PGWARDEN_*` names), the effective-settings renderer
and the reference tables of docs/configuration.md all derive from `FIELDS`; defaults come from
the settings types themselves (agent/settings.py), through each field's `source`. A pure
lookup table (the type of a key and its constructors: field.py).
"""

from __future__ import annotations

from typing import Final

from agent.api_settings import ClientVerify
from agent.backup_settings import ArchiveMode, BootstrapMethod
from agent.config.field import (
    Field,
    Kind,
    credentials,
    secret_pair,
    section_field,
    timing,
)
from agent.dcs_settings import DcsKind, LockKind
from agent.postgres_settings import TlsVerify
from agent.settings import FencerMode, LogFormat, LogLevel, SyncMode

_S, _B, _N, _I = Kind.STR, Kind.BOOL, Kind.FLOAT, Kind.INT


FIELDS: Final[tuple[Field, ...]] = (
    Field(path="name", kind=_S, required=True,
          rule="A DNS label: 1–63 characters of `a-z`, `0-9`, `-`, starting and ending with a "
               "letter or digit.",
          doc="This member's name, unique in the cluster and stable across restarts (the pod "
              "name in Kubernetes). It is also PostgreSQL's `application_name` for this member "
              "(ASCII, < 64 bytes, which a DNS label always is) and the base of its replication "
              "slot name."),
    Field(path="cluster", kind=_S, required=True, rule="DNS label.",
          doc="The cluster's name. All members of a cluster share it."),
    Field(path="namespace", kind=_S, rule="DNS label.",
          doc="Key prefix in etcd (`/<namespace>/<cluster>/...`); the default Kubernetes "
              "namespace (see below)."),
    Field(path="run_dir", kind=_S, required=True, rule="Absolute path.",
          doc="The agent's runtime files (the fencer's socket, files it renders). Created at "
              "start if missing. Also the marker of a copy into the data directory "
              "(pg_basebackup, a restore, pg_rewind) that has not completed: keep it on storage "
              "that lasts as long as the data directory (the same volume, as the Kubernetes "
              "base does), not a tmpfs such as `/run` that a reboot empties, or a data "
              "directory torn by a copy or rewind the reboot interrupted is taken as whole (the "
              "agent logs `run_dir_not_durable` at start for a tmpfs `run_dir` beside a data "
              "directory that is not on one)."),
    section_field("dcs"),
    Field(path="dcs.kind", kind=_S, choices=DcsKind, required=True, rule="`etcd` or `kubernetes`."),
    section_field("dcs.etcd", default_doc="—",
             doc="Required when `kind` is `etcd`; an error when `kind` is `kubernetes`."),
    Field(path="dcs.etcd.endpoints", kind=Kind.STR_LIST, default_doc="required",
          rule="At least one. Each `http://host:port` or `https://host:port`: scheme "
               "http/https, a host, an explicit port, no path, query or credentials. All with "
               "the same scheme."),
    Field(path="dcs.etcd.ca_file", kind=_S, default_doc="unset (system CAs)",
          rule="Absolute path of a readable file. Only with `https` endpoints."),
    Field(path="dcs.etcd.cert_file", kind=_S,
          rule="Absolute, readable; requires `key_file`. Only with `https`.",
          doc="Client certificate (mTLS)."),
    Field(path="dcs.etcd.key_file", kind=_S, rule="Absolute, readable; requires `cert_file`.",
          doc="Client key."),
    Field(path="dcs.etcd.username", kind=_S, rule="Requires a password.",
          doc="etcd user (auth enabled)."),
    *secret_pair("dcs.etcd", "password", "Requires `username`. Not together with "
                  "`password_file`."),
    section_field("dcs.kubernetes", default_doc="all defaults",
             doc="Used when `kind` is `kubernetes` (may be omitted: every field has a default). "
                 "With `kind: etcd` it is optional and only configures the pod role labels (an "
                 "agent inside Kubernetes with an etcd DCS)."),
    Field(path="dcs.kubernetes.namespace", kind=_S, rule="DNS label.",
          default_doc="`$POD_NAMESPACE`, else the top-level `namespace`",
          doc="Where the Service/Endpoints or Lease and the pods live."),
    Field(path="dcs.kubernetes.lock", kind=_S, choices=LockKind,
          rule="`lease`, `endpoints` or `endpoints-and-lease`.",
          doc="`lease`: a `coordination.k8s.io/v1` Lease `<cluster>-leader`, and the leader "
              "keeps the EndpointSlice `<cluster>` of the selector-less primary Service on its "
              "address; `endpoints` (deprecated API): the leader record on the Endpoints of the "
              "selector-less `<cluster>` Service, which then routes to the leader; "
              "`endpoints-and-lease`: the step of a migration from `endpoints` to `lease`, "
              "holding both (docs/kubernetes.md)."),
    Field(path="dcs.kubernetes.pod_name", kind=_S, default_doc="`$POD_NAME`, else `name`",
          rule="A DNS subdomain (≤ 253).", doc="This member's pod."),
    Field(path="dcs.kubernetes.pod_ip", kind=_S, default_doc="`$POD_IP`, else unset",
          rule="An IP address."),
    Field(path="dcs.kubernetes.kubeconfig", kind=_S,
          default_doc="unset (in-cluster service account)",
          rule="Absolute path of a readable kubeconfig."),
    Field(path="dcs.kubernetes.labels", kind=Kind.STR_MAP,
          rule="Keys: optional DNS-subdomain prefix and `/`, then a name of 1–63 characters "
               "`[A-Za-z0-9-_.]`, alphanumeric at both ends. Values: empty, or up to 63 such "
               "characters. Must not contain `role_label`.",
          doc="Labels shared by the cluster's pods (used as the selector of its members)."),
    Field(path="dcs.kubernetes.role_label", kind=_S, rule="A label key (same syntax).",
          doc="The agent sets it on its own pod."),
    Field(path="dcs.kubernetes.primary_value", kind=_S, rule="Non-empty label value."),
    Field(path="dcs.kubernetes.replica_value", kind=_S,
          rule="Non-empty label value, different from `primary_value`."),
    Field(path="dcs.kubernetes.manage_role_label", kind=_B,
          doc="Set the role label on this pod."),
    Field(path="dcs.kubernetes.events", kind=_B,
          doc="Post Kubernetes Events (events.k8s.io/v1) on this pod for promotions, "
              "demotions, fencing, hand-overs, rewinds, re-clones and failsafe; coalesced and "
              "rate-limited (10 at once, then one per 30 s). Needs events `create` in the Role."),
    section_field("postgresql"),
    Field(path="postgresql.bin_dir", kind=_S, rule="Absolute path",
          doc="of `postgres`, `pg_ctl`, `initdb`, `pg_basebackup`, `pg_rewind`."),
    Field(path="postgresql.data_dir", kind=_S, required=True, rule="Absolute path",
          doc="of the data directory."),
    Field(path="postgresql.listen_host", kind=_S, rule="Non-empty, no whitespace.",
          doc="`listen_addresses`."),
    Field(path="postgresql.port", kind=_I, rule="1–65535."),
    Field(path="postgresql.connect_host", kind=_S,
          rule="Not a wildcard (`0.0.0.0`, `::`, `*`).",
          doc="The address other members and clients use to reach this instance (replicas' "
              "`primary_conninfo`)."),
    Field(path="postgresql.socket_dir", kind=_S, default_doc="unset (the data directory's parent)",
          rule="Absolute path.",
          doc="`unix_socket_directories`. The agent connects to PostgreSQL through this socket. "
              "**Unset, it is the directory that holds the data directory** "
              "(`/var/lib/postgresql/15` for `data_dir: /var/lib/postgresql/15/main`), and that "
              "directory must be writable by the user PostgreSQL runs as (`os_user`, or the "
              "agent's user): PostgreSQL creates its socket and lock file (`.s.PGSQL.<port>`, "
              "`.s.PGSQL.<port>.lock`) there and does not start otherwise. A data directory "
              "directly under a root-owned directory (`/srv/pgdata` in `/srv`) therefore needs "
              "`socket_dir` (for example `/run/postgresql`, or a directory under `run_dir`). A "
              "directory that does not exist yet is created (with missing parents) for that "
              "user, mode 0700."),
    Field(path="postgresql.os_user", kind=_S, rule="Non-empty.",
          doc="When the agent runs as root, PostgreSQL and its tools run as this user (required "
              "then: PostgreSQL refuses to run as root). Unset, they run as the agent's own "
              "user, which is how the container image works (see \"Which OS user\" above)."),
    Field(path="postgresql.nice", kind=_I, rule="0–19.",
          doc="The nice value the agent starts PostgreSQL at (the postmaster; its backends "
              "inherit it), the agent and its fencer staying at their own (0): inside one CPU "
              "quota (a container's limit), a throttled group's CPU then goes to them first, "
              "so the fencer stops a busy server sooner (docs/ha.md, Fencing). Raising a nice "
              "value needs no privilege. A server already running when the agent starts is "
              "raised to it, never lowered (restart PostgreSQL to lower it). 0: unchanged. "
              "Off by default: in the soaks at 0.01 CPU per member it did not shorten the "
              "fencing, and the starved server, now behind its own agent, was killed more often "
              "as unresponsive; try 10 under a tight limit (docs/ha.md)."),
    *credentials("postgresql.superuser", "The agent connects as this user."),
    *credentials("postgresql.replication", "Replicas stream as this user."),
    Field(path="postgresql.parameters", kind=Kind.PARAM_MAP,
          rule="Names must be PostgreSQL parameter names (`name` or `extension.name`). Refused, "
               "because pgwarden sets them itself: `port`, `listen_addresses`, "
               "`unix_socket_directories`, `data_directory`, `config_file`, `hba_file`, "
               "`ident_file`, `cluster_name`, `hot_standby`, `wal_log_hints`, "
               "`logging_collector`, `primary_conninfo`, `primary_slot_name`, "
               "`synchronous_standby_names`. `wal_level`, when set, must be `replica` or "
               "`logical`.",
          doc="Server settings, name → string, integer, number or boolean (`true` → `on`, "
              "`false` → `off`). They outrank the cluster-wide `postgresql.parameters` of the "
              "DCS `config` record (see \"PostgreSQL settings from the DCS\" below)."),
    Field(path="postgresql.pg_hba", kind=Kind.STR_LIST,
          rule="Each one line starting with a connection type (`local`, `host`, `hostssl`, "
               "`hostnossl`, `hostgssenc`, `hostnogssenc`, or an `include*` directive).",
          doc="Extra `pg_hba.conf` lines, placed before the DCS's `pg_hba` lines and the "
              "agent's own (first match wins)."),
    section_field("postgresql.tls", default_doc="unset (no TLS)",
             doc="TLS for PostgreSQL: `ssl = on` with these files, the agent's `pg_hba` lines "
                 "for replication and the superuser become `hostssl` (a connection without TLS "
                 "from the network is refused), and replicas, `pg_basebackup` and `pg_rewind` "
                 "verify the member they connect to (`verify`). The files are copied into "
                 "`<run_dir>/postgres/tls/` (owned by PostgreSQL's OS user, the key with mode "
                 "0600, as PostgreSQL requires) before every start of PostgreSQL, and again "
                 "when they change on disk (checked every `loop_wait_s`), followed by a reload: "
                 "renewed files are served to new connections without a restart. See "
                 "\"TLS\" above."),
    Field(path="postgresql.tls.cert_file", kind=_S, required=True, default_doc="required",
          rule="Absolute path of a readable PEM file.",
          doc="The server certificate (chain) of this member."),
    Field(path="postgresql.tls.key_file", kind=_S, required=True, default_doc="required",
          rule="Absolute path of a readable PEM file (readable by the agent; any owner and mode).",
          doc="Its private key."),
    Field(path="postgresql.tls.ca_file", kind=_S, required=True, default_doc="required",
          rule="Absolute path of a readable PEM file.",
          doc="The CA that signs the members' certificates (`sslrootcert` of replicas and tools; "
              "the server's `ssl_ca_file`)."),
    Field(path="postgresql.tls.verify", kind=_S, choices=TlsVerify,
          rule="`verify-full` or `verify-ca`.",
          doc="`verify-full`: the certificate must name the member's `connect_host` (a DNS name "
              "or an IP address in its subjectAltName). `verify-ca`: any certificate of that CA "
              "is accepted: for members addressed by IP addresses that cannot be known when the "
              "certificate is made (pod IPs in Kubernetes); use a CA that signs nothing but this "
              "cluster's members then."),
    section_field("api"),
    Field(path="api.listen_host", kind=_S, rule="Non-empty."),
    Field(path="api.port", kind=_I, rule="1–65535; not the PostgreSQL port on the same "
          "`listen_host`."),
    Field(path="api.connect_url", kind=_S, source="api.url",
          default_doc="`http://<listen_host>:<port>` (`https` with `api.tls`)",
          rule="`http(s)://host[:port]`, no path or credentials. Required when `listen_host` is "
               "a wildcard (`0.0.0.0`, `::`).",
          doc="How peers and `pgwarden ctl` reach this agent; `--check-config` shows the "
              "effective URL."),
    *secret_pair("api", "token", "", "Bearer token for mutating routes."),
    Field(path="api.username", kind=_S, source="api.basic.username", rule="Requires a password.",
          doc="Basic-auth user for mutating routes."),
    *secret_pair("api", "password", "Requires `username`.", source="api.basic.password"),
    Field(path="api.insecure_no_auth", kind=_B,
          rule="With no token and no basic credentials the configuration is refused "
               "(`api.token: set a token or basic credentials, or api.insecure_no_auth: true`) "
               "unless this is `true`; `true` together with credentials is refused as "
               "contradictory.",
          doc="Mutating routes (switchover, failover, restart, ...) need credentials. Read-only "
              "routes and probes never need credentials."),
    section_field("api.tls", default_doc="unset (plain HTTP)",
             doc="Serve the API over HTTPS; the certificate and key are re-read when their files "
                 "change (no restart; a bad new pair keeps the old one and logs "
                 "`api_tls_reload_failed`). Peers and `pgwarden ctl` verify `https` members "
                 "against `ca_file`."),
    Field(path="api.tls.cert_file", kind=_S, default_doc="required",
          rule="Absolute path of a readable PEM file.",
          doc="The API's certificate (chain); with `verify_client` also the client certificate "
              "this member presents to its peers."),
    Field(path="api.tls.key_file", kind=_S, default_doc="required",
          rule="Absolute path of a readable PEM file.", doc="Its private key."),
    Field(path="api.tls.ca_file", kind=_S, default_doc="unset (system CAs)",
          rule="Absolute path of a readable PEM file. Required unless `verify_client` is `off`.",
          doc="The CA that signs the members' certificates: peers' API certificates and client "
              "certificates are verified against it."),
    Field(path="api.tls.verify_client", kind=_S, choices=ClientVerify,
          rule="`off`, `optional` or `required`.",
          doc="`required`: a client without a certificate signed by `ca_file` fails the TLS "
              "handshake; `optional`: one is asked for and, if sent, must verify. A verified "
              "certificate does not replace the token: mutating routes need both."),
    section_field("timing"),
    timing("ttl_s", "> 0, ≥ 4, and ≥ `loop_wait_s + 2 * retry_timeout_s + fence_margin_s` "
            "(see below).", "The leader lease's time to live."),
    timing("loop_wait_s", "> 0.", "Time between HA cycles (a DCS watch event or an API request "
            "starts a cycle at once)."),
    timing("retry_timeout_s", "> 0.", "Deadline of one DCS or PostgreSQL operation, retries "
            "included."),
    timing("fence_margin_s", "> 0, ≥ 0.5.", "The leader stops writes this long before its "
            "lease can expire."),
    timing("primary_start_timeout_s", "> 0.", "How long the leader tries to restart a crashed "
            "PostgreSQL before it releases the lease."),
    timing("switchover_timeout_s", "> 0.", "How long a switchover waits for the candidate to "
            "take over."),
    timing("peer_check_timeout_s", "> 0, < `loop_wait_s`.", "Deadline of a direct check of a "
            "peer's API (failsafe, candidate checks)."),
    timing("shutdown_timeout_s", "> 0.", "Bound on a clean shutdown (after the handover of a "
            "leader)."),
    timing("postgres_unresponsive_s",
            "> 0, and `postgres_unresponsive_s + retry_timeout_s <= ttl_s - fence_margin_s`.",
            "A leader whose PostgreSQL process exists but answers no query (the probe timed "
            "out) for this long SIGKILLs it and every child, then restarts it in place (or "
            "releases the lease after `primary_start_timeout_s`). Counted from the first probe "
            "that timed out, which itself waited 0.7 × `retry_timeout_s`. The lease is never "
            "released while that process exists. A primary that answers but cannot commit "
            "(WAL waits to be flushed, the flush does not move, and a heartbeat commit does "
            "not complete: hung storage) for this long is SIGKILLed too and hands the lease "
            "on at once, without a restart in place."),
    timing("clone_timeout_s", "> 0.", "Bound on one clone of this member from the leader "
            "(`pg_basebackup`); a clone that takes longer is stopped and counts as failed."),
    timing("rewind_timeout_s", "> 0.", "Bound on one `pg_rewind` of a former primary onto "
            "the new leader; a longer one is stopped and counts as failed. An unreachable leader "
            "is retried for `ttl_s`, then given up (data intact) and tried again if it leads."),
    section_field("tags"),
    Field(path="tags.nofailover", kind=_B,
          doc="Never promote this member (it also never bootstraps an empty cluster)."),
    Field(path="tags.failover_priority", kind=_I, rule="≥ 0.",
          doc="Among equally up-to-date candidates, the higher priority wins."),
    Field(path="tags.nosync", kind=_B,
          rule="Setting `sync_priority` above 0 as well is a configuration error (the two "
               "contradict each other).",
          doc="Never choose this member as a synchronous standby."),
    Field(path="tags.sync_priority", kind=_I, rule="≥ 0.",
          doc="Preference when choosing synchronous standbys (higher first, then by name); 0 "
              "means never synchronous, like `nosync`. `nofailover` members are never "
              "synchronous either: they could not take over with the commits they hold. "
              "`nofailover: true` with `failover_priority` above 0 is a configuration error."),
    Field(path="tags.replicatefrom", kind=_S, default_doc="unset (the leader)",
          rule="A member name (DNS label), not this member's.",
          doc="Cascading replication: stream from this member instead of the leader while its "
              "record shows it a replica streaming on the leader's timeline (and it does not "
              "itself replicate from this member); back to the leader as soon as its record "
              "says otherwise or is gone (a member that died outright: when its record "
              "expires, within `ttl_s`). No replication slot is used on the upstream replica "
              "(WAL is kept there by `wal_keep_size`); the leader drops its slot for this "
              "member meanwhile and makes it again on the fall-back."),
    Field(path="tags.clonefrom", kind=_B,
          doc="Prefer this member as the `pg_basebackup` source when a member without data "
              "clones (a streaming replica tagged `clonefrom`, by name, before the leader); a "
              "re-clone after a failed rewind or a reinitialize uses the leader."),
    Field(path="tags.noloadbalance", kind=_B,
          doc="Keep read traffic away: `/replica` (and its lag variant) and, on a replica, "
              "`/read-only` answer 503 (the synchronous-role probes are unchanged)."),
    Field(path="tags.nostream", kind=_B,
          rule="Refused when `true` (a configuration error).",
          doc="A member that replays WAL from the archive only, never streaming: needs WAL "
              "archiving, which pgwarden does not manage yet."),
    section_field("ha"),
    Field(path="ha.maximum_lag_on_failover_bytes", kind=_I, default_doc="`1048576` (1 MiB)",
          rule="≥ 0.",
          doc="A replica further behind the last known leader position does not take part in a "
              "failover (a member of the recorded synchronous set is exempt: it holds every "
              "acknowledged commit)."),
    Field(path="ha.synchronous_mode", kind=_S, choices=SyncMode,
          rule="`off`, `on` (`FIRST k`: the k chosen standbys confirm every commit) or `quorum` "
               "(`ANY k` of all eligible standbys).",
          doc="Quote `'on'`/`'off'` in YAML (unquoted they are booleans). Seeds the DCS "
              "`config` record when this member bootstraps the cluster; afterwards change it "
              "with `PATCH /config`. See docs/ha.md, \"Synchronous replication\"."),
    Field(path="ha.synchronous_node_count", kind=_I, rule="≥ 1.",
          doc="The k above (seed only, as `synchronous_mode`)."),
    Field(path="ha.synchronous_mode_strict", kind=_B,
          doc="With no healthy standby: `true` keeps commits waiting; `false` falls back to "
              "asynchronous replication and records that in the DCS (seed only)."),
    Field(path="ha.maximum_lag_on_syncnode_bytes", kind=_I, rule="-1 (no limit) or ≥ 0.",
          doc="A standby further behind (by its flushed position) is swapped out of the "
              "synchronous set while another is available (seed only)."),
    Field(path="ha.maximum_flush_lag_on_syncnode_s", kind=_N, default_doc="`1`",
          rule="-1 (off) or > 0.",
          doc="This member's own setting, used while it leads (not a seed): a synchronous or "
              "quorum standby whose `pg_stat_replication.flush_lag` exceeds it (a standby that "
              "streams but flushes slowly: every commit waits that long for it) is left out of "
              "the synchronous set while enough other streaming standbys are below it. The "
              "swap keeps the DCS `sync` record a superset of who may hold the latest commit "
              "(the new standby is added and confirms before the slow one leaves). See "
              "[ha.md](ha.md#synchronous-replication)."),
    Field(path="ha.failsafe_mode", kind=_B,
          doc="Seed only (then `PATCH /config {\"failsafe_mode\": true}`). When the DCS cannot "
              "be reached, the primary stays primary past its lease as long as **every** other "
              "member confirms it over the agents' REST API (`POST /failsafe`), instead of "
              "stopping at its fencing deadline. All members must share the API credentials. "
              "See [ha.md](ha.md#failsafe-mode)."),
    Field(path="ha.wal_receiver_stall_s", kind=_N, default_doc="`30`",
          rule="0 (off) or ≥ 1.",
          doc="A replica whose PostgreSQL has not streamed from its upstream for this long (no "
              "WAL receiver in `streaming` state and no progress of its received or replayed "
              "position), while the upstream's record says it runs, signals its WAL receiver "
              "to stop (SIGTERM); the startup process starts a new one, which opens a new "
              "replication connection. It covers a receiver stuck in its connection start-up "
              "on a peer that acknowledges but never answers (a wedged proxy or pooler), where "
              "PostgreSQL enforces neither `connect_timeout` nor `wal_receiver_timeout`. Each "
              "further restart without streaming in between waits twice as long (at most 8 "
              "times this); none while the cluster is paused. The default is above the "
              "kernel's own dead-peer detection in `primary_conninfo` (10-11 s) and a "
              "connection start-up at seconds of round trip. See "
              "[ha.md](ha.md#a-stuck-wal-receiver)."),
    section_field("callbacks",
             doc="Commands run on PostgreSQL events, each as a separate process (never through "
                 "a shell): the command's words, then three arguments, as Patroni passes them: "
                 "the event (`on_start`, ...), the member's role (`primary`, `replica`, "
                 "`demoted`) and the cluster name. They run as PostgreSQL's OS user "
                 "(`postgresql.os_user`, else the agent's), in `/`, with `PGHOST` (the socket "
                 "directory), `PGPORT`, `PGUSER` (the superuser) and `PGDATABASE=postgres` set, "
                 "so `psql` connects to the local server."),
    *(Field(path=f"callbacks.{name}", kind=_S,
            rule="A command line (shell quoting, no shell); its program an absolute path of an "
                 "executable file.",
            doc=doc)
      for name, doc in (
          ("on_start", "After the agent started PostgreSQL (not after a restart)."),
          ("on_stop", "After the agent stopped PostgreSQL (shutdown, a kill of a hung "
                      "server; not a restart or a demotion)."),
          ("on_restart", "After a restart: one the operator asked for (`POST /restart`), or "
                         "this member's turn in a rolling restart (in place)."),
          ("on_reload", "After the agent made a running PostgreSQL re-read its configuration "
                        "(`POST /reload`, or a change of the DCS `postgresql` settings)."),
          ("on_role_change", "After a promotion (role `primary`) and after a demotion, a "
                             "hand-over or the fencer stopped the former primary (role "
                             "`demoted`: repoint a virtual IP or PgBouncer away from it)."),
          ("pre_promote", "Run after this member took the leader lease and before it "
                          "promotes (the lease is renewed meanwhile). A non-zero exit or no "
                          "exit within `pre_promote_timeout_s` vetoes that promotion: the "
                          "member releases the lease and stays out of the race for `ttl_s` "
                          "(its member record says `promotion_vetoed`), so another member "
                          "takes over."),
          ("post_bootstrap", "Run once, on the member that ran initdb for a new cluster, "
                             "after the roles exist and before the cluster is recorded as "
                             "initialized (create roles and databases). A non-zero exit or a "
                             "timeout fails the bootstrap: PostgreSQL is stopped, the new data "
                             "directory's contents are removed, the claim to initialize the "
                             "cluster is withdrawn and the lease released, and a member "
                             "bootstraps again after a pause (nothing half-initialized ever "
                             "serves as the leader). While it runs PostgreSQL listens on its "
                             "Unix socket only (`PGHOST`): no TCP client can connect, so no "
                             "write is acknowledged that a failure would discard; it is "
                             "restarted listening as configured once the hook succeeded. An "
                             "agent (or a whole pod) stopped while the hook runs discards that "
                             "cluster the same way at its next start."),
      )),
    Field(path="callbacks.timeout_s", kind=_N, rule="> 0.",
          doc="An `on_*` callback still running after this long is killed (SIGKILL to its "
              "process group). A new call for the same event kills an older one still "
              "running. The HA loop never waits for them."),
    Field(path="callbacks.pre_promote_timeout_s", kind=_N, rule="> 0.",
          doc="`pre_promote` still running after this long is killed, and vetoes the "
              "promotion."),
    Field(path="callbacks.post_bootstrap_timeout_s", kind=_N, rule="> 0.",
          doc="`post_bootstrap` still running after this long is killed, and fails the "
              "bootstrap."),
    section_field("pgbackrest", default_doc="unset (no archiving, no backups)",
             doc="A pgBackRest repository for WAL archiving, backups, replicas restored from "
                 "a backup and bootstrap from a backup (README, \"Backups\"). The agent writes "
                 "pgBackRest's configuration to `<run_dir>/pgbackrest/pgbackrest.conf` (the "
                 "stanza with this member's data directory, port and socket) and runs every "
                 "member with `archive_mode`, `archive_command = pgbackrest ... archive-push "
                 "%p` and `restore_command = pgbackrest ... archive-get %f \"%p\"`; those "
                 "three are refused in `postgresql.parameters` then. The first leader of a new "
                 "cluster runs `stanza-create` once the DCS records the new cluster, before "
                 "opening it to clients."),
    Field(path="pgbackrest.repo_path", kind=_S, default_doc="required", rule="Absolute path.",
          doc="`repo1-path`: the repository's directory (for `s3`, `gcs`, `azure`: the path in "
              "the bucket or container). Every member must reach the same repository."),
    Field(path="pgbackrest.repo_type", kind=_S,
          rule="`posix`, `s3`, `gcs`, `azure`, `cifs` or `sftp`.",
          doc="`repo1-type`. Only `posix` (a shared or local path) is tested here; the others "
              "take their options (`repo1-s3-bucket`, `repo1-s3-endpoint`, `repo1-s3-region`, "
              "keys...) from `options` or pgBackRest's `PGBACKREST_*` environment variables."),
    Field(path="pgbackrest.stanza", kind=_S, default_doc="the `cluster` name",
          rule="1–64 characters of `A-Z a-z 0-9 _ . -`.", doc="The stanza of this cluster."),
    Field(path="pgbackrest.command", kind=_S, rule="Absolute path of an executable file.",
          doc="The pgBackRest program (Debian package `pgbackrest`)."),
    Field(path="pgbackrest.options", kind=Kind.PARAM_MAP,
          rule="Names are pgBackRest option names (`a-z`, `0-9`, `-`); refused: `stanza`, "
               "`config*`, `repo1-path`, `repo1-type`, `lock-path`, `log-path` and every "
               "`pgN-*` option (the agent sets them). Values on one line.",
          doc="More `[global]` options, name → value: `repo1-retention-full`, "
              "`compress-type`, `process-max`, `repo1-s3-bucket`, `archive-async`, ..."),
    Field(path="pgbackrest.archive_mode", kind=_S, choices=ArchiveMode, rule="`on` or `always`.",
          doc="`archive_mode` on every member. `on`: the primary archives (a promoted replica "
              "archives from its promotion on); `always`: every replica also archives what "
              "it receives, so the archive has no gap when a primary dies with segments not "
              "yet archived, at the cost of every member pushing every segment (pgBackRest "
              "keeps one copy). Quote it in YAML."),
    Field(path="pgbackrest.backup_timeout_s", kind=_N, rule="> 0.",
          doc="Bound on one `pgwarden ctl backup` (`pgbackrest backup`)."),
    Field(path="pgbackrest.restore_timeout_s", kind=_N, rule="> 0.",
          doc="Bound on one restore (a replica created from the repository, or a bootstrap "
              "from a backup, recovery included)."),
    Field(path="create_replica_methods", kind=Kind.STR_LIST,
          default_doc="`[basebackup]`",
          rule="`pgbackrest` and/or `basebackup`, each at most once; `pgbackrest` needs the "
               "`pgbackrest` section.",
          doc="How a member without data becomes a replica, tried in this order: `pgbackrest` "
              "restores the latest backup (`--type=standby`), replays the archive and then "
              "streams from the leader; `basebackup` runs `pg_basebackup` from the leader. A "
              "method that fails (no backup yet, a repository that cannot be read) is "
              "followed by the next one."),
    section_field("bootstrap", doc="How the first member of a new cluster makes its data."),
    Field(path="bootstrap.method", kind=_S, choices=BootstrapMethod,
          rule="`initdb` or `pgbackrest` (needs the `pgbackrest` section).",
          doc="`pgbackrest`: restore the repository's backup (to the target below, else to the "
              "end of the archive), recover, and promote on a new timeline; the other members "
              "then clone from this one. A target the archive cannot reach fails the bootstrap "
              "with PostgreSQL's reason and leaves the data directory empty and the cluster "
              "uninitialized."),
    Field(path="bootstrap.stanza", kind=_S,
          rule="Required with `method: pgbackrest`; 1-64 characters of `A-Z a-z 0-9 _ . -`; "
               "not this cluster's own stanza (`pgbackrest.stanza`, by default the cluster "
               "name).",
          doc="The stanza restored from: the source cluster's. The restored cluster archives "
              "into its own stanza, never into this one, so that a source cluster still "
              "running and the new one do not push WAL and history files into one archive "
              "(after a disaster, give the restored cluster a new `pgbackrest.stanza`)."),
    Field(path="bootstrap.recovery_target_time", kind=_S,
          rule="A timestamp with a time zone; not with `recovery_target_lsn`; only with "
               "`method: pgbackrest`.",
          doc="Recover up to this time (the last commit at or before it)."),
    Field(path="bootstrap.recovery_target_lsn", kind=_S,
          rule="An LSN (`0/3000060`); only with `method: pgbackrest`.",
          doc="Recover up to this WAL position."),
    section_field("log"),
    Field(path="log.level", kind=_S, choices=LogLevel,
          rule="`debug`, `info`, `warning` or `error`.",
          doc="Library messages (aiohttp, asyncio) are shown from `warning` up whatever the "
              "level."),
    Field(path="log.format", kind=_S, choices=LogFormat,
          rule="`json`, `console` or `auto`.",
          doc="`json`: one JSON object per line (`timestamp` in ISO 8601 UTC, `level`, `event`, "
              "`cluster`, `member`, fields); `console`: readable lines; `auto`: console on a "
              "terminal, JSON otherwise (containers)."),
    section_field("fencer",
             doc="The fencer: the small process that stops PostgreSQL at the leader's fencing "
                 "deadline whatever the agent does (docs/ha.md, Self-fencing)."),
    Field(path="fencer.mode", kind=_S, choices=FencerMode, rule="`spawn` or `external`.",
          doc="`spawn`: the agent starts its fencer as a child in a session of its own, and "
              "starts it again the moment it dies. `external`: the agent never starts one; a "
              "fencer run by someone else (a container of its own in the Kubernetes pod, with "
              "its own CPU limit: docs/kubernetes.md) must listen on `socket` and see this "
              "agent's process and data directory, else every call to it fails and the member "
              "does not lead (no acquire, no promotion) until it does. A `spawn` agent that "
              "finds an external fencer on its socket uses it and never starts one over it."),
    Field(path="fencer.socket", kind=_S, default_doc="`<run_dir>/fencer.sock`",
          rule="Absolute path.",
          doc="The fencer's Unix socket. With `external`, a directory both containers mount "
              "(an `emptyDir`)."),
)  # fmt: skip

BY_PATH: Final = {f.path: f for f in FIELDS}
