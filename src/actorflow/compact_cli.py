"""``actorflow log compact DIR``: expire finished runs past retention and compact the file log,
with no runtime running (the directory's lock is taken; a running server compacts by itself,
and ``Runtime.compact()`` does it on demand)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .errors import WorkflowError
from .runtime.durations import parse_duration
from .runtime.log import compaction
from .runtime.log.file_log import FileLog
from .runtime.payloads import Payloads
from .runtime.state import State

__all__ = ["add_compact_command"]


def add_compact_command(log_actions: Any) -> None:
    compact = log_actions.add_parser(
        "compact", help="drop finished runs past retention from a stopped server's log"
    )
    compact.add_argument("dir", metavar="DIR", help="the data directory (or its log/)")
    compact.add_argument("--retention", default="7d", help="as serve's (default %(default)s)")
    compact.set_defaults(command=_compact)


def _compact(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if (directory / "log").is_dir():
        directory = directory / "log"
    if not directory.is_dir():
        print(f"actorflow log compact: no event log at {args.dir}", file=sys.stderr)
        return 1
    try:
        retention = parse_duration(args.retention)
        log = FileLog(directory)
        state = State()
        decode = Payloads(None).decode_plain  # run ids and times are never encrypted
        try:
            for position, record in log.scan():
                state.apply(decode(record, position))
            before = sum(end for _, end in log.segment_ends())
            expired = len(state.expire(time.time() - retention))
            log.seal_active()
            replaced = []
            for number, _ in log.segment_ends():
                if number == log.active_segment:
                    break
                done = compaction.rewrite_segment(log, number, state.runs.__contains__)
                if done is not None:
                    replaced.append(done.old)
            compaction.retire(log, replaced)
            compaction.drop_emptied_prefix(log)
            after = sum(end for _, end in log.segment_ends())
        finally:
            log.close()
    except WorkflowError as exc:
        print(f"actorflow log compact: {exc}", file=sys.stderr)
        return 1
    print(f"{expired} runs expired; {len(replaced)} segments rewritten; "
          f"log {before} -> {after} bytes")  # fmt: skip
    return 0
