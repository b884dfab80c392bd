"""What the inspection commands talk to: a server over HTTP, a file log, or PostgreSQL.

Each target answers with the JSON forms of the query API's records, so the commands render
one shape whatever the target. Reads never write: the file log is read without its lock, and
PostgreSQL through a catalog connection, without joining the schema as a node.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import anyio

from .errors import StorageError, WorkflowError, WorkflowRunNotFoundError
from .runtime.catalog import MemoryCatalog
from .runtime.crypto import KeyRing
from .runtime.describe import readable_data, run_info
from .runtime.log.file_reader import read_at, read_log
from .runtime.payloads import Payloads
from .runtime.query import check_after, check_limit, check_run_query, decode_hook_cursor
from .runtime.state import RunState, State

__all__ = ["Target", "open_target"]

PREFIX = "/.well-known/workflow/v1"


class TargetError(WorkflowError):
    """The target refused a request (its answer is the message)."""


class Target(Protocol):
    def list_runs(self, **filters: Any) -> dict[str, Any]: ...

    def run(self, run_id: str) -> dict[str, Any]: ...

    def list_hooks(
        self, run_id: str | None, *, limit: int, cursor: str | None
    ) -> dict[str, Any]: ...

    def list_events(self, run_id: str, *, after: int, limit: int) -> dict[str, Any]: ...

    def cancel(self, run_id: str, reason: str | None) -> dict[str, Any]: ...

    def resume(self, token: str, payload: Any, key: str | None) -> dict[str, Any]: ...

    def close(self) -> None: ...


def open_target(
    *,
    url: str | None,
    data_dir: str | None,
    store: str | None,
    schema: str,
    secret: str | None,
) -> Target:
    """The target the options name (exactly one is given).

    Raises:
        TargetError: no secret for ``--url``, or no log at ``--data-dir``.
    """
    if url is not None:
        if not secret:
            raise TargetError("--url needs the server's resume secret in ACTORFLOW_RESUME_SECRET")
        return HttpTarget(url, secret)
    if data_dir is not None:
        return DataDirTarget(Path(data_dir))
    assert store is not None
    return StoreTarget(store, schema)


class HttpTarget:
    """A running ``actorflow serve``, through its bearer routes."""

    def __init__(self, url: str, secret: str) -> None:
        self.base = url.rstrip("/") + PREFIX
        self.secret = secret

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None,
              body: Any = None) -> dict[str, Any]:  # fmt: skip
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        target = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(target, data=data, method=method)
        request.add_header("authorization", f"Bearer {self.secret}")
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())
                message = f"{detail['error']}: {detail['message']}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            raise TargetError(f"{self.base}{path} answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TargetError(f"cannot reach {self.base}: {exc}") from None

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/runs", filters)

    def run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/runs/{urllib.parse.quote(run_id, safe='')}")

    def list_hooks(self, run_id: str | None, *, limit: int, cursor: str | None) -> dict[str, Any]:
        return self._call("GET", "/hooks", {"run_id": run_id, "limit": limit, "cursor": cursor})

    def list_events(self, run_id: str, *, after: int, limit: int) -> dict[str, Any]:
        quoted = urllib.parse.quote(run_id, safe="")
        return self._call("GET", f"/runs/{quoted}/events", {"after": after, "limit": limit})

    def cancel(self, run_id: str, reason: str | None) -> dict[str, Any]:
        body = {} if reason is None else {"reason": reason}
        return self._call("POST", f"/runs/{urllib.parse.quote(run_id, safe='')}/cancel",
                          body=body)  # fmt: skip

    def resume(self, token: str, payload: Any, key: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"token": token, "payload": payload}
        if key is not None:
            body["idempotency_key"] = key
        return self._call("POST", "/hooks/resume", body=body)

    def close(self) -> None:
        pass


def _describe(run: RunState, state: State, payloads: Payloads) -> dict[str, Any]:
    """``GET .../runs/<id>``'s shape from a fold: RunInfo, and the result or error."""
    out = run_info(run, state).to_json()
    terminal = run.terminal
    if terminal is not None:
        data = readable_data(terminal, payloads)
        if "result" in data:
            out["result"] = data["result"]
        if "error" in data:
            out["error"] = data["error"]
        if data.get("reason") is not None:
            out["reason"] = data["reason"]
    return out


def _fold(records: Any, payloads: Payloads) -> State:
    state = State()
    for position, record in records:
        event = payloads.decode_plain(record, position)
        state.apply(event)
        run = state.runs.get(event.run_id)
        if run is not None:
            run.positions.append(position)
    return state


def _payloads() -> Payloads:
    # Decrypts with ACTORFLOW_ENCRYPTION_KEY when it is set; otherwise values show "encrypted".
    return Payloads(KeyRing.from_config(None))


