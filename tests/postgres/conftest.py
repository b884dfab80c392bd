"""Fixtures of the PostgreSQL tests: a database of their own per test run, a schema per test.

The server is ``ACTORFLOW_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``,
trust authentication). Each test run creates a database with a random name there and drops it at
the end, so runs on one server never see each other's data; each test gets a fresh schema in it
(``PostgresLog(schema=...)``), which is cheaper than a database per test and keeps tests apart
just as well.

Without a reachable server (or without psycopg) the tests skip with the reason, except under
``CI=true``: CI machines have PostgreSQL, so there its absence is a failure, not a skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN_DSN = os.environ.get("ACTORFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip, or under ``CI=true`` fail, naming what is missing."""
    if in_ci():
        pytest.fail(
            f"{reason}; CI=true and CI machines run PostgreSQL, so this is a failure, not a skip",
            pytrace=False,
        )
    pytest.skip(f"{reason} (set ACTORFLOW_TEST_POSTGRES to a server's URL to run these tests)")


def require_psycopg() -> None:
    """Skip the calling test module when psycopg is missing (fail under ``CI=true``)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        if in_ci():
            raise
        pytest.skip(
            f"psycopg is not installed ({exc}); install actorflow's `postgres` extra",
            allow_module_level=True,
        )


@dataclass(frozen=True)
class Database:
    """The test run's own database: ``dsn`` connects to it, ``admin`` runs side statements."""

    dsn: str
    name: str
    admin: Any  # an autocommit psycopg connection to it, for setting up and inspecting

    @property
    def url(self) -> str:
        """A ``postgresql://`` URL of this database (what ``--store`` and ``store=`` take)."""
        parts = urlsplit(ADMIN_DSN)
        assert parts.scheme in ("postgresql", "postgres"), (
            f"ACTORFLOW_TEST_POSTGRES must be a postgresql:// URL, not {ADMIN_DSN!r}"
        )
        return urlunsplit(parts._replace(path=f"/{self.name}"))

    def query(self, statement: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""
        return list(self.admin.execute(statement, params).fetchall())

    def run(self, statement: Any, params: Any = None) -> None:
        """Run statements that return no rows."""
        self.admin.execute(statement, params)

    def terminate(self, application_name: str = "actorflow") -> int:
        """Kill every backend of this database with this application name; return how many."""
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
            (self.name, application_name),
        )
        return len(rows)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[Database]:
    """A database created for this test run, dropped (with its connections) at the end."""
    require_psycopg()
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    try:
        server = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}".strip())
    name = f"actorflow_test_{secrets.token_hex(6)}"
    try:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn = make_conninfo(ADMIN_DSN, dbname=name)
        admin = psycopg.connect(dsn, autocommit=True, application_name="actorflow-tests")
        try:
            yield Database(dsn=dsn, name=name, admin=admin)
        finally:
            admin.close()
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        server.close()


@pytest.fixture
def pg_schema() -> str:
    """A schema name no other test uses (the store creates it)."""
    return f"t_{secrets.token_hex(6)}"
