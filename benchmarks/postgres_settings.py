"""What PostgreSQL itself does about durability, read from the server a benchmark measures.

actorflow's ``durability="fsync"`` waits for each commit, but what a commit means is the
server's: with ``fsync = off`` or ``synchronous_commit = off`` it acknowledges before the WAL is
on disk. Every PostgreSQL figure is reported with both settings as ``SHOW`` gives them.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

__all__ = ["SETTINGS", "server_durability"]

SETTINGS = ("fsync", "synchronous_commit")


def server_durability(dsn: str) -> dict[str, str]:
    """``{"fsync": ..., "synchronous_commit": ...}`` as the server at ``dsn`` reports them to
    that database and role (``synchronous_commit`` can be set per database or per role)."""
    found: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        for name in SETTINGS:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            found[name] = str(row[0]) if row is not None else "?"
    return found