class DataDirTarget:
    """A file log read in place, without its lock (a server may be writing to it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "log" if (data_dir / "log").is_dir() else data_dir
        if not self.log_dir.is_dir():
            raise TargetError(f"no event log at {data_dir}")
        self.payloads = _payloads()

    def _catalog(self) -> tuple[State, MemoryCatalog]:
        # Read afresh each time: a follower sees what a running server appended since.
        state = _fold(read_log(self.log_dir), self.payloads)
        log_dir = self.log_dir
        read = lambda ps: read_at(log_dir, ps)  # noqa: E731
        return state, MemoryCatalog(state, read, self.payloads, live=False)

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        query = check_run_query(**filters)
        _, catalog = self._catalog()
        return catalog.runs_page(query).to_json()

    def run(self, run_id: str) -> dict[str, Any]:
        state, _ = self._catalog()
        run = state.runs.get(run_id)
        if run is None:
            raise WorkflowRunNotFoundError(run_id)
        return _describe(run, state, self.payloads)

    def list_hooks(self, run_id: str | None, *, limit: int, cursor: str | None) -> dict[str, Any]:
        checked, after = check_limit(limit), decode_hook_cursor(cursor)
        _, catalog = self._catalog()
        return anyio.run(catalog.list_hooks, run_id, checked, after).to_json()

    def list_events(self, run_id: str, *, after: int, limit: int) -> dict[str, Any]:
        checked_after, checked = check_after(after), check_limit(limit)
        _, catalog = self._catalog()
        return anyio.run(catalog.list_events, run_id, checked_after, checked).to_json()

    def _write(self, action: Any) -> Any:
        from .runtime.runtime import Runtime

        async def run() -> Any:
            try:
                async with Runtime(self.log_dir.parent) as rt:
                    return await action(rt)
            except StorageError as exc:
                if "already open" in str(exc):
                    raise TargetError(
                        f"{exc}; a server holds this data directory: send the change to it "
                        "with --url instead"
                    ) from None
                raise

        return anyio.run(run)

    def cancel(self, run_id: str, reason: str | None) -> dict[str, Any]:
        async def cancel(rt: Any) -> None:
            await rt.cancel_run(run_id, reason)

        self._write(cancel)
        return self.run(run_id)

    def resume(self, token: str, payload: Any, key: str | None) -> dict[str, Any]:
        async def resume(rt: Any) -> dict[str, Any]:
            hook = await rt.resume_hook(token, payload, idempotency_key=key)
            return dict(hook.to_json())

        answer: dict[str, Any] = self._write(resume)
        answer["metadata"] = None  # a user value: not echoed by the CLI
        return answer

    def close(self) -> None:
        pass


class StoreTarget:
    """A PostgreSQL schema, read through the catalog (without joining as a node)."""

    def __init__(self, url: str, schema: str) -> None:
        from .runtime.postgres_catalog import PostgresCatalog

        self.url = url
        self.schema = schema
        self.payloads = _payloads()
        self.catalog = PostgresCatalog(url, schema, self.payloads)

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        return self.catalog.runs_page(check_run_query(**filters)).to_json()

    def run(self, run_id: str) -> dict[str, Any]:
        state = _fold(self.catalog.run_records(run_id), self.payloads)
        run = state.runs.get(run_id)
        if run is None:
            raise WorkflowRunNotFoundError(run_id)
        return _describe(run, state, self.payloads)

    def list_hooks(self, run_id: str | None, *, limit: int, cursor: str | None) -> dict[str, Any]:
        checked, after = check_limit(limit), decode_hook_cursor(cursor)
        return self.catalog.hooks_page(run_id, checked, after).to_json()

    def list_events(self, run_id: str, *, after: int, limit: int) -> dict[str, Any]:
        return self.catalog.events_page(run_id, check_after(after), check_limit(limit)).to_json()

    def _write(self, action: Any) -> Any:
        from .runtime.runtime import Runtime

        async def run() -> Any:
            # Joins the schema as a node for the call; a cancel or resume of a run another
            # node owns goes through that node's inbox, as from any node.
            async with Runtime(store=self.url, schema=self.schema) as rt:
                return await action(rt)

        return anyio.run(run)

    def cancel(self, run_id: str, reason: str | None) -> dict[str, Any]:
        async def cancel(rt: Any) -> None:
            await rt.cancel_run(run_id, reason)

        self._write(cancel)
        return self.run(run_id)

    def resume(self, token: str, payload: Any, key: str | None) -> dict[str, Any]:
        async def resume(rt: Any) -> dict[str, Any]:
            hook = await rt.resume_hook(token, payload, idempotency_key=key)
            return dict(hook.to_json())

        answer: dict[str, Any] = self._write(resume)
        answer["metadata"] = None
        return answer

    def close(self) -> None:
        self.catalog.close()
