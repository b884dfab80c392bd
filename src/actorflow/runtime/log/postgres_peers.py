"""What the nodes of a schema keep in PostgreSQL to talk to each other directly.

Each node publishes the address of its peer listener in ``nodes.peer``; the nodes authenticate
their links with one secret kept in ``peer_secret`` (made by the first node that needs it). A
delivery forwarded to its run's owner and then committed to the inbox (the link failed) is
flagged ``forwarded``: the owner may have appended it already, under the same event id, so
whoever takes it first checks ``events`` (``in_history``) and, if it is there, only removes
the row and tells its sender (``settle_inbox``).
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from psycopg import sql

from actorflow.runtime.log.postgres_cluster import Directory

__all__ = ["PeerDirectory"]


class PeerDirectory:
    """The peer-link side of a node's ``Directory`` (its connections, its errors)."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        schema = directory.schema

        def render(template: str, **tables: str) -> bytes:
            identifiers = {k: sql.Identifier(schema, v) for k, v in tables.items()}
            return sql.SQL(template).format(**identifiers).as_bytes(None)

        self._publish = render("UPDATE {nodes} SET peer = %s WHERE node_id = %s", nodes="nodes")
        self._make_secret = render(
            "INSERT INTO {t} (secret) VALUES (%s) ON CONFLICT DO NOTHING", t="peer_secret"
        )
        self._secret = render("SELECT secret FROM {t}", t="peer_secret")
        self._in_history = render(
            "SELECT event_id FROM {events} WHERE event_id = ANY(%s)", events="events"
        )
        self._settle = render(
            "WITH gone AS (DELETE FROM {inbox} WHERE event_id = ANY(%s) AND taken_by = %s"
            " RETURNING event_id) SELECT pg_notify(%s, 'took:' || event_id) FROM gone",
            inbox="inbox",
        )

    def publish(self, address: str) -> None:
        """Show this node's peer listener to the others (``host:port``)."""
        node_id = self._directory.node_id
        self._directory._call(
            "peer address", lambda conn: conn.execute(self._publish, (address, node_id))
        )

    def secret(self) -> bytes:
        """The schema's link secret (made now if no node has made it yet)."""

        def run(conn: psycopg.Connection[Any]) -> bytes:
            conn.execute(self._make_secret, (secrets.token_bytes(32),))
            row = conn.execute(self._secret).fetchone()
            assert row is not None
            return bytes(row[0])

        result: bytes = self._directory._call("peer secret", run)
        return result

    def in_history(self, event_ids: list[str]) -> set[str]:
        """Which of these events are in the log already."""

        def run(conn: psycopg.Connection[Any]) -> set[str]:
            return {str(r[0]) for r in conn.execute(self._in_history, (event_ids,)).fetchall()}

        result: set[str] = self._directory._call("read", run)
        return result

    def settle_inbox(self, event_ids: list[str]) -> None:
        """Remove inbox rows this node claimed whose events are in the log already (forwarded
        and appended before their copy came here); their senders hear ``took``."""
        directory = self._directory
        params = (event_ids, directory.node_id, directory.q.channel)
        directory._call("inbox settle", lambda conn: conn.execute(self._settle, params).fetchall())
