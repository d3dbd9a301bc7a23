"""pgwarden: a high-availability agent for PostgreSQL."""

__version__ = "0.1.0"
