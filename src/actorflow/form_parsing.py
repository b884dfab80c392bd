"""``Request.form()``'s parser: Werkzeug's, which Quart already brings.

The runtime imports no web framework (a layer contract), so the package installs this parser
into ``webhook_request`` when ``actorflow`` is imported.
"""

from __future__ import annotations

import io

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from .errors import SerializationError
from .runtime.webhook_request import FormData, FormFile

__all__ = ["parse_form"]


def parse_form(body: bytes, content_type: str) -> FormData:
    """Parse a urlencoded or multipart body.

    Raises:
        SerializationError: the body does not parse (a multipart body without its boundary,
            a broken part).
    """
    mimetype, options = parse_options_header(content_type)
    parser = FormDataParser(max_content_length=len(body) + 1)
    try:
        _, form, files = parser.parse(io.BytesIO(body), mimetype, len(body), options)
    except (ValueError, HTTPException) as exc:
        raise SerializationError(f"the {mimetype} body does not parse: {exc}") from exc
    if mimetype == "multipart/form-data" and not form and not files and body.strip():
        raise SerializationError(
            "the multipart/form-data body does not parse (is its boundary in the content-type?)"
        )
    fields: MultiDict[str, str] = form
    parsed: dict[str, list[FormFile]] = {}
    for name in files:
        for part in files.getlist(name):
            # Werkzeug spools parts to temporary files: read each, then close it.
            try:
                parsed.setdefault(name, []).append(
                    FormFile(part.filename, part.content_type, part.read())
                )
            finally:
                part.close()
    return FormData(fields={name: fields.getlist(name) for name in fields}, files=parsed)
