"""The link between two nodes of one schema: its frames, and the handshake that authenticates it.

A frame is a 4-byte big-endian length, then that many bytes: a 4-byte length of the header, the
header (an orjson object), and a body (raw bytes: an event record, sent unchanged). Frames larger
than ``MAX_FRAME`` are refused (the link is dropped), so a peer cannot make a node buffer
without bound.

The handshake is mutual, HMAC-SHA256 keyed with the schema's link secret (``peer_secret``)::

    listener -> dialer   {"node": <listener's node id>, "nonce": <32 random bytes, hex>}
    dialer -> listener   {"node": <dialer's node id>, "nonce": <hex>, "mac": MAC("dial", ...)}
    listener -> dialer   {"mac": MAC("listen", ...)}

each MAC over both node ids and both nonces, so neither side can replay an old answer. A peer
that fails it (or sends anything else) is dropped before any request is read; nothing a peer
sends is trusted before then.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections import deque
from typing import Any

import anyio
import anyio.abc
import orjson

from ..errors import StorageError

__all__ = ["MAX_FRAME", "FrameReader", "PeerLinkError", "dial_handshake", "frame",
           "listen_handshake", "send_bytes"]  # fmt: skip

#: Above the largest record (max_payload_bytes, 4 MiB by default, plus its envelope).
MAX_FRAME = 64 * 1024 * 1024
_HANDSHAKE_SECONDS = 5.0
_LENGTH = struct.Struct(">II")
_READ_SIZE = 256 * 1024


class PeerLinkError(StorageError):
    """The link to a peer failed, or the peer broke the protocol (never leaves the runtime: the
    delivery goes through the inbox instead)."""


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """The bytes of one frame."""
    head = orjson.dumps(header)
    return _LENGTH.pack(4 + len(head) + len(body), len(head)) + head + body


class FrameReader:
    """Reads frames off a byte stream: as many bytes as are there at each read, and every frame
    they hold is then returned without waiting (one turn of the event loop per read, not per
    frame)."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._frames: deque[tuple[dict[str, Any], bytes]] = deque()

    async def read(self) -> tuple[dict[str, Any], bytes]:
        """The next frame's header and body.

        Raises:
            PeerLinkError: the stream ended or broke, or the frame is malformed or too large.
        """
        frames = self._frames
        while not frames:
            try:
                chunk = await self._stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError) as exc:  # fmt: skip
                raise PeerLinkError(f"the peer link closed: {exc!r}") from exc
            self._buffer += chunk
            self._split()
        return frames.popleft()

    def _split(self) -> None:
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 8:
            size, head = _LENGTH.unpack_from(buffer, start)
            if size > MAX_FRAME or not 4 <= 4 + head <= size:
                raise PeerLinkError(f"a peer frame of {size} bytes (header {head}) was refused")
            end = start + 4 + size
            if len(buffer) < end:
                break
            try:
                header = orjson.loads(bytes(buffer[start + 8 : start + 8 + head]))
            except orjson.JSONDecodeError as exc:
                raise PeerLinkError("a peer frame's header is not JSON") from exc
            if type(header) is not dict:
                raise PeerLinkError("a peer frame's header is not an object")
            self._frames.append((header, bytes(buffer[start + 8 + head : end])))
            start = end
        if start:
            del buffer[:start]


def _mac(key: bytes, role: bytes, *parts: str) -> str:
    message = b"\x00".join([b"actorflow peer link 1", role, *(p.encode() for p in parts)])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _text(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if type(value) is not str or not value or len(value) > 512:
        raise PeerLinkError(f"the peer's handshake has no valid {name!r}")
    return value


async def listen_handshake(
    stream: anyio.abc.ByteStream, reader: FrameReader, key: bytes, node_id: str
) -> str:
    """Authenticate a dialer (the listener's side); return its node id.

    Raises:
        PeerLinkError: the dialer failed the handshake, or did not finish it in time.
    """
    mine = secrets.token_hex(32)
    with anyio.move_on_after(_HANDSHAKE_SECONDS):
        await send_bytes(stream, frame({"node": node_id, "nonce": mine}))
        header, _ = await reader.read()
        peer, theirs = _text(header, "node"), _text(header, "nonce")
        expected = _mac(key, b"dial", peer, node_id, theirs, mine)
        if not hmac.compare_digest(expected, _text(header, "mac")):
            raise PeerLinkError(f"peer {peer!r} failed the link's authentication")
        await send_bytes(stream, frame({"mac": _mac(key, b"listen", peer, node_id, theirs, mine)}))
        return peer
    raise PeerLinkError("a peer did not finish the handshake in time")


async def dial_handshake(
    stream: anyio.abc.ByteStream, reader: FrameReader, key: bytes, node_id: str, expected: str
) -> None:
    """Authenticate the listener (the dialer's side), which must be node ``expected``.

    Raises:
        PeerLinkError: the listener is another node, failed the handshake, or was too slow.
    """
    mine = secrets.token_hex(32)
    with anyio.move_on_after(_HANDSHAKE_SECONDS):
        header, _ = await reader.read()
        peer, theirs = _text(header, "node"), _text(header, "nonce")
        if peer != expected:
            raise PeerLinkError(f"the peer address of node {expected!r} is node {peer!r} now")
        mac = _mac(key, b"dial", node_id, peer, mine, theirs)
        await send_bytes(stream, frame({"node": node_id, "nonce": mine, "mac": mac}))
        header, _ = await reader.read()
        if not hmac.compare_digest(_mac(key, b"listen", node_id, peer, mine, theirs),
                                   _text(header, "mac")):  # fmt: skip
            raise PeerLinkError(f"peer {peer!r} failed the link's authentication")
        return
    raise PeerLinkError(f"node {expected!r} did not finish the handshake in time")


async def send_bytes(stream: anyio.abc.ByteSendStream, data: bytes) -> None:
    """Send ``data``.

    Raises:
        PeerLinkError: the link closed.
    """
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
        raise PeerLinkError(f"the peer link closed: {exc!r}") from exc
