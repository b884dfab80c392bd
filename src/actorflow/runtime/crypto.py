"""Encryption at rest of the payloads in the event log (SPEC section 6).

Off unless a key is configured. When on, every encrypted value is stored as an envelope
``{"$enc": "1.<kid>.<data>"}``:

- ``1`` is the format version;
- ``<kid>`` is :func:`key_id` of the master key that wrote it, 16 hex digits, so several master
  keys can be readable at once and a key can be rotated without rewriting the log;
- ``<data>`` is unpadded base64url of ``nonce (12 bytes) + ciphertext + GCM tag (16 bytes)``.

The cipher is AES-256-GCM with a fresh random 96-bit nonce per value, under a per-run key
``HKDF-SHA256(master, salt=b"actorflow payload encryption v1", info=b"actorflow run key\\x00" +
utf8(run_id), length=32)``. The associated data,
``utf8("actorflow/1|16:<kid>|<len>:<run id>|<len>:<event type>|<len>:<correlation id>")`` (``-``
in place of the last field when there is no correlation id; lengths count characters), binds the
version, the key id, the run, the event type and the correlation id, so a ciphertext copied into
another event or another run fails to authenticate instead of decrypting to data that belongs
elsewhere. This layout is a storage format: changing it needs a new version.

This module imports nothing of the runtime except :mod:`actorflow.errors`, so tools (``actorflow
keys``, ``actorflow log``) can use it without an event loop.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import importlib
import os
import re
import secrets
import threading
from binascii import b2a_base64 as _b2a_base64
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from actorflow.errors import DecryptionError, SerializationError, WorkflowDefinitionError


class _Sealer(Protocol):
    """``actorflow.runtime._sealer.RunSealer``: one run's key and envelope prefixes."""

    def seal(
        self, nonce: bytes, plaintext: bytes, type_part: bytes, correlation_id: str | None, /
    ) -> bytes: ...


_RunSealer: Callable[[bytes, bytes, bytes], _Sealer] | None
try:  # the compiled sealer (setup.py); without it, values are sealed in Python, to the same bytes
    # Imported by name: the import-layer checker cannot read a compiled module, and took the
    # plain import for one of the whole package.
    _RunSealer = importlib.import_module("actorflow.runtime._sealer").RunSealer
except ImportError:  # pragma: no cover - a build without a compiler or OpenSSL's headers
    _RunSealer = None

#: Whether this install seals with the compiled sealer (``KeyRing(native=False)`` never does).
NATIVE_SEALER = _RunSealer is not None

__all__ = ["ENV_VAR", "KeyRing", "generate_key", "key_id", "parse_key"]

ENV_VAR = "ACTORFLOW_ENCRYPTION_KEY"
"""The environment variable read when no key is passed; several keys are comma-separated."""

KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
_VERSION = "1"
_ENVELOPE_FIELD = "$enc"
_HKDF_SALT = b"actorflow payload encryption v1"
_HKDF_INFO = b"actorflow run key\x00"
_KEY_ID_LABEL = b"actorflow key id"
_FROM_URLSAFE = bytes.maketrans(b"-_+/", b"+/-_")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
#: What surrounds the envelope's text in the JSON ``seal`` returns: ``{"$enc":"`` and ``"}``.
_JSON_HEAD = len(f'{{"{_ENVELOPE_FIELD}":"')
_JSON_TAIL = 2


def generate_key() -> str:
    """Return a new random 32-byte master key as base64 text (for ``actorflow keys generate``)."""
    return base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def parse_key(value: str | bytes) -> bytes:
    """Return the 32 raw bytes of a master key given as base64 text or as 32 raw bytes.

    Raises:
        WorkflowDefinitionError: the value is not base64 of 32 bytes, nor 32 raw bytes. The
            message never contains the key.
    """
    return _parse_key(value, "the encryption key")


def key_id(key: bytes) -> str:
    """Return the short, stable, non-secret id of a raw master key (16 hex digits).

    It is an HMAC of a fixed label under the key, so it reveals nothing about the key.
    """
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).digest()[:8].hex()


