"""``Request`` and ``Response``: what a webhook receives and answers, as plain data.

They are framework-free (no Quart here): the HTTP layer converts its request objects into
``Request`` and ``Response`` into its own responses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

__all__ = ["FormData", "FormFile", "Request", "Response", "set_form_parser"]


@dataclass(frozen=True, slots=True)
class FormFile:
    """A file part of a ``multipart/form-data`` body."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class FormData:
    """A parsed form body: fields and files by name, each name's values in body order."""

    fields: Mapping[str, list[str]] = field(default_factory=dict)
    files: Mapping[str, list[FormFile]] = field(default_factory=dict)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of field ``name``."""
        values = self.fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self.fields.get(name, ()))

    def __getitem__(self, name: str) -> str:
        values = self.fields.get(name)
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return name in self.fields or name in self.files


#: Parses a form body: ``(body, content type) -> FormData``. Installed by ``actorflow``'s
#: package (``actorflow/form_parsing.py``, Werkzeug's parser); the runtime imports no web
#: framework itself.
_form_parser: Callable[[bytes, str], FormData] | None = None


def set_form_parser(parser: Callable[[bytes, str], FormData]) -> None:
    global _form_parser
    _form_parser = parser


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response a webhook answers with."""

    status: int = 200
    body: bytes | str = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body

    @classmethod
    def json(
        cls, value: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        """A JSON response with ``content-type: application/json``."""
        merged = {"content-type": "application/json", **(headers or {})}
        return cls(status=status, body=orjson.dumps(value), headers=merged)

    def to_data(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body_bytes, "headers": dict(self.headers)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Response:
        return cls(status=int(data["status"]), body=data["body"], headers=dict(data["headers"]))


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request delivered to a webhook. Header names are lower-case."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Set by the runtime on delivery; lets ``respond_with`` find its webhook. Not user data.
    _respond: Any = field(default=None, repr=False, compare=False)

    @property
    def query(self) -> dict[str, str]:
        """The query string as a dict (the last value wins for repeated names)."""
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def form(self) -> FormData:
        """The body parsed as ``application/x-www-form-urlencoded`` or ``multipart/form-data``
        (by its ``content-type``), with Werkzeug's form parser.

        Raises:
            SerializationError: the body is not a form of either kind.
        """
        from ..errors import SerializationError

        content_type = self.headers.get("content-type", "")
        mimetype = content_type.split(";", 1)[0].strip().lower()
        if mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise SerializationError(
                f"request.form() needs an application/x-www-form-urlencoded or "
                f"multipart/form-data body, not {mimetype or 'no content-type'!r}"
            )
        if _form_parser is None:  # pragma: no cover - installed on ``import actorflow``
            raise SerializationError("no form parser is installed; import actorflow first")
        return _form_parser(self.body, content_type)

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    async def respond_with(self, response: Response) -> None:
        """Answer the waiting HTTP caller of a ``respond_with="manual"`` webhook (durable).

        Raises:
            WorkflowDefinitionError: the webhook was not created with ``respond_with="manual"``.
        """
        from ..errors import WorkflowDefinitionError

        if self._respond is None:
            raise WorkflowDefinitionError(
                "respond_with() works only on requests of a webhook created with "
                'respond_with="manual", awaited inside a workflow'
            )
        await self._respond(response)

    def to_data(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
            "body": self.body,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Request:
        return cls(
            method=str(data["method"]),
            url=str(data["url"]),
            headers={str(k).lower(): str(v) for k, v in dict(data["headers"]).items()},
            body=bytes(data["body"]),
        )
