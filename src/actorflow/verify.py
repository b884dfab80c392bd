"""Signature checks for webhooks (``af.verify``).

A verifier runs before anything is written: ``af.create_webhook(verify=af.verify.github("gh"))``.
The runtime calls it as ``verifier(request, secrets)``, where ``secrets(name) -> bytes`` resolves a
secret *name* to its value; the verifier raises :class:`~actorflow.errors.WebhookSignatureError` to
reject the request (HTTP 401, nothing committed). Only names travel through the API, so no secret
value reaches the log, a repr or an error message.

Presets, each checking a timestamp (where the scheme has one) and an HMAC-SHA256 signature:

- :func:`standard_webhooks`: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``
  (https://www.standardwebhooks.com, also Svix);
- :func:`github`: ``X-Hub-Signature-256: sha256=<hex>``;
- :func:`stripe`: ``Stripe-Signature: t=<ts>,v1=<hex>``.

The ``sign_*`` functions produce the matching headers, for tests and for clients.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from .errors import WebhookSignatureError, WorkflowDefinitionError
from .runtime.webhook_request import Request

__all__ = [
    "SecretResolver",
    "SignatureCheck",
    "Verifier",
    "delivery_id",
    "github",
    "resolve_secret",
    "secret_env_var",
    "sign_github",
    "sign_standard_webhooks",
    "sign_stripe",
    "standard_webhooks",
    "stripe",
]

SecretResolver: TypeAlias = Callable[[str], bytes]
"""Returns the secret for a name; raises ``WorkflowDefinitionError`` when it is not configured."""

Verifier: TypeAlias = Callable[[Request, SecretResolver], None]
"""A signature check: returns to accept the request, raises ``WebhookSignatureError`` to reject."""

_ENV_PREFIX = "ACTORFLOW_SECRET_"
_WHSEC_PREFIX = b"whsec_"
# Whole seconds only, and bounded, so a hostile header cannot make int() chew a huge string.
_SECONDS = re.compile(r"[0-9]{1,15}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_DELIVERY_HEADERS = ("idempotency-key", "webhook-id", "x-github-delivery")


class SignatureCheck(Protocol):
    """What the presets return: a :data:`Verifier` that also names the secret it needs."""

    @property
    def secret_name(self) -> str: ...

    def __call__(self, request: Request, secrets: SecretResolver, /) -> None: ...


# --- secrets -------------------------------------------------------------------------------------


def secret_env_var(name: str) -> str:
    """The environment variable read for secret ``name``: ``ACTORFLOW_SECRET_<NAME>``.

    The name is upper-cased and every character other than an ASCII letter or digit becomes ``_``.
    """
    return _ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def resolve_secret(
    name: str,
    secrets: Mapping[str, str | bytes],
    environ: Mapping[str, str] = os.environ,
) -> bytes:
    """The value of secret ``name``: from ``secrets`` first, then ``ACTORFLOW_SECRET_<NAME>``.

    A ``str`` value is encoded as UTF-8.

    Raises:
        WorkflowDefinitionError: ``name`` is not a non-empty string, or the secret is not
            configured, or it is empty. The message names the secret and the variable, never
            a value.
    """
    _check_name(name)
    variable = secret_env_var(name)
    value: str | bytes | None = secrets.get(name)
    source = f"Runtime(secrets={{{name!r}: ...}})"
    if value is None:
        value = environ.get(variable)
        source = f"the environment variable {variable}"
    if value is None:
        raise WorkflowDefinitionError(
            f"webhook secret {name!r} is not configured: pass Runtime(secrets={{{name!r}: ...}}) "
            f"or set the environment variable {variable}"
        )
    if not value:
        raise WorkflowDefinitionError(
            f"webhook secret {name!r} is empty (from {source}); set it to the signing secret "
            "the sender uses"
        )
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


# --- presets -------------------------------------------------------------------------------------


def standard_webhooks(
    secret_name: str, *, tolerance: float = 300, now: Callable[[], float] = time.time
) -> SignatureCheck:
    """Check a request signed per Standard Webhooks (also Svix with ``webhook-*`` headers).

    The signed content is ``<webhook-id>.<webhook-timestamp>.<body>``; ``webhook-signature`` is a
    space-separated list of ``v1,<base64 HMAC-SHA256>`` and any one match passes (senders list
    several while rotating secrets). A secret ``whsec_<base64>`` is base64-decoded to get the key;
    any other secret is the key as it is. ``webhook-timestamp`` must lie within ``tolerance``
    seconds of ``now()``, in the past or the future.

    Raises:
        WorkflowDefinitionError: ``secret_name`` is empty or ``tolerance`` is not positive.
    """
    return _StandardWebhooks(_check_name(secret_name), _check_tolerance(tolerance), now)


def github(secret_name: str) -> SignatureCheck:
    """Check a GitHub delivery: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.

    GitHub signs no timestamp, so replays can only be caught by de-duplicating on
    ``X-GitHub-Delivery`` (see :func:`delivery_id`).

    Raises:
        WorkflowDefinitionError: ``secret_name`` is empty.
    """
    return _GitHub(_check_name(secret_name))


def stripe(
    secret_name: str, *, tolerance: float = 300, now: Callable[[], float] = time.time
) -> SignatureCheck:
    """Check a Stripe event: ``Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]``.

    The signed payload is ``<t>.<body>`` with the whole secret (``whsec_...`` included) as the
    key; any ``v1`` match passes. ``t`` must lie within ``tolerance`` seconds of ``now()``, in the
    past or the future (Stripe's own libraries check only the past; a far-future stamp is as
    suspect).

    Raises:
        WorkflowDefinitionError: ``secret_name`` is empty or ``tolerance`` is not positive.
    """
    return _Stripe(_check_name(secret_name), _check_tolerance(tolerance), now)


class _StandardWebhooks:
    __slots__ = ("_now", "secret_name", "tolerance")
    _check = "standard_webhooks"

    def __init__(self, secret_name: str, tolerance: float, now: Callable[[], float]) -> None:
        self.secret_name = secret_name
        self.tolerance = tolerance
        self._now = now

    def __repr__(self) -> str:
        return f"standard_webhooks({self.secret_name!r}, tolerance={self.tolerance:g})"

    def __call__(self, request: Request, secrets: SecretResolver, /) -> None:
        key = _standard_webhooks_key(secrets(self.secret_name), self.secret_name)
        msg_id = _require(request, "webhook-id", self._check)
        stamp = _require(request, "webhook-timestamp", self._check)
        header = _require(request, "webhook-signature", self._check)
        _check_timestamp(self._check, "webhook-timestamp", stamp, self.tolerance, self._now)
        candidates: list[bytes] = []
        for entry in header.split():
            version, _, encoded = entry.partition(",")
            # Other versions (v1a: asymmetric) are not ours to judge; skip them.
            if version != "v1":
                continue
            try:
                candidates.append(base64.b64decode(encoded, validate=True))
            except binascii.Error:
                continue
        if not candidates:
            raise _rejected(
                self._check,
                "malformed header 'webhook-signature': no 'v1,<base64>' entry in it",
            )
        content = msg_id.encode("utf-8") + b"." + stamp.encode("ascii") + b"." + request.body
        if not _matches_any(key, content, candidates):
            raise _mismatch(self._check, "webhook-signature", self.secret_name)


class _GitHub:
    __slots__ = ("secret_name",)
    _check = "github"

    def __init__(self, secret_name: str) -> None:
        self.secret_name = secret_name

    def __repr__(self) -> str:
        return f"github({self.secret_name!r})"

    def __call__(self, request: Request, secrets: SecretResolver, /) -> None:
        key = secrets(self.secret_name)
        header = _require(request, "x-hub-signature-256", self._check)
        scheme, _, digest = header.strip().partition("=")
        if scheme != "sha256" or not _HEX_SHA256.fullmatch(digest):
            raise _rejected(
                self._check,
                "malformed header 'x-hub-signature-256': expected 'sha256=' and 64 hex digits",
            )
        if not _matches_any(key, request.body, [bytes.fromhex(digest)]):
            raise _mismatch(self._check, "x-hub-signature-256", self.secret_name)


class _Stripe:
    __slots__ = ("_now", "secret_name", "tolerance")
    _check = "stripe"

    def __init__(self, secret_name: str, tolerance: float, now: Callable[[], float]) -> None:
        self.secret_name = secret_name
        self.tolerance = tolerance
        self._now = now

    def __repr__(self) -> str:
        return f"stripe({self.secret_name!r}, tolerance={self.tolerance:g})"

    def __call__(self, request: Request, secrets: SecretResolver, /) -> None:
        key = secrets(self.secret_name)
        header = _require(request, "stripe-signature", self._check)
        stamps: list[str] = []
        candidates: list[bytes] = []
        for item in header.split(","):
            field, _, value = item.strip().partition("=")
            if field == "t":
                stamps.append(value)
            elif field == "v1" and _HEX_SHA256.fullmatch(value):
                candidates.append(bytes.fromhex(value))
        if len(stamps) != 1:
            raise _rejected(
                self._check, "malformed header 'stripe-signature': expected exactly one 't='"
            )
        if not candidates:
            raise _rejected(
                self._check,
                "malformed header 'stripe-signature': no 'v1=' entry with 64 hex digits",
            )
        stamp = stamps[0]
        _check_timestamp(self._check, "stripe-signature", stamp, self.tolerance, self._now)
        if not _matches_any(key, stamp.encode("ascii") + b"." + request.body, candidates):
            raise _mismatch(self._check, "stripe-signature", self.secret_name)


# --- signing (tests, clients) --------------------------------------------------------------------


def sign_standard_webhooks(
    secret: str | bytes, msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``: ``webhook-id``, ``-timestamp``, ``-signature``.

    ``secret`` is ``whsec_<base64>`` or a raw key, read as :func:`standard_webhooks` reads it.

    Raises:
        WorkflowDefinitionError: the secret is empty, or ``whsec_`` is not followed by base64.
    """
    key = _standard_webhooks_key(_as_bytes(secret), None)
    stamp = str(int(timestamp))
    content = msg_id.encode("utf-8") + b"." + stamp.encode("ascii") + b"." + body
    signature = base64.b64encode(_hmac_sha256(key, content)).decode("ascii")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": f"v1,{signature}",
    }


