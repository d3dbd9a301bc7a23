"""PostgreSQL control: the postmaster (process), probes (probe), renderers (replication),
data directory creation (bootstrap). The HA loop imports from here."""

from agent.postgres.bootstrap import (
    clear_data_dir,
    clone,
    create_roles,
    drop_slots,
    ensure_slots,
    initdb,
    rewind,
)
from agent.postgres.probe import Prober, read_controldata
from agent.postgres.process import PostgresError, Postmaster, StandbyConfig, StopMode
from agent.postgres.replication import primary_conninfo, slot_name_for

__all__ = [
    "PostgresError",
    "Postmaster",
    "Prober",
    "StandbyConfig",
    "StopMode",
    "clear_data_dir",
    "clone",
    "create_roles",
    "drop_slots",
    "ensure_slots",
    "initdb",
    "primary_conninfo",
    "read_controldata",
    "rewind",
    "slot_name_for",
]
