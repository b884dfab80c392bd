"""A minimal HTTP/1.1 keep-alive client on anyio streams, for load generators.

An HTTP client library costs more CPU per request than actorflow's server does (``httpx``
measured about 1.5 ms of CPU per request on this repository's 2-core VM, a whole core at 650
requests/s), so a benchmark that drives the server from the same machine would measure its
client. This one writes the request head by hand and reads the answer with
``Content-Length`` (or chunked) framing: a few tens of microseconds per request.

It speaks only to servers the benchmark started itself (127.0.0.1, no TLS, no redirects, no
proxies); anything unexpected on the wire raises :class:`ProtocolError` and the connection is
dropped.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["TRANSPORT_ERRORS", "Connection", "ProtocolError"]

_MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The server's answer could not be parsed."""


#: What a request can raise when the connection fails: count it, drop the connection.
TRANSPORT_ERRORS = (
    OSError,  # TimeoutError included
    ProtocolError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.DelimiterNotFound,
)


class Connection:
    """One keep-alive connection to ``url`` (``http://host:port``); one request at a time.

    ``headers`` go with every request; a request that takes longer than ``timeout`` seconds
    (connecting included) raises ``TimeoutError`` and drops the connection.
    """

    def __init__(
        self, url: str, headers: dict[str, str] | None = None, *, timeout: float = 30.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected http://host:port, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port
        fixed = {"host": f"{self.host}:{self.port}", **(headers or {})}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode()
        self._stream: anyio.abc.SocketStream | None = None
        self._reader: BufferedByteReceiveStream | None = None
        self.timeout = timeout

    async def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> tuple[int, bytes]:
        """Send one request and read the whole answer: ``(status, body)``.

        Opens the connection when needed and drops it after a failure or a
        ``connection: close``.

        Raises:
            TimeoutError, OSError, ProtocolError, anyio.EndOfStream, ...: see
                ``TRANSPORT_ERRORS`` (``TimeoutError`` is an ``OSError``).
        """
        with anyio.fail_after(self.timeout):
            return await self._request(method, path, body, content_type)

    async def _request(
        self, method: str, path: str, body: bytes | None, content_type: str
    ) -> tuple[int, bytes]:
        if self._stream is None:
            self._stream = await anyio.connect_tcp(self.host, self.port)
            self._reader = BufferedByteReceiveStream(self._stream)
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._fixed
        if body is not None:
            if content_type:
                head += f"content-type: {content_type}\r\n".encode()
            head += f"content-length: {len(body)}\r\n".encode()
        try:
            await self._stream.send(head + b"\r\n" + (body or b""))
            status, close, content = await self._read_answer(self._reader, method)
        except BaseException:
            await self.aclose()
            raise
        if close:
            await self.aclose()
        return status, content

    async def aclose(self) -> None:
        stream, self._stream, self._reader = self._stream, None, None
        if stream is not None:
            await stream.aclose()

    @staticmethod
    async def _read_answer(
        reader: BufferedByteReceiveStream, method: str
    ) -> tuple[int, bool, bytes]:
        while True:
            head = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
            lines = head.split(b"\r\n")
            try:
                status = int(lines[0].split(b" ", 2)[1])
            except (IndexError, ValueError):
                raise ProtocolError(f"bad status line {lines[0][:100]!r}") from None
            if not 100 <= status < 200:
                break  # an interim 1xx answer is followed by the real one
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        close = fields.get(b"connection", b"").lower() == b"close"
        if method == "HEAD" or status in (204, 304):
            return status, close, b""
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            return status, close, await _read_chunked(reader)
        if b"content-length" in fields:
            try:
                length = int(fields[b"content-length"])
            except ValueError:
                raise ProtocolError("bad content-length") from None
            return status, close, await reader.receive_exactly(length) if length else b""
        raise ProtocolError("an answer with neither content-length nor chunked framing")


async def _read_chunked(reader: BufferedByteReceiveStream) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.receive_until(b"\r\n", 1024)
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        if size == 0:
            while await reader.receive_until(b"\r\n", _MAX_HEAD):  # trailers, then an empty line
                pass
            return b"".join(parts)
        parts.append(await reader.receive_exactly(size))
        await reader.receive_exactly(2)