def sign_github(secret: str | bytes, body: bytes) -> dict[str, str]:
    """The ``x-hub-signature-256`` header GitHub would send with ``body``.

    Raises:
        WorkflowDefinitionError: the secret is empty.
    """
    key = _nonempty(_as_bytes(secret), None)
    return {"x-hub-signature-256": "sha256=" + _hmac_sha256(key, body).hex()}


def sign_stripe(secret: str | bytes, timestamp: int, body: bytes) -> dict[str, str]:
    """The ``stripe-signature`` header Stripe would send with ``body`` at ``timestamp``.

    Raises:
        WorkflowDefinitionError: the secret is empty.
    """
    key = _nonempty(_as_bytes(secret), None)
    stamp = str(int(timestamp))
    signature = _hmac_sha256(key, stamp.encode("ascii") + b"." + body).hex()
    return {"stripe-signature": f"t={stamp},v1={signature}"}


def delivery_id(request: Request) -> str | None:
    """The sender's id for this delivery, the same on its retries; ``None`` if it sent none.

    The first non-empty of ``Idempotency-Key``, ``webhook-id`` (Standard Webhooks) and
    ``X-GitHub-Delivery``. Stripe's event id sits in the body, so it is not read here. Only
    ``webhook-id`` is covered by a signature; trust the others as far as the sender's check goes.
    """
    for name in _DELIVERY_HEADERS:
        value = _header(request, name)
        if value:
            return value
    return None