class KeyRing:
    """The master keys a runtime can decrypt with; the first one encrypts new values.

    ``cache_size`` bounds the cache of per-run derived keys (one entry per key id and run).
    Sealing under the primary key also keeps up to ``cache_size`` of those ciphers in a plain
    dict of its own, which may outlive their eviction from the cache: at most twice
    ``cache_size`` ciphers are held.
    ``native=False`` seals in Python even where the compiled sealer is built (tests and
    benchmarks compare the two; the envelopes are the same bytes).

    Raises:
        WorkflowDefinitionError: no key given, or a key is malformed.
    """

    __slots__ = ("_cipher", "_keys", "_native", "_primary", "_prks", "_recent", "_recent_size")

    def __init__(
        self, keys: Sequence[str | bytes], *, cache_size: int = 131_072, native: bool = True
    ) -> None:
        self._native = native and NATIVE_SEALER
        if isinstance(keys, str | bytes):
            keys = [keys]
        if not keys:
            raise WorkflowDefinitionError("a KeyRing needs at least one encryption key")
        if cache_size < 1:
            raise WorkflowDefinitionError(f"cache_size must be at least 1, not {cache_size}")
        self._keys: dict[str, bytes] = {}
        for position, value in enumerate(keys, start=1):
            raw = _parse_key(value, f"encryption key #{position}")
            kid = key_id(raw)
            known = self._keys.setdefault(kid, raw)
            if not hmac.compare_digest(known, raw):
                # 64-bit ids: a collision between distinct keys is astronomically unlikely, but
                # silently reading one key's data with the other must still be impossible.
                raise WorkflowDefinitionError(
                    f"encryption key #{position} has the same key id {kid} as another key; "
                    "generate a new key"
                )
        self._primary = next(iter(self._keys))
        # HKDF-Extract of each master key (the salt is fixed): the per-run half is all that
        # remains to do per run.
        self._prks = {
            kid: hmac.digest(_HKDF_SALT, raw, "sha256") for kid, raw in self._keys.items()
        }
        # HKDF per value would dominate the hot path: derive once per (key, run) and keep the
        # AESGCM object, which holds the expanded key schedule, with the parts of the envelope
        # and of the associated data that depend only on the key and the run.
        self._cipher: Callable[[str, str], _RunCipher] = functools.lru_cache(maxsize=cache_size)(
            self._derive_cipher
        )
        self._recent: dict[str, _RunCipher] = {}
        self._recent_size = cache_size

    @classmethod
    def from_config(
        cls,
        value: str | bytes | Sequence[str | bytes] | None,
        environ: Mapping[str, str] = os.environ,
    ) -> KeyRing | None:
        """Build the ring from ``Runtime(encryption_key=...)``, else from ``ACTORFLOW_ENCRYPTION_KEY``.

        Returns None when neither is set (encryption off). Text may hold several comma-separated
        keys, primary first, so a new key can be added while older ones still decrypt. An empty
        or blank environment variable counts as unset.

        Raises:
            WorkflowDefinitionError: a key is malformed, or ``value`` is given but empty.
        """
        if value is None:
            text = environ.get(ENV_VAR, "")
            if not text.strip():
                return None
            keys = _split_keys(text, ENV_VAR)
            try:
                return cls(keys)
            except WorkflowDefinitionError as exc:
                # Say where the bad key came from; the message itself never holds key material.
                raise WorkflowDefinitionError(f"{ENV_VAR}: {exc}") from None
        if isinstance(value, str):
            return cls(_split_keys(value, "encryption_key"))
        if isinstance(value, bytes):
            if not value:
                raise WorkflowDefinitionError(_EMPTY_KEY_MESSAGE)
            return cls([value])
        if not value:
            raise WorkflowDefinitionError(_EMPTY_KEY_MESSAGE)
        return cls(value)

    @property
    def primary_key_id(self) -> str:
        """The id of the key that encrypts new values."""
        return self._primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of every readable key, primary first."""
        return tuple(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self._keys)!r})"

    def encrypt(
        self,
        plaintext: bytes,
        *,
        run_id: str,
        event_type: str,
        correlation_id: str | None,
        key: str | bytes | None = None,
    ) -> dict[str, str]:
        """Encrypt ``plaintext`` for one event of one run and return its envelope.

        ``key`` overrides the primary key (``resume_hook(..., encryption_key=k)``); it must be in
        the ring, since the run finds the key to decrypt with by its id.

        Raises:
            WorkflowDefinitionError: ``key`` is malformed or not in the ring.
            SerializationError: the plaintext is too large for AES-GCM.
        """
        sealed = self.seal(plaintext, run_id, event_type, correlation_id, key)
        return {_ENVELOPE_FIELD: sealed[_JSON_HEAD:-_JSON_TAIL].decode("ascii")}

    def seal(
        self,
        plaintext: bytes,
        run_id: str,
        event_type: str,
        correlation_id: str | None,
        key: str | bytes | None = None,
    ) -> bytes:
        """The envelope :meth:`encrypt` returns, as the JSON a record holds: ``{"$enc": ...}``.

        One call seals and encodes: a record splices these bytes in as they are (the same
        bytes as serializing the envelope, without building it).

        Raises:
            WorkflowDefinitionError: ``key`` is malformed or not in the ring.
            SerializationError: the plaintext is too large for AES-GCM.
        """
        # Two values of every resume come through here (its payload, the run's result): the
        # compiled sealer does the rest in one call where it is built; the Python path is one
        # flat function, as each helper it called cost a few hundred instructions of overhead.
        if key is None:
            cipher = self._recent.get(run_id)
            if cipher is None:
                cipher = self._primary_cipher(run_id)
        else:
            cipher = self._cipher(self._key_id_in_ring(key), run_id)
        head = _TYPE_PARTS.get(event_type)
        if head is None:
            head = _type_part(event_type)
        try:
            nonce = next(_nonces.local.pool)
        except (AttributeError, StopIteration):
            nonce = _nonces.draw()
        sealer = cipher.sealer
        if sealer is not None:
            try:
                return sealer.seal(nonce, plaintext, head, correlation_id)
            except OverflowError as exc:
                raise SerializationError(
                    f"a {event_type} payload of {len(plaintext)} bytes is too large to encrypt"
                ) from exc
        if correlation_id is None:
            aad = cipher.aad_prefix + head + b"-"
        else:
            aad = (
                cipher.aad_prefix
                + head
                + f"{len(correlation_id)}:{correlation_id}".encode("utf-8", "surrogatepass")
            )
        try:
            sealed = cipher.aead.encrypt(nonce, plaintext, aad)
        except OverflowError as exc:
            raise SerializationError(
                f"a {event_type} payload of {len(plaintext)} bytes is too large to encrypt"
            ) from exc
        # The newline b2a_base64 appends goes with the padding (no keyword argument to parse).
        data = _b2a_base64(nonce + sealed).translate(_TO_URLSAFE).rstrip(b"=\n")
        return cipher.json_prefix + data + b'"}'

    def _primary_cipher(self, run_id: str) -> _RunCipher:
        # Two values a resume are sealed under the primary key: a plain dict finds its cipher in
        # a fifth of the instructions of the LRU's lookup (a key tuple, then a relinking). It
        # holds a bounded number of the LRU's own objects, the oldest dropped first (popped with
        # a default: a thread sealing at the same moment may have dropped it already).
        cipher = self._cipher(self._primary, run_id)
        recent = self._recent
        if len(recent) >= self._recent_size:
            recent.pop(next(iter(recent)), None)
        recent[run_id] = cipher
        return cipher

    def decrypt(
        self,
        envelope: Mapping[str, str],
        *,
        run_id: str,
        event_type: str,
        correlation_id: str | None,
        event_id: str,
    ) -> bytes:
        """Return the plaintext of an envelope written by :meth:`encrypt` for this event.

        Raises:
            DecryptionError: the envelope is malformed, its key is not in the ring, or it fails
                authentication (tampered, moved to another event or run, or wrong key). The
                message names the event, its type and its run.
        """

        def fail(why: str) -> DecryptionError:
            return DecryptionError(
                f"cannot decrypt event {event_id} ({event_type}) of run {run_id}: {why}"
            )

        if not self.is_envelope(envelope):
            raise fail(f'not an encryption envelope (expected {{"{_ENVELOPE_FIELD}": "<text>"}})')
        parts = envelope[_ENVELOPE_FIELD].split(".")
        if len(parts) != 3:
            raise fail("malformed envelope (expected <version>.<key id>.<data>)")
        version, kid, data = parts
        if version != _VERSION:
            raise fail(
                f"unsupported envelope version {version[:8]!r}; this actorflow reads "
                f"version {_VERSION}"
            )
        if not _KEY_ID.fullmatch(kid):
            raise fail("malformed envelope (bad key id)")
        if kid not in self._keys:
            configured = ", ".join(self._keys)
            raise fail(
                f"key {kid} is not configured; add it to the encryption keys "
                f"(configured: {configured})"
            )
        blob = _decode_b64url(data)
        if blob is None or len(blob) < _NONCE_SIZE + _TAG_SIZE:
            raise fail("malformed envelope (bad data)")
        cipher = self._cipher(kid, run_id)
        aad = cipher.aad_prefix + _event_part(event_type, correlation_id)
        try:
            return cipher.aead.decrypt(blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], aad)
        except InvalidTag:
            # No chaining: InvalidTag carries nothing the message does not already say.
            raise fail(
                f"authentication failed under key {kid}: the data was tampered with, moved to "
                "another event or run, or encrypted with a wrong key"
            ) from None

    @staticmethod
    def is_envelope(value: object) -> TypeGuard[dict[str, str]]:
        """Whether ``value`` has the shape of an envelope: a dict with exactly the key ``$enc``."""
        return (
            isinstance(value, dict)
            and len(value) == 1
            and isinstance(value.get(_ENVELOPE_FIELD), str)
        )

    def _key_id_in_ring(self, key: str | bytes) -> str:
        raw = _parse_key(key, "the override encryption key")
        kid = key_id(raw)
        known = self._keys.get(kid)
        if known is None or not hmac.compare_digest(known, raw):
            raise WorkflowDefinitionError(
                f"the override encryption key (id {kid}) is not one of the runtime's encryption "
                "keys, so the run could not decrypt the payload; add it to the encryption keys "
                f"(configured: {', '.join(self._keys)})"
            )
        return kid

    def _derive_cipher(self, kid: str, run_id: str) -> _RunCipher:
        return _RunCipher(self._run_key(kid, run_id), kid, run_id, self._native)

    def _run_key(self, kid: str, run_id: str) -> bytes:
        # HKDF-SHA256 (RFC 5869) with the extract step done once per master key: for a 32-byte
        # output, expand is the single block HMAC(PRK, info || 0x01).
        info = _HKDF_INFO + run_id.encode("utf-8", "surrogatepass")
        return hmac.digest(self._prks[kid], info + b"\x01", "sha256")


class _RunCipher:
    """What encrypting for one run under one master key needs, computed once per (key, run)."""

    __slots__ = ("_aead", "_key", "aad_prefix", "json_prefix", "sealer")

    def __init__(self, key: bytes, kid: str, run_id: str, native: bool) -> None:
        self.aad_prefix = _associated_data_prefix(kid, run_id)
        # The key id is hex and the data base64url: nothing in the envelope needs escaping.
        self.json_prefix = f'{{"{_ENVELOPE_FIELD}":"{_VERSION}.{kid}.'.encode("ascii")
        #: The compiled sealer with this run's key (``None``: seal through ``aead``).
        self.sealer = (
            _RunSealer(key, self.json_prefix, self.aad_prefix)
            if native and _RunSealer is not None
            else None
        )
        # With the compiled sealer, AESGCM only decrypts (a run rebuilt from its log): made on
        # first use, as its OpenSSL context is about 1.4 KB for every run in the cache.
        self._key = key
        self._aead = None if self.sealer is not None else AESGCM(key)

    @property
    def aead(self) -> AESGCM:
        aead = self._aead
        if aead is None:
            aead = self._aead = AESGCM(self._key)
        return aead


class _Nonces:
    """Fresh random 96-bit nonces, read from ``os.urandom`` a few hundred at a time.

    Each nonce is still 12 bytes from the operating system's CSPRNG, handed out once: every
    thread draws from a pool of its own (no lock, and no way for two threads to take the same
    one), and a forked child drops the pools it inherited, so parent and child never share a
    nonce. Drawing in bulk saves a system call per value, and with it a release of the GIL,
    which the log writer's thread would often take, costing a hand-over and back.
    """

    __slots__ = ("local",)

    _PER_DRAW = 256

    def __init__(self) -> None:
        #: This thread's pool, ``local.pool``: an iterator of nonces (absent before the first).
        self.local = threading.local()

    def take(self) -> bytes:
        try:
            return next(self.local.pool)  # type: ignore[no-any-return]
        except (AttributeError, StopIteration):
            return self.draw()

    def draw(self) -> bytes:
        """Refill this thread's pool from the OS; the first nonce of the new pool."""
        drawn = os.urandom(_NONCE_SIZE * self._PER_DRAW)
        pool = iter([drawn[at : at + _NONCE_SIZE] for at in range(0, len(drawn), _NONCE_SIZE)])
        self.local.pool = pool
        return next(pool)

    def forget(self) -> None:
        """Drop every unused nonce (in a child after ``fork``)."""
        self.local = threading.local()


