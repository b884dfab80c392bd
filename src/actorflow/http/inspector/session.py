"""The inspector's browser sessions and CSRF tokens, derived from the resume secret.

A browser signs in once with the resume secret (a form: the secret never goes in a URL, where
logs and history would keep it). It gets a cookie holding ``issued.nonce.mac``, where ``mac``
is an HMAC-SHA256 of ``issued.nonce`` under a key derived from the secret: the server keeps no
session table, a session lasts ``SESSION_SECONDS``, and changing the secret ends every session.
The cookie is ``HttpOnly`` (no script reads it) and ``SameSite=Strict`` (no other site's page
sends it).

Every form that changes something carries a CSRF token, the HMAC of the session cookie under
another derived key; a POST without the token of its own session is refused. With
``SameSite=Strict`` this is a second lock, for browsers and proxies that do not honour it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

__all__ = ["SESSION_SECONDS", "Sessions"]

#: How long a signed-in browser stays signed in.
SESSION_SECONDS = 12 * 3600


def _derive(secret: bytes, purpose: str) -> bytes:
    # One key per purpose: a session MAC can never serve as a CSRF token, nor the reverse.
    return hmac.new(secret, f"actorflow inspector {purpose} v1".encode(), hashlib.sha256).digest()


class Sessions:
    """Makes and checks session cookies and CSRF tokens for one resume secret."""

    def __init__(
        self,
        secret: str,
        *,
        lifetime: float = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        raw = secret.encode("utf-8")
        self._secret = raw
        self._session_key = _derive(raw, "session")
        self._csrf_key = _derive(raw, "csrf")
        self._lifetime = lifetime
        self._clock = clock

    @property
    def lifetime(self) -> int:
        return int(self._lifetime)

    def secret_matches(self, given: str) -> bool:
        """Whether ``given`` is the resume secret (constant time in the secret's length)."""
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._secret)

    def new(self) -> str:
        """A fresh session cookie value."""
        body = f"{int(self._clock())}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(self._session_key, body)}"

    def valid(self, cookie: str | None) -> bool:
        """Whether ``cookie`` is a session this secret issued that has not expired."""
        if not cookie or len(cookie) > 200:
            return False
        body, _, mac = cookie.rpartition(".")
        issued, _, nonce = body.partition(".")
        if not issued.isdigit() or not nonce:
            return False
        if not hmac.compare_digest(mac, self._mac(self._session_key, body)):
            return False
        age = self._clock() - int(issued)
        return -60 <= age < self._lifetime  # a minute of clock skew between restarts

    def csrf_token(self, cookie: str) -> str:
        """The CSRF token of the session ``cookie`` (what its forms carry)."""
        return self._mac(self._csrf_key, cookie)

    def csrf_valid(self, cookie: str | None, token: str | None) -> bool:
        """Whether ``token`` is the CSRF token of the valid session ``cookie``."""
        if cookie is None or token is None or not self.valid(cookie):
            return False
        return hmac.compare_digest(
            token.encode("utf-8", "replace"), self.csrf_token(cookie).encode()
        )

    @staticmethod
    def _mac(key: bytes, message: str) -> str:
        return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()