# --- internals -----------------------------------------------------------------------------------


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    return mac.finalize()


def _matches_any(key: bytes, message: bytes, candidates: Iterable[bytes]) -> bool:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    for candidate in candidates:
        try:
            # verify() compares in constant time; copy() so each candidate gets a fresh finalize.
            mac.copy().verify(candidate)
        except InvalidSignature:
            continue
        return True
    return False


def _standard_webhooks_key(secret: bytes, name: str | None) -> bytes:
    if not secret.startswith(_WHSEC_PREFIX):
        return _nonempty(secret, name)
    encoded = secret[len(_WHSEC_PREFIX) :]
    try:
        # Some senders drop the base64 padding; restore it rather than reject the secret.
        key = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        # from None: the decoder's message must not carry any part of the secret along.
        raise WorkflowDefinitionError(
            f"webhook secret {_label(name)} starts with 'whsec_' but the rest is not base64; "
            "copy the signing secret exactly as the sender shows it"
        ) from None
    return _nonempty(key, name)


def _nonempty(key: bytes, name: str | None) -> bytes:
    if not key:
        raise WorkflowDefinitionError(
            f"webhook secret {_label(name)} is empty; use the signing secret the sender uses"
        )
    return key


def _label(name: str | None) -> str:
    return repr(name) if name is not None else "(given directly)"


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        # Never echo the value: a caller may have passed the secret itself by mistake.
        raise WorkflowDefinitionError(
            f"a webhook secret name must be a non-empty str, got {type(name).__name__} "
            f"of length {len(name) if isinstance(name, (str, bytes)) else '?'}; pass the name "
            "under which Runtime(secrets=...) or ACTORFLOW_SECRET_<NAME> holds the secret"
        )
    return name


def _check_tolerance(tolerance: float) -> float:
    if not tolerance > 0:
        raise WorkflowDefinitionError(
            f"tolerance must be a positive number of seconds, got {tolerance!r}"
        )
    return float(tolerance)


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None:
        return value
    # Request promises lower-case names, but a hand-built one may not keep the promise.
    for key, candidate in request.headers.items():
        if key.lower() == name:
            return candidate
    return None


def _require(request: Request, name: str, check: str) -> str:
    value = _header(request, name)
    if not value:
        raise _rejected(check, f"missing header {name!r}")
    return value


def _check_timestamp(
    check: str, header: str, stamp: str, tolerance: float, now: Callable[[], float]
) -> None:
    if not _SECONDS.fullmatch(stamp):
        raise _rejected(
            check, f"malformed header {header!r}: the timestamp is not whole Unix seconds"
        )
    age = now() - int(stamp)
    if age > tolerance:
        raise _rejected(
            check,
            f"stale timestamp: signed {age:.0f} s ago, beyond the tolerance of {tolerance:g} s "
            "(a replayed request, or the sender's clock is wrong)",
        )
    if age < -tolerance:
        raise _rejected(
            check,
            f"stale timestamp: dated {-age:.0f} s in the future, beyond the tolerance of "
            f"{tolerance:g} s (the sender's clock, or ours, is wrong)",
        )


def _rejected(check: str, detail: str) -> WebhookSignatureError:
    return WebhookSignatureError(f"webhook request rejected by the {check} check: {detail}")


def _mismatch(check: str, header: str, secret_name: str) -> WebhookSignatureError:
    return _rejected(
        check,
        f"signature mismatch: no signature in {header!r} matches the request signed with "
        f"secret {secret_name!r}; check that the sender and this runtime share that secret and "
        "that nothing rewrites the body on the way",
    )