_nonces = _Nonces()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_nonces.forget)


_EMPTY_KEY_MESSAGE = (
    "encryption_key is empty; pass a key (base64 of 32 bytes, see `actorflow keys generate`), "
    f"or None to read {ENV_VAR}"
)


def _parse_key(value: str | bytes, what: str) -> bytes:
    # Every error below is raised `from None`: a chained UnicodeError or binascii.Error can carry
    # part of the key in its message or attributes, and keys must never reach logs.
    hint = "expected base64 of 32 random bytes (make one with `actorflow keys generate`)"
    if isinstance(value, bytes):
        if len(value) == KEY_SIZE:
            return value
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise WorkflowDefinitionError(
                f"{what} is {len(value)} raw bytes, not {KEY_SIZE}; {hint}"
            ) from None
    elif not isinstance(value, str):
        raise WorkflowDefinitionError(
            f"{what} must be str or bytes, not {type(value).__name__}; {hint}"
        )
    text = value.strip()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raw = None
    if raw is None:
        # Accept the URL-safe alphabet too: keys get pasted from tools that emit it.
        raw = _decode_b64url(text.rstrip("=").replace("+", "-").replace("/", "_"))
    if raw is None:
        raise WorkflowDefinitionError(f"{what} is not valid base64; {hint}")
    if len(raw) != KEY_SIZE:
        raise WorkflowDefinitionError(f"{what} decodes to {len(raw)} bytes, not {KEY_SIZE}; {hint}")
    return raw


