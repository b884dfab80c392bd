"""Where the log lives and who owns runs: chosen once, when a runtime opens.

The embedded file log (``data_dir/log``), a store object given by the caller, or PostgreSQL for a
``postgresql://`` URL. Over a shared PostgreSQL log (a ``ClusterLog``), run ownership is shared
with the other processes on the schema (``cluster.SharedOwnership``); otherwise this process owns
every run (``ownership.LocalOwnership``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkflowDefinitionError
from .log.file_log import FileLog
from .log.store import Durability, EventStore
from .ownership import LocalOwnership, Ownership
from .payloads import Payloads
from .response_waiters import WebhookResponses
from .state import RunState

__all__ = [
    "POSTGRES_SCHEMES",
    "StoreConfig",
    "describe",
    "open_store",
    "opening_stores_with",
    "poll_interval_or",
    "share_ownership",
    "shared_log",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_CLUSTER_MODULE = "actorflow.runtime.log.postgres_cluster"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    store: EventStore | str | None
    data_dir: Path
    durability: Durability
    node_id: str
    schema: str
    migrate: bool
    lease_seconds: float
    #: The runtime's version: on a shared store, the node claims only runs of this version.
    version: str | None = None


Opener = Callable[[StoreConfig], EventStore | None]

#: Set by ``opening_stores_with``, innermost last: (opener, poll interval or None).
_openers: list[tuple[Opener, float | None]] = []


@contextmanager
def opening_stores_with(opener: Opener, *, poll_interval: float | None = None) -> Iterator[None]:
    """Within the block, runtimes open their store with ``opener`` first (``None``: as usual),
    and poll runs owned elsewhere every ``poll_interval`` seconds if one is given.

    For running one suite on another backend (the core's tests on PostgreSQL) without touching
    the tests; not for production, where ``Runtime(store=...)`` says where the log is.
    """
    entry = (opener, poll_interval)
    _openers.append(entry)
    try:
        yield
    finally:
        _openers.remove(entry)


def poll_interval_or(default: float) -> float:
    """The poll interval an ``opening_stores_with`` block sets, else ``default``."""
    if _openers and _openers[-1][1] is not None:
        return float(_openers[-1][1])
    return default


def open_store(config: StoreConfig) -> EventStore:
    """The store to open: the one given, PostgreSQL for a URL, else the file log.

    Raises:
        WorkflowDefinitionError: a URL was given but psycopg is not installed.
    """
    if _openers:
        opened = _openers[-1][0](config)
        if opened is not None:
            return opened
    store = config.store
    if store is None:
        return FileLog(config.data_dir / "log", durability=config.durability)
    if isinstance(store, str):
        try:
            from .log.postgres_cluster import ClusterLog
        except ImportError as exc:
            raise WorkflowDefinitionError(
                "store='postgresql://...' needs psycopg: pip install 'actorflow[postgres]'"
            ) from exc
        return ClusterLog(
            store,
            node_id=config.node_id,
            durability=config.durability,
            schema=config.schema,
            migrate=config.migrate,
            lease_seconds=config.lease_seconds,
            version=config.version,
        )
    return store


def shared_log(store: EventStore) -> Any:
    """The ``ClusterLog`` under ``store`` (itself, or the store a wrapper holds as ``inner``),
    or ``None``. Without the PostgreSQL module imported no store can be one."""
    module = sys.modules.get(_CLUSTER_MODULE)
    if module is None:
        return None
    for candidate in (store, getattr(store, "inner", None)):
        if isinstance(candidate, module.ClusterLog):
            return candidate
    return None


def share_ownership(
    store: EventStore,
    local: LocalOwnership,
    *,
    payloads: Payloads,
    responses: WebhookResponses,
    adopt_run: Callable[[RunState], None],
    fail: Callable[[BaseException], None],
    failure: Callable[[], BaseException | None],
    poll_interval: float,
    version: str | None = None,
    peer_bind: tuple[str, int] | None = ("127.0.0.1", 0),
) -> Ownership | None:
    """Shared ownership over ``store`` if it is a shared PostgreSQL log, else ``None``.

    A node claims only runs of the runtime's ``version`` (given to a store object made by the
    caller too, before its first claim). It listens for its peers' links at ``peer_bind``
    (``None``: it takes deliveries by the inbox only).

    Raises:
        WorkflowDefinitionError: the store was made for another version than the runtime's.
    """
    log = shared_log(store)
    if log is None:
        return None
    if version is not None:
        if log.version not in (None, version):
            raise WorkflowDefinitionError(
                f"the store claims runs of version {log.version!r} and the runtime runs "
                f"version {version!r}; give both the same version"
            )
        log.version = version
    from .cluster import SharedOwnership

    return SharedOwnership(
        log,
        local,
        payloads=payloads,
        responses=responses,
        adopt_run=adopt_run,
        fail=fail,
        failure=failure,
        poll_interval=poll_interval_or(poll_interval),
        peer_bind=peer_bind,
    )


def describe(store: EventStore | None, config: StoreConfig) -> str:
    """Where the log is, for messages (never a password)."""
    log = shared_log(store) if store is not None else None
    if log is not None:
        return f"PostgreSQL {log._where}, node {log.node_id}"
    if config.store is not None:
        return f"store {type(config.store).__name__}"
    return f"data dir {config.data_dir}"
