"""Deliveries to runs owned elsewhere, forwarded straight to the owner over a peer link.

Sender: the event (its id chosen here) is encoded as a local delivery's would be and sent to the
owner's peer listener (its address is in the shared hook index); the answer comes once the owner
has it durably in the run's history, as a local resume's does. The owner's refusals come back as
the exceptions a local delivery raises (``HookNotFoundError``, ``OverloadedError`` with the same
message), so an HTTP answer does not depend on which node received the request.

Whenever the owner's answer is not one of those (no link, the link broke, no reply in time, the
owner does not own the run any more, its log failed), the delivery goes through the inbox
(``inbox.py``), which is durable, under the same event id: if the forward did reach the log, the
inbox copy is recognised by its id and never appended again (see ``Inbox.ingest``).

Owner: ``take`` checks a forwarded delivery as a local one is checked, in the order the link
delivered them, and submits it to the journal (``Inbox.take_forwarded``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..errors import HookNotFoundError, OverloadedError, WorkflowError
from .core import events as ev
from .core.events import Event
from .inbox import Inbox, NotOwnedHereError
from .journal import Journal
from .log.writer import Ticket
from .ownership import StaleHookError
from .payloads import Payloads
from .peer_client import Peers
from .peer_link import PeerLinkError
from .state import HookEntry

__all__ = ["STALE_SECONDS", "Forwarder"]

#: A forward older than this (by the sender's clock) is refused by the owner, unanswered: its
#: sender has long given it up and may have sent it through the inbox.
STALE_SECONDS = 60.0


class Forwarder:
    """Both ends of forwarded deliveries on one node."""

    def __init__(
        self,
        inbox: Inbox,
        peers: Peers,
        journal: Journal,
        payloads: Payloads,
        hook_cache: dict[str, HookEntry],
    ) -> None:
        self.inbox = inbox
        self.peers = peers
        self.journal = journal
        self.payloads = payloads
        self._hook_cache = hook_cache
        #: Deliveries forwarded and answered by their owner / sent through the inbox instead.
        self.forwarded = 0
        self.fell_back = 0
        #: Forwarded deliveries this node, their run's owner, took and answered.
        self.taken = 0

    # -- sender ------------------------------------------------------------------------------

    async def deliver(
        self,
        entry: HookEntry,
        kind: str,
        data: dict[str, Any],
        key: bytes | str | None,
        encoded: Mapping[str, bytes] | None = None,
    ) -> str:
        """Deliver to ``entry``'s run on another node; the event id that holds it
        (``encoded``: its user values already serialized, see ``Payloads.encode``).

        Raises: see ``Ownership.deliver``.
        """
        remote = entry.remote
        assert remote is not None and remote.peer is not None and remote.owner is not None
        event = self.journal.event(entry.run_id, kind, entry.hook_id, data)
        record = self.payloads.encode(event, key, encoded)
        try:
            reply = await self.peers.request(
                remote.owner, remote.peer, {"sent": time.time()}, record
            )
        except PeerLinkError:
            reply = {"e": "link"}
        error = reply.get("e")
        if error is None:
            self.forwarded += 1
            return event.event_id
        if error == "gone":
            if self._hook_cache.get(entry.token) is entry:
                del self._hook_cache[entry.token]
                raise StaleHookError(entry.token)
            raise HookNotFoundError(entry.token)
        if error == "full":
            retry_after = reply.get("ra")
            raise OverloadedError(
                str(reply.get("m")),
                retry_after=float(retry_after) if isinstance(retry_after, int | float) else 1.0,
            )
        if error == "elsewhere" and self._hook_cache.get(entry.token) is entry:
            del self._hook_cache[entry.token]  # the run moved: look its owner up next time
        self.fell_back += 1
        event_id, _ = await self.inbox.deliver(entry, kind, data, key, encoded, forwarded=event)
        return event_id

    # -- owner -------------------------------------------------------------------------------

    def take(self, header: dict[str, Any], body: bytes) -> tuple[Ticket | None, dict[str, Any]]:
        """Take one forwarded delivery (``peer_server.Take``)."""
        sent = header.get("sent")
        if not isinstance(sent, int | float) or abs(time.time() - sent) > STALE_SECONDS:
            return None, {"e": "stale"}
        try:
            event: Event = self.payloads.decode_plain(body)
        except Exception:
            return None, {"e": "failed", "m": "the forwarded record does not decode"}
        if event.type != ev.HOOK_RECEIVED:
            return None, {"e": "failed", "m": f"a forwarded {event.type} is not a delivery"}
        try:
            ticket = self.inbox.take_forwarded(event, body)
        except NotOwnedHereError:
            return None, {"e": "elsewhere"}
        except HookNotFoundError:
            return None, {"e": "gone"}
        except OverloadedError as exc:
            return None, {"e": "full", "m": str(exc), "ra": exc.retry_after}
        except WorkflowError as exc:  # the log failed: the sender uses the inbox
            return None, {"e": "failed", "m": str(exc)}
        self.taken += 1
        return ticket, {}