def _split_keys(text: str, source: str) -> list[str]:
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if not keys:
        raise WorkflowDefinitionError(
            f"{source} holds no key; give one or more base64 keys separated by commas"
        )
    return keys


def _decode_b64url(text: str) -> bytes | None:
    """Decode unpadded base64url strictly: None unless ``text`` is the canonical encoding."""
    if len(text) % 4 == 1:
        return None
    # Swap the alphabets ("+/" <-> "-_") so a standard "+" or "/" in the input is refused too.
    try:
        padded = (text + "=" * (-len(text) % 4)).encode("ascii").translate(_FROM_URLSAFE)
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    # The last character can carry unused low bits; a non-canonical spelling would decode to the
    # same bytes, and a flipped character must never go unnoticed.
    if binascii.b2a_base64(raw, newline=False) != padded:
        return None
    return raw


# The associated data of one value (see the module docstring) is _associated_data_prefix(kid,
# run_id) + _event_part(event_type, correlation_id); the first part is computed once per run.
# Length-prefixed fields, so ("ab", "c") and ("a", "bc") differ, and None differs from "". The
# two parts are encoded apart and joined: UTF-8 of a concatenation is the concatenation of the
# UTF-8 of its parts, so the bytes are those of the one string the format defines.


def _associated_data_prefix(kid: str, run_id: str) -> bytes:
    return f"actorflow/{_VERSION}|{len(kid)}:{kid}|{len(run_id)}:{run_id}|".encode(
        "utf-8", "surrogatepass"
    )


def _event_part(event_type: str, correlation_id: str | None) -> bytes:
    head = _TYPE_PARTS.get(event_type)
    if head is None:
        head = _type_part(event_type)
    return head + (b"-" if correlation_id is None else _counted(correlation_id))


def _type_part(event_type: str) -> bytes:
    head = _counted(event_type) + b"|"
    if len(_TYPE_PARTS) < 256:  # event types are a small fixed set; keep them
        _TYPE_PARTS[event_type] = head
    return head


def _counted(field: str) -> bytes:
    return f"{len(field)}:{field}".encode("utf-8", "surrogatepass")


_TYPE_PARTS: dict[str, bytes] = {}
