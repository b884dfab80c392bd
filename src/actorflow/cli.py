"""The ``actorflow`` command.

::

    actorflow serve MODULE[:ATTR] [--bind 127.0.0.1:8000] [--data-dir .actorflow]
                    [--store postgresql://...] [--peer-port N] [--base-url URL]
                    [--worker asyncio|trio]
                    [--resume-secret S] [--read-timeout S] [--keep-alive-timeout S]
                    [--max-connections N]
    actorflow db migrate --store postgresql://... [--schema actorflow]
    actorflow keys generate
    actorflow log verify DIR
    actorflow log dump DIR [--run ID]
    actorflow log compact DIR [--retention 7d]                       (compact_cli.py)
    actorflow runs list|show|cancel, hooks list|resume, events RUN_ID   (inspect_cli.py)
    actorflow runs retry --url URL                                   (retry_cli.py)

``serve`` imports ``MODULE`` (from ``--app-dir``, the current directory by default), takes the
list of workflows named ``ATTR`` (default ``workflows``), and serves them with Hypercorn. The
resume secret comes from ``--resume-secret`` or ``ACTORFLOW_RESUME_SECRET``; without one the
resume, hook and run routes are off. Exit status: 0 on success, 1 on an error (a damaged log
for ``log verify``), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .compact_cli import add_compact_command
from .errors import DecryptionError, WorkflowError
from .inspect_cli import add_inspect_commands
from .retry_cli import add_retry_command
from .runtime.workflow import WorkflowFunction

__all__ = ["main"]

logger = logging.getLogger("actorflow.cli")

RESUME_SECRET_ENV = "ACTORFLOW_RESUME_SECRET"
STORE_ENV = "ACTORFLOW_STORE"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``actorflow`` command with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to the harness, options included.
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args.command(args)
    except WorkflowError as exc:
        print(f"actorflow: {exc}", file=sys.stderr)
        return 1
    return status


def _bind_host(bind: str) -> str:
    """The host of ``--bind HOST:PORT`` (``[::1]:8000`` gives ``::1``)."""
    host = bind.rpartition(":")[0] if ":" in bind else bind
    return host.strip("[]") or "127.0.0.1"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actorflow", description="Durable workflows: serve them, inspect their log."
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve workflows over HTTP with Hypercorn")
    serve.add_argument("target", metavar="MODULE[:ATTR]", help="module and list of workflows")
    serve.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
    serve.add_argument("--data-dir", default=".actorflow", help="default %(default)s")
    serve.add_argument(
        "--store",
        help="postgresql://... URL: keep the log in PostgreSQL, shared by every process given "
        f"the same URL, instead of in --data-dir (default: ${STORE_ENV})",
    )
    serve.add_argument(
        "--schema", default="actorflow", help="PostgreSQL schema of the log (default %(default)s)"
    )
    serve.add_argument(
        "--lease-seconds",
        type=float,
        default=10.0,
        help="PostgreSQL: how long this process's runs stay its own without a renewal; another "
        "process takes them over after that (default %(default)s)",
    )
    serve.add_argument(
        "--peer-port",
        type=int,
        default=0,
        help="PostgreSQL: the port, on the --bind host, where this process takes resumes the "
        "other processes forward to the runs it owns (default 0: any free port; each process "
        "publishes its address in the schema)",
    )
    serve.add_argument(
        "--retention",
        default="7d",
        help="how long a finished run stays readable after it ends; then it leaves memory and "
        "the log (e.g. 30d; 'none' keeps everything; default %(default)s)",
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start on a PostgreSQL schema that `actorflow db migrate` has not "
        "brought up to date (default: migrate at start)",
    )
    serve.add_argument(
        "--base-url",
        help="public URL of this server, for webhook.url (default: the bound address)",
    )
    serve.add_argument("--worker", choices=("asyncio", "trio"), default="asyncio")
    serve.add_argument(
        "--version",
        help="the version of the code served: stamped on each new run, and only runs of this "
        "version are run here (default: unset, any run)",
    )
    serve.add_argument(
        "--resume-secret",
        help=f"bearer secret of the resume/hook/run routes (better: {RESUME_SECRET_ENV})",
    )
    serve.add_argument(
        "--app-dir", default=".", help="directory to import MODULE from (default: current)"
    )
    serve.add_argument(
        "--durability",
        choices=("fsync", "none"),
        default="fsync",
        help='"none" skips fsync: for tests and benchmarks only',
    )
    serve.add_argument("--max-body", type=int, default=1024 * 1024, help="bytes (default 1 MiB)")
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish at shutdown (default %(default)s)",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=10.0,
        help="seconds a request body may stop arriving before it is answered 408 and its "
        "connection closed (default %(default)s)",
    )
    serve.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        help="seconds a connection may stay idle between requests, and the time a request's "
        "head has to arrive in full (default %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        help="connections open at once; one more is answered 503 and closed (default: the "
        "file-descriptor limit, ulimit -n, less an eighth, at least 128, for the log and the "
        "database)",
    )
    serve.set_defaults(command=_serve)

    db = commands.add_parser("db", help="the PostgreSQL store").add_subparsers(metavar="ACTION")
    migrate = db.add_parser("migrate", help="create or upgrade actorflow's tables")
    migrate.add_argument("--store", help=f"postgresql://... URL (default: ${STORE_ENV})")
    migrate.add_argument("--schema", default="actorflow", help="default %(default)s")
    migrate.set_defaults(command=_db_migrate)

    keys = commands.add_parser("keys", help="encryption keys").add_subparsers(metavar="ACTION")
    generate = keys.add_parser("generate", help="print a new random encryption key (base64)")
    generate.set_defaults(command=_keys_generate)

    log = commands.add_parser("log", help="inspect an event log").add_subparsers(metavar="ACTION")
    verify = log.add_parser("verify", help="check every record; exit 1 when damaged")
    verify.add_argument("dir", metavar="DIR", help="the data directory (or its log/)")
    verify.set_defaults(command=_log_verify)
    dump = log.add_parser("dump", help="print events, one per line")
    dump.add_argument("dir", metavar="DIR", help="the data directory (or its log/)")
    dump.add_argument("--run", help="only this run's events")
    dump.set_defaults(command=_log_dump)
    add_compact_command(log)

    add_retry_command(add_inspect_commands(commands))

    commands.add_parser(
        "bench",
        help="run the benchmark harness of the checkout in the current directory "
        "(python -m benchmarks; `actorflow bench --help` for its options)",
    )
    return parser


def _bench(bench_args: list[str]) -> int:
    # The harness lives in the repository's benchmarks/ (it is not installed with the package):
    # run it from the checkout, with this interpreter, so it measures this installation.
    import subprocess
    from pathlib import Path

    checkout = Path.cwd()
    if not (checkout / "benchmarks" / "__main__.py").is_file():
        print(
            f"actorflow bench: no benchmarks/ harness in {checkout}; run it from the root of a "
            "checkout of actorflow",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks", *bench_args], cwd=checkout)


# -- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from .http import create_app
    from .http.serve import bind_socket, run, socket_url
    from .runtime.runtime import Runtime

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    workflows = load_workflows(args.target, app_dir=args.app_dir)
    secret = args.resume_secret or os.environ.get(RESUME_SECRET_ENV) or None
    sock = bind_socket(args.bind)
    try:
        base_url = args.base_url or _default_base_url(socket_url(sock))
        store = args.store or os.environ.get(STORE_ENV) or None
        runtime = Runtime(
            args.data_dir,
            workflows,
            store=store,
            base_url=base_url,
            durability=args.durability,
            migrate=not args.no_migrate,
            schema=args.schema,
            lease_seconds=args.lease_seconds,
            peer_host=_bind_host(args.bind),
            peer_port=args.peer_port,
            version=args.version,
            retention=None if args.retention == "none" else args.retention,
        )
        app = create_app(
            runtime,
            resume_secret=secret,
            base_url=base_url,
            max_body=args.max_body,
            worker=args.worker,
            manage_runtime=True,
        )

        def ready(url: str) -> None:
            names = ", ".join(sorted(runtime.workflows))
            logger.info(
                "serving %s at %s (worker %s, %s); webhooks at "
                "%s/.well-known/workflow/v1/webhook/<token>; resume routes %s",
                names, url, args.worker, runtime.describe_store(), base_url,
                "on (bearer secret)" if secret else f"off (set {RESUME_SECRET_ENV})",
            )  # fmt: skip

        try:
            run(
                app,
                bind=sock,
                worker=args.worker,
                graceful_timeout=args.graceful_timeout,
                read_timeout=args.read_timeout,
                keep_alive_timeout=args.keep_alive_timeout,
                max_connections=args.max_connections,
                on_ready=ready,
                fatal=runtime.wait_failed,
            )
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            leaf = _first_leaf(exc)
            if not isinstance(leaf, Exception):  # a cancellation or interrupt in a group
                raise leaf from None
            print(f"actorflow serve: {type(leaf).__name__}: {leaf}", file=sys.stderr)
            return 1
    finally:
        sock.close()
    logger.info("stopped")
    return 0


def load_workflows(target: str, *, app_dir: str = ".") -> list[WorkflowFunction[..., Any]]:
    """The workflows ``MODULE[:ATTR]`` names (``ATTR`` defaults to ``workflows``).

    Raises:
        WorkflowError: the module cannot be imported, or ``ATTR`` is not a list of workflows.
    """
    module_name, _, attr = target.partition(":")
    attr = attr or "workflows"
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, os.path.abspath(app_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowError(
            f"cannot import {module_name!r}: {exc}; run from the directory that holds it, or "
            "pass --app-dir"
        ) from exc
    value = getattr(module, attr, None)
    if isinstance(value, WorkflowFunction):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise WorkflowError(
            f"{module_name}:{attr} must be a non-empty list of @af.workflow functions, "
            f"not {type(value).__name__}"
        )
    for item in value:
        if not isinstance(item, WorkflowFunction):
            raise WorkflowError(f"{module_name}:{attr} holds {item!r}, which is not a workflow")
    return list(value)


def _default_base_url(bound: str) -> str:
    for anywhere, local in (
        ("http://0.0.0.0:", "http://127.0.0.1:"),
        ("http://[::]:", "http://[::1]:"),
    ):
        if bound.startswith(anywhere):
            logger.warning(
                "bound to every interface: webhook URLs will say %s; pass --base-url with "
                "the address senders reach",
                local,
            )
            return local + bound.removeprefix(anywhere)
    return bound


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# -- db ------------------------------------------------------------------------------------------


def _db_migrate(args: argparse.Namespace) -> int:
    store = args.store or os.environ.get(STORE_ENV)
    if not store:
        print(f"actorflow db migrate: give --store postgresql://... (or set {STORE_ENV})",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        from .runtime.log.postgres import SCHEMA_VERSION, migrate
    except ImportError:
        print("actorflow db migrate: needs psycopg: pip install 'actorflow[postgres]'",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        version = migrate(store, schema=args.schema)
    except (WorkflowError, ValueError) as exc:
        print(f"actorflow db migrate: {exc}", file=sys.stderr)
        return 1
    print(f"schema {args.schema!r} is at version {version} (this actorflow: {SCHEMA_VERSION})")
    return 0


# -- keys ----------------------------------------------------------------------------------------


def _keys_generate(args: argparse.Namespace) -> int:
    from .runtime.crypto import ENV_VAR, generate_key

    print(generate_key())
    print(f"# set {ENV_VAR} to this value; keep it secret, and keep old keys to read old data",
          file=sys.stderr)  # fmt: skip
    return 0


# -- log -----------------------------------------------------------------------------------------


def _log_dir(path: str) -> Path:
    root = Path(path)
    return root / "log" if (root / "log").is_dir() else root


def _log_verify(args: argparse.Namespace) -> int:
    from .runtime.log.file_log import verify_log

    directory = _log_dir(args.dir)
    if not directory.is_dir():
        print(f"actorflow log verify: no event log at {args.dir}", file=sys.stderr)
        return 1
    problems = verify_log(directory)
    if not problems:
        print(f"{directory}: every record is intact")
        return 0
    for problem in problems:
        print(problem)
    print(f"{directory}: {len(problems)} problem(s)", file=sys.stderr)
    return 1


def _log_dump(args: argparse.Namespace) -> int:
    from .runtime.crypto import KeyRing
    from .runtime.payloads import Payloads

    directory = _log_dir(args.dir)
    if not directory.is_dir():
        print(f"actorflow log dump: no event log at {args.dir}", file=sys.stderr)
        return 1
    # Decrypts with ACTORFLOW_ENCRYPTION_KEY when it is set; otherwise values stay sealed.
    payloads = Payloads(KeyRing.from_config(None))
    found = False
    out = sys.stdout
    for position, record in read_records(directory):
        event = payloads.decode_plain(record, position)
        if args.run is not None and event.run_id != args.run:
            continue
        found = True
        data = dict(event.data)
        for key in data:
            try:
                data[key] = payloads.value(event, data[key])
            except DecryptionError:
                data[key] = "<encrypted>"
        data = _readable(data)
        when = datetime.fromtimestamp(event.created_at, UTC).isoformat(timespec="milliseconds")
        out.write(
            f"{when} {event.run_id} {event.type:<17} {event.correlation_id or '-'} "
            f"{orjson.dumps(data).decode()}\n"
        )
    if args.run is not None and not found:
        print(f"actorflow log dump: no events of run {args.run} in {directory}", file=sys.stderr)
        return 1
    return 0


def _readable(tree: Any) -> Any:
    """A stored tree with ``{"$bytes": base64}`` shown as its text when it is UTF-8."""
    if isinstance(tree, dict):
        if len(tree) == 1 and isinstance(tree.get("$bytes"), str):
            try:
                return {"$bytes": base64.b64decode(tree["$bytes"]).decode("utf-8")}
            except (ValueError, UnicodeDecodeError):
                return tree
        return {k: _readable(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_readable(v) for v in tree]
    return tree


def read_records(directory: Path) -> Iterator[tuple[int, bytes]]:
    """Every valid record of a log directory in order, read-only.

    Unlike ``FileLog.scan`` it takes no lock (a running server's log can be read) and truncates
    nothing; it stops at the first damaged frame (``actorflow log verify`` lists the damage).

    Raises:
        StorageError: a segment cannot be read.
    """
    # The segment walkers are file_log's own, so the format lives in one module.
    from .runtime.log import file_log as fl

    for number, path in fl._list_segments(directory):
        data = fl._read_segment(path)
        if fl._check_header(path, data) is not None:
            return
        stop = yield from fl._frames(data, number << fl._OFFSET_BITS, fl._HEADER_BYTES)
        if stop.kind == "bad":
            return
