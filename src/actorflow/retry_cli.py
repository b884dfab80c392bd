"""``actorflow runs retry``: replay a running server's parked runs with the code it runs now.

::

    actorflow runs retry --url http://host:port [--json]

The bearer secret comes from ``ACTORFLOW_RESUME_SECRET``. Prints the runs that go on again and
those still parked (a run is parked when its code no longer fits its history; every start
retries them too). Exit status: 0 when the server answered, 1 when it refused or could not be
reached, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

__all__ = ["add_retry_command", "retry_parked"]

RESUME_SECRET_ENV = "ACTORFLOW_RESUME_SECRET"
PREFIX = "/.well-known/workflow/v1"


def add_retry_command(runs: Any) -> None:
    """Add ``retry`` to the ``actorflow runs`` subparsers."""
    retry = runs.add_parser("retry", help="replay a server's parked runs with its code now")
    retry.add_argument("--url", required=True, help="a running actorflow serve")
    retry.add_argument("--json", action="store_true", help="the report as one JSON object")
    retry.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    retry.set_defaults(command=_retry)


def retry_parked(url: str, secret: str | None, timeout: float = 60.0) -> dict[str, Any]:
    """Ask the server at ``url`` to retry its parked runs; its report.

    Raises:
        OSError: the server could not be reached, or it refused (the message says why).
    """
    request = urllib.request.Request(
        f"{url.rstrip('/')}{PREFIX}/runs/retry-parked", data=b"", method="POST"
    )
    if secret:
        request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - operator's URL
            report: dict[str, Any] = orjson.loads(answer.read())
            return report
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = orjson.loads(body).get("message", "")
        except orjson.JSONDecodeError:
            message = body.decode("utf-8", "replace")[:200]
        hint = f" (set {RESUME_SECRET_ENV})" if exc.code in (401, 404) else ""
        raise OSError(f"{url} answered {exc.code}: {message}{hint}") from exc


def _retry(args: argparse.Namespace) -> int:
    if not args.url.startswith(("http://", "https://")):
        print("actorflow: --url must be an http:// or https:// URL", file=sys.stderr)
        return 2
    try:
        report = retry_parked(args.url, os.environ.get(RESUME_SECRET_ENV), args.timeout)
    except OSError as exc:
        print(f"actorflow: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return 0
    resumed, parked = report.get("resumed", []), report.get("parked", [])
    print(f"{len(resumed)} resumed, {len(parked)} still parked")
    for run_id in resumed:
        print(f"resumed  {run_id}")
    for run_id in parked:
        print(f"parked   {run_id}")
    return 0
