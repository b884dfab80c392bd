"""``actorflow runs|hooks|events``: see runs, hooks and timelines, against a server or a store.

::

    actorflow runs list [--status S] [--workflow W] [--version V] [--limit N] [--cursor C]
    actorflow runs show RUN_ID
    actorflow runs cancel RUN_ID [--reason TEXT]
    actorflow hooks list [--run RUN_ID] [--limit N] [--cursor C]
    actorflow hooks resume TOKEN --payload JSON
    actorflow events RUN_ID [--after SEQ] [--limit N] [--follow]

Each takes one target: ``--url http://host:port`` (a running ``actorflow serve``; the bearer
secret comes from ``ACTORFLOW_RESUME_SECRET``), ``--data-dir DIR`` (the file log, read without
taking the writer's lock, so a running server is not disturbed) or ``--store postgresql://...``.
Output is an aligned table with relative times; ``--json`` prints one JSON object per line.
Writes (``cancel``, ``resume``) on ``--data-dir`` need the log to be free (no server running on
it; otherwise use ``--url``); on ``--store`` they join the schema briefly as a node.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

import orjson

from .errors import WorkflowError
from .inspect_targets import Target, open_target

__all__ = ["add_inspect_commands"]

RESUME_SECRET_ENV = "ACTORFLOW_RESUME_SECRET"
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


def add_inspect_commands(commands: Any) -> Any:
    """Add ``runs``, ``hooks`` and ``events`` to the ``actorflow`` command's subparsers;
    return the ``runs`` group's subparsers (``runs retry`` joins it)."""
    target = argparse.ArgumentParser(add_help=False)
    where = target.add_argument_group("target (one of)")
    where.add_argument("--url", help="a running actorflow serve (secret: $ACTORFLOW_RESUME_SECRET)")
    where.add_argument("--data-dir", help="a file log's data directory, read without its lock")
    where.add_argument("--store", help="a postgresql://... URL")
    where.add_argument("--schema", default="actorflow", help="with --store (default %(default)s)")
    target.add_argument("--json", action="store_true", help="one JSON object per line")

    runs = commands.add_parser("runs", help="list, show and cancel runs").add_subparsers(
        metavar="ACTION"
    )
    listing = runs.add_parser("list", parents=[target], help="runs, newest first")
    listing.add_argument("--status", choices=("pending", "running", "completed", "failed",
                                              "cancelled"))  # fmt: skip
    listing.add_argument("--workflow", help="only this workflow's runs")
    listing.add_argument("--version", help="only runs started under this version")
    listing.add_argument("--limit", type=int, default=50, help="default %(default)s")
    listing.add_argument("--cursor", help="the cursor a previous page printed")
    listing.set_defaults(command=_runs_list)
    show = runs.add_parser("show", parents=[target], help="one run in full")
    show.add_argument("run_id", metavar="RUN_ID")
    show.set_defaults(command=_runs_show)
    cancel = runs.add_parser("cancel", parents=[target], help="cancel a run")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", help="recorded with the cancel")
    cancel.set_defaults(command=_runs_cancel)

    hooks = commands.add_parser("hooks", help="list and resume hooks").add_subparsers(
        metavar="ACTION"
    )
    hook_list = hooks.add_parser("list", parents=[target], help="live hooks, by token")
    hook_list.add_argument("--run", dest="run_id", help="only this run's hooks")
    hook_list.add_argument("--limit", type=int, default=50, help="default %(default)s")
    hook_list.add_argument("--cursor", help="the cursor a previous page printed")
    hook_list.set_defaults(command=_hooks_list)
    resume = hooks.add_parser("resume", parents=[target], help="deliver a payload to a hook")
    resume.add_argument("token", metavar="TOKEN")
    resume.add_argument("--payload", required=True, help="the payload, as JSON")
    resume.add_argument("--idempotency-key", help="a retry with the same key delivers once")
    resume.set_defaults(command=_hooks_resume)

    events = commands.add_parser("events", parents=[target], help="a run's timeline")
    events.add_argument("run_id", metavar="RUN_ID")
    events.add_argument("--after", type=int, default=0, help="only events after this seq")
    events.add_argument("--limit", type=int, default=1000, help="default %(default)s")
    events.add_argument("--follow", action="store_true", help="keep printing until the run ends")
    events.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    events.set_defaults(command=_events)
    return runs


def _target(args: argparse.Namespace) -> Target:
    chosen = [name for name in ("url", "data_dir", "store") if getattr(args, name)]
    if len(chosen) != 1:
        raise _Usage("give exactly one target: --url URL, --data-dir DIR or --store URL")
    return open_target(
        url=args.url,
        data_dir=args.data_dir,
        store=args.store,
        schema=args.schema,
        secret=os.environ.get(RESUME_SECRET_ENV),
    )


class _Usage(WorkflowError):
    pass


