"""The compiled sealer (``actorflow.runtime._sealer``) against the Python one it replaces.

Every test of ``test_crypto.py`` runs with each; these compare the two directly.
"""

from __future__ import annotations

import os

import orjson
import pytest
from tests.runtime.test_crypto import KEY1, KEY2, pin_nonce

from actorflow.runtime import crypto
from actorflow.runtime.crypto import KeyRing

pytestmark = pytest.mark.skipif(
    not crypto.NATIVE_SEALER and os.environ.get("CI") != "true",
    reason="the compiled sealer is not built here (no compiler or OpenSSL headers)",
)


def test_the_compiled_sealer_is_built() -> None:
    # Outside CI a build without it is allowed (everything is sealed in Python); in CI it fails.
    assert crypto.NATIVE_SEALER, "actorflow.runtime._sealer was not built (see setup.py)"


SEALED_PLAINTEXTS = [b"", b"a", b"ab", b"abc", bytes(range(16)), bytes(range(17)), b"x" * 600,
                     os.urandom(100_000)]  # fmt: skip
SEALED_CORRELATIONS = [None, "", "hook_1", "h\u00e9", "\ud800-lone", "\U0001f600", "c" * 300]


@pytest.mark.parametrize("plaintext", SEALED_PLAINTEXTS, ids=lambda p: f"{len(p)}B")
@pytest.mark.parametrize("correlation_id", SEALED_CORRELATIONS)
def test_the_compiled_and_python_sealers_write_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, plaintext: bytes, correlation_id: str | None
) -> None:
    # Given one nonce, both sealers must write one envelope: sizes around the base64 groups and
    # the buffers the compiled one keeps on its stack, associated data that is empty, non-ASCII,
    # a lone surrogate, astral, or longer than its stack buffer; and each decrypts through
    # `cryptography` (the decrypting side stays there).
    native, python = KeyRing([KEY1, KEY2]), KeyRing([KEY1, KEY2], native=False)
    pin_nonce(monkeypatch, bytes(range(100, 112)))
    for key in (None, KEY2):
        for event_type in ("hook_received", "run_completed", "t" * 40):
            args = ("wrun_\u00e9" if key else "wrun_1", event_type, correlation_id, key)
            sealed = native.seal(plaintext, *args)
            assert sealed == python.seal(plaintext, *args)
            envelope = orjson.loads(sealed)
            assert KeyRing.is_envelope(envelope)
            assert python.decrypt(envelope, run_id=args[0], event_type=event_type,
                                  correlation_id=correlation_id, event_id="e") == plaintext  # fmt: skip


def test_the_compiled_sealer_refuses_bad_arguments() -> None:
    from actorflow.runtime._sealer import RunSealer

    with pytest.raises(ValueError, match="32 bytes"):
        RunSealer(bytes(16), b"{", b"a")
    sealer = RunSealer(bytes(32), b'{"$enc":"1.k.', b"aad|")
    with pytest.raises(ValueError, match="12 bytes"):
        sealer.seal(bytes(11), b"x", b"t|", None)
    with pytest.raises(TypeError):
        sealer.seal(bytes(12), "not bytes", b"t|", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sealer.seal(bytes(12), b"x", b"t|", 7)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sealer.seal(bytes(12), b"x", b"t|")  # type: ignore[call-arg]
    assert sealer.seal(bytes(12), memoryview(b"x"), b"t|", None).startswith(b'{"$enc":"1.k.')
