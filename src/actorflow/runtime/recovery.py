"""Recovery: fold the whole log into a fresh state, at start, in a worker thread.

A torn tail is truncated by the store and reported; a key the log needs but the runtime lacks (or
has wrong) refuses the start here, instead of failing some run later.
"""

from __future__ import annotations

import gc

from .core import events as ev
from .core.events import Event
from .crypto import KeyRing
from .log.store import EventStore
from .payloads import Payloads
from .state import State

__all__ = ["recover"]


def recover(store: EventStore, state: State, payloads: Payloads) -> str | None:
    """Fold every record of ``store`` into ``state``; a description of a torn tail, if any.

    Raises:
        DecryptionError: a key the log uses is not configured, or it is the wrong key.
        LogCorruptError: damage before the tail.
    """
    # Recovery creates objects that all stay alive; letting the collector walk them again
    # and again while they are being made cost a third of the time to open a large log.
    enabled = gc.isenabled()
    gc.disable()
    try:
        _fold(store, state, payloads)
    finally:
        if enabled:
            gc.enable()
    # What recovery built lives as long as the runtime: keep the collector from walking it
    # again on every collection (it cost starts/s in proportion to the live runs).
    gc.freeze()
    report = store.last_scan
    if report is not None and report.torn_tail_path is not None:
        return (
            f"{report.torn_tail_path} at offset {report.torn_tail_offset} "
            f"({report.torn_tail_bytes} bytes)"
        )
    return None


def _fold(store: EventStore, state: State, payloads: Payloads) -> None:
    runs = state.runs
    decode = payloads.decode_plain
    key_ids: dict[str, tuple[Event, str]] = {}
    user_keys = ev.USER_VALUE_KEYS
    is_envelope = KeyRing.is_envelope
    stream_events = ev.STREAM_EVENTS
    streams = state.streams
    for position, record in store.scan():
        event = decode(record, position)
        state.apply(event)
        run = runs.get(event.run_id)
        if run is not None:
            if event.type in stream_events:
                streams.durable(event)
            else:
                run.positions.append(position)
                run.submitted += 1
        if b'{"$enc":' not in record:  # most logs: no envelope, no per-key work
            continue
        for name in user_keys.intersection(event.data):
            stored = event.data[name]
            if is_envelope(stored):
                key_ids.setdefault(str(stored["$enc"]).split(".", 2)[1], (event, name))
    for event, name in key_ids.values():
        # One real decryption per key id: a missing or wrong key fails here, at start,
        # instead of as garbage (or a crash) in some run later.
        payloads.value(event, event.data[name])