def _command(
    body: Callable[[argparse.Namespace, Target, TextIO], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            target = _target(args)
        except _Usage as exc:
            print(f"actorflow: {exc}", file=sys.stderr)
            return 2
        try:
            return body(args, target, sys.stdout)
        finally:
            target.close()

    return run


# -- runs ------------------------------------------------------------------------------------


@_command
def _runs_list(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    filters = {
        name: getattr(args, name)
        for name in ("status", "workflow", "version", "cursor")
        if getattr(args, name) is not None
    }
    page = target.list_runs(limit=args.limit, **filters)
    now = time.time()
    rows = [
        [
            run["run_id"],
            run["workflow_name"],
            run["status"],
            _ago(run["created_at"], now),
            _ago(run["started_at"], now),
            _ago(run["completed_at"], now),
            run["version"] or "-",
        ]
        for run in page["items"]
    ]
    headers = ["RUN ID", "WORKFLOW", "STATUS", "CREATED", "STARTED", "ENDED", "VERSION"]
    _print_page(args, out, page, headers, rows, "runs")
    return 0


@_command
def _runs_show(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    run = target.run(args.run_id)
    if args.json:
        out.write(_json_line(run))
        return 0
    now = time.time()
    lines = [
        ("run", run["run_id"]),
        ("workflow", run["workflow_name"]),
        ("status", run["status"]),
        ("version", run.get("version") or "-"),
        ("created", _when(run["created_at"], now)),
        ("started", _when(run["started_at"], now)),
        ("ended", _when(run["completed_at"], now)),
    ]
    if "result" in run:
        lines.append(("result", _compact(run["result"], 200)))
    if "error" in run:
        lines.append(("error", _compact(run["error"], 200)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.write(f"{key:<{width}}  {value}\n")
    waiting = run.get("waiting_on") or {}
    rows: list[list[str]] = []
    for hook in waiting.get("hooks", ()):
        kind = "webhook" if hook["is_webhook"] else "hook"
        rows.append([kind, hook["token"], f"since {_ago(hook['since'], now)}"])
    for nap in waiting.get("sleeps", ()):
        rows.append(["sleep", nap["wait_id"], f"until {_ago(nap['until'], now)}"])
    for step in waiting.get("steps", ()):
        retry = step["next_retry_at"]
        when = f", retry {_ago(retry, now)}" if retry else ""
        rows.append(["step", step["name"], f"attempt {step['attempt']}{when}"])
    if rows:
        out.write("\nwaiting on\n")
        _table(out, ["KIND", "WHAT", "WHEN"], rows)
    return 0


@_command
def _runs_cancel(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    run = target.cancel(args.run_id, args.reason)
    if args.json:
        out.write(_json_line(run))
    else:
        out.write(f"{run['run_id']} {run['status']}\n")
    return 0


# -- hooks -----------------------------------------------------------------------------------


@_command
def _hooks_list(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    page = target.list_hooks(args.run_id, limit=args.limit, cursor=args.cursor)
    now = time.time()
    rows = [
        [
            hook["token"],
            hook["kind"],
            hook["run_id"],
            _ago(hook["created_at"], now),
            str(hook["received"]),
            "-" if hook["buffered"] is None else str(hook["buffered"]),
        ]
        for hook in page["items"]
    ]
    headers = ["TOKEN", "KIND", "RUN ID", "CREATED", "RECEIVED", "BUFFERED"]
    _print_page(args, out, page, headers, rows, "hooks")
    return 0


@_command
def _hooks_resume(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        print(f"actorflow: --payload is not valid JSON: {exc}", file=sys.stderr)
        return 2
    hook = target.resume(args.token, payload, args.idempotency_key)
    if args.json:
        out.write(_json_line(hook))
    else:
        out.write(f"delivered to {hook['token']} (run {hook['run_id']})\n")
    return 0


# -- events ----------------------------------------------------------------------------------


@_command
def _events(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    after = args.after
    printed_header = False
    while True:
        page = target.list_events(args.run_id, after=after, limit=args.limit)
        items = page["items"]
        if items:
            now = time.time()
            if args.json:
                for event in items:
                    out.write(_json_line(event))
            else:
                rows = [
                    [
                        str(e["seq"]),
                        _when(e["created_at"], now),
                        e["type"],
                        e["correlation_id"] or "-",
                        _compact(e["data"], 100),
                    ]
                    for e in items
                ]
                _table(out, ["SEQ", "TIME", "TYPE", "CORRELATION", "DATA"], rows,
                       header=not printed_header)  # fmt: skip
                printed_header = True
            out.flush()
            after = items[-1]["seq"]
        if page["next_cursor"] is not None:
            continue
        if not args.follow or target.run(args.run_id)["status"] in _TERMINAL and not items:
            return 0
        time.sleep(args.interval)


# -- output ----------------------------------------------------------------------------------


def _print_page(
    args: argparse.Namespace,
    out: TextIO,
    page: dict[str, Any],
    headers: list[str],
    rows: list[list[str]],
    what: str,
) -> None:
    if args.json:
        for item in page["items"]:
            out.write(_json_line(item))
    elif rows:
        _table(out, headers, rows)
    else:
        out.write(f"no {what}\n")
    if page["next_cursor"] is not None:
        print(f"more: --cursor {page['next_cursor']}", file=sys.stderr)


def _table(out: TextIO, headers: list[str], rows: Sequence[list[str]], header: bool = True) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ([headers] if header else []) + list(rows)
    for row in lines:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _json_line(value: Any) -> str:
    return orjson.dumps(value).decode() + "\n"


def _compact(value: Any, width: int) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _ago(iso: str | None, now: float) -> str:
    """``3 min ago``, ``in 2 h``, ``just now``; ``-`` for no time."""
    if iso is None:
        return "-"
    delta = now - _seconds(iso)
    future = delta < 0
    delta = abs(delta)
    if delta < 1:
        return "just now"
    size, unit = next(
        (size, unit)
        for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))
        if delta >= size
    )
    shown = f"{int(delta // size)} {unit}"
    return f"in {shown}" if future else f"{shown} ago"


def _when(iso: str | None, now: float) -> str:
    """The time as ISO 8601 (to the second) and how long ago."""
    if iso is None:
        return "-"
    moment = datetime.fromisoformat(iso).isoformat(timespec="seconds")
    return f"{moment} ({_ago(iso, now)})"
