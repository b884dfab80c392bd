"""Encryption at rest: round trips, tampering, moved ciphertexts, rotation, key configuration."""

from __future__ import annotations

import base64
import itertools
import json
import os
import traceback

import orjson
import pytest

from actorflow.errors import DecryptionError, WorkflowDefinitionError
from actorflow.runtime import crypto
from actorflow.runtime.core.events import Event
from actorflow.runtime.crypto import KeyRing, generate_key, key_id, parse_key
from actorflow.runtime.payloads import Payloads

KEY1 = generate_key()
KEY2 = generate_key()
PLAINTEXT = b'{"order": "ord_secret_4711", "amount": 1234}'
WHERE = {"run_id": "wrun_1", "event_type": "hook_received", "correlation_id": "hook_1"}


@pytest.fixture(autouse=True, params=["native", "python"])
def sealer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the compiled sealer and with the Python one: rings made in the
    test seal with the one named (the envelopes must be the same bytes either way)."""
    if request.param == "native":
        if not crypto.NATIVE_SEALER:
            if os.environ.get("CI") == "true":
                pytest.fail("the compiled sealer (actorflow.runtime._sealer) was not built")
            pytest.skip("the compiled sealer is not built here (no compiler or OpenSSL headers)")
    else:
        monkeypatch.setattr(crypto, "NATIVE_SEALER", False)
    return str(request.param)


def kid(key: str) -> str:
    return key_id(parse_key(key))


def decrypt(ring: KeyRing, envelope: dict[str, str], **where: str | None) -> bytes:
    args: dict[str, str | None] = {**WHERE, **where}
    return ring.decrypt(
        envelope,
        run_id=str(args["run_id"]),
        event_type=str(args["event_type"]),
        correlation_id=args["correlation_id"],
        event_id="evt_42",
    )


def test_round_trip() -> None:
    ring = KeyRing([KEY1])
    envelope = ring.encrypt(PLAINTEXT, **WHERE)
    assert decrypt(ring, envelope) == PLAINTEXT
    assert decrypt(ring, ring.encrypt(b"", **WHERE)) == b""


def test_round_trip_without_correlation_id() -> None:
    ring = KeyRing([KEY1])
    envelope = ring.encrypt(
        PLAINTEXT, run_id="wrun_1", event_type="run_started", correlation_id=None
    )
    assert decrypt(ring, envelope, event_type="run_started", correlation_id=None) == PLAINTEXT
    # None and "" are different associated data.
    with pytest.raises(DecryptionError):
        decrypt(ring, envelope, event_type="run_started", correlation_id="")


def test_envelope_shape_and_no_plaintext() -> None:
    ring = KeyRing([KEY1])
    envelope = ring.encrypt(PLAINTEXT, **WHERE)
    assert KeyRing.is_envelope(envelope)
    assert list(envelope) == ["$enc"]
    version, kid_text, data = envelope["$enc"].split(".")
    assert version == "1"
    assert kid_text == kid(KEY1) == ring.primary_key_id
    stored = json.dumps(envelope)
    for needle in (b"ord_secret_4711", b"order", b"1234"):
        assert needle.decode() not in stored
        assert needle not in base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    assert base64.b64encode(PLAINTEXT).decode()[:12] not in stored
    assert KEY1 not in stored and KEY1.rstrip("=") not in stored


def test_nonces_differ_for_same_plaintext() -> None:
    ring = KeyRing([KEY1])
    first = ring.encrypt(PLAINTEXT, **WHERE)["$enc"].split(".")[2]
    second = ring.encrypt(PLAINTEXT, **WHERE)["$enc"].split(".")[2]
    assert first != second
    assert first[:16] != second[:16]  # the first 12 bytes (16 base64 chars) are the nonce


def test_flipping_any_character_fails_naming_the_event() -> None:
    ring = KeyRing([KEY1])
    text = ring.encrypt(PLAINTEXT, **WHERE)["$enc"]
    for index, char in enumerate(text):
        swapped = {"-": "+", "_": "/"}.get(char, "A" if char != "A" else "B")
        for replacement in {chr(ord(char) ^ 1), swapped}:
            tampered = {"$enc": text[:index] + replacement + text[index + 1 :]}
            with pytest.raises(DecryptionError) as caught:
                decrypt(ring, tampered)
            message = str(caught.value)
            assert "evt_42" in message and "hook_received" in message and "wrun_1" in message


def test_truncated_and_extended_envelopes_fail() -> None:
    ring = KeyRing([KEY1])
    text = ring.encrypt(PLAINTEXT, **WHERE)["$enc"]
    for bad in (text[:-1], text[:-4], text + "A", text + "AAAA", text[:20], "", "1..", text + "."):
        with pytest.raises(DecryptionError, match="evt_42"):
            decrypt(ring, {"$enc": bad})


def test_tag_failure_says_tampered_or_moved() -> None:
    ring = KeyRing([KEY1])
    envelope = ring.encrypt(PLAINTEXT, **WHERE)
    with pytest.raises(DecryptionError, match="tampered with, moved to another event"):
        decrypt(ring, envelope, correlation_id="hook_2")


@pytest.mark.parametrize(
    "where",
    [
        {"run_id": "wrun_2"},
        {"event_type": "step_completed"},
        {"correlation_id": "hook_2"},
        {"correlation_id": None},
    ],
)
def test_moved_envelope_fails(where: dict[str, str | None]) -> None:
    ring = KeyRing([KEY1])
    envelope = ring.encrypt(PLAINTEXT, **WHERE)
    with pytest.raises(DecryptionError, match="evt_42"):
        decrypt(ring, envelope, **where)


def test_fields_of_associated_data_do_not_run_together() -> None:
    ring = KeyRing([KEY1])
    envelope = ring.encrypt(PLAINTEXT, run_id="wrun_1", event_type="a", correlation_id="bc")
    with pytest.raises(DecryptionError):
        decrypt(ring, envelope, event_type="ab", correlation_id="c")
    with pytest.raises(DecryptionError):
        decrypt(ring, envelope, event_type="a|2:bc", correlation_id=None)


def test_not_an_envelope() -> None:
    ring = KeyRing([KEY1])
    for value in ({}, {"$enc": "x", "other": "y"}, {"enc": "x"}):
        assert not KeyRing.is_envelope(value)
        with pytest.raises(DecryptionError, match="not an encryption envelope"):
            decrypt(ring, value)
    assert not KeyRing.is_envelope({"$enc": 5})
    assert not KeyRing.is_envelope(["$enc"])
    assert not KeyRing.is_envelope("$enc")


def test_rotation() -> None:
    old = KeyRing([KEY1]).encrypt(PLAINTEXT, **WHERE)
    rotated = KeyRing([KEY2, KEY1])
    assert rotated.key_ids == (kid(KEY2), kid(KEY1))
    assert decrypt(rotated, old) == PLAINTEXT
    new = rotated.encrypt(b"new", **WHERE)
    assert new["$enc"].split(".")[1] == kid(KEY2)
    assert decrypt(KeyRing([KEY2]), new) == b"new"

    with pytest.raises(DecryptionError) as caught:
        decrypt(KeyRing([KEY2]), old)
    message = str(caught.value)
    assert f"key {kid(KEY1)} is not configured; add it to the encryption keys" in message
    assert "evt_42" in message
    assert KEY1 not in message and KEY2 not in message


def test_wrong_key_with_same_id_is_impossible_to_read() -> None:
    # An envelope whose key id is rewritten to another configured key must fail, not decrypt.
    ring = KeyRing([KEY1, KEY2])
    _, _, data = ring.encrypt(PLAINTEXT, **WHERE, key=KEY2)["$enc"].split(".")
    forged = {"$enc": f"1.{kid(KEY1)}.{data}"}
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt(ring, forged)


def test_override_key_in_ring() -> None:
    ring = KeyRing([KEY1, KEY2])
    for override in (KEY2, parse_key(KEY2)):
        envelope = ring.encrypt(PLAINTEXT, **WHERE, key=override)
        assert envelope["$enc"].split(".")[1] == kid(KEY2)
        assert decrypt(ring, envelope) == PLAINTEXT
        assert decrypt(KeyRing([KEY2]), envelope) == PLAINTEXT


def test_override_key_not_in_ring_is_refused() -> None:
    ring = KeyRing([KEY1])
    outsider = generate_key()
    with pytest.raises(WorkflowDefinitionError, match="not one of the runtime's encryption keys"):
        ring.encrypt(PLAINTEXT, **WHERE, key=outsider)
    with pytest.raises(WorkflowDefinitionError) as caught:
        ring.encrypt(PLAINTEXT, **WHERE, key=parse_key(outsider))
    assert outsider not in str(caught.value)


def test_key_id_is_stable_short_and_not_the_key() -> None:
    raw = parse_key(KEY1)
    assert key_id(raw) == key_id(bytes(raw))
    assert len(key_id(raw)) == 16
    assert key_id(raw) not in raw.hex()
    assert key_id(raw) != key_id(parse_key(KEY2))
    # Pinned: the id is part of the storage format.
    assert key_id(bytes(32)) == "a1a89aad7766315a"


def test_generate_key() -> None:
    keys = {generate_key() for _ in range(8)}
    assert len(keys) == 8
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 32


def test_parse_key_forms() -> None:
    raw = os.urandom(32)
    assert parse_key(raw) == raw
    assert parse_key(base64.b64encode(raw).decode()) == raw
    assert parse_key(base64.b64encode(raw)) == raw
    assert parse_key("  " + base64.b64encode(raw).decode() + "\n") == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode()) == raw
    assert parse_key(base64.b64encode(raw).decode().rstrip("=")) == raw


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (base64.b64encode(b"s3cr3t-16-bytes!").decode(), "decodes to 16 bytes, not 32"),
        (base64.b64encode(b"k" * 48).decode(), "decodes to 48 bytes, not 32"),
        ("not base64 at all: secret!", "is not valid base64"),
        ("sécret-kéy-with-accents-that-is-long-enough", "is not valid base64"),
        ("", "decodes to 0 bytes"),
        (b"\xffsecret-raw-bytes-of-wrong-size", "raw bytes, not 32"),
    ],
)
def test_bad_keys_give_clear_errors_without_the_key(value: str | bytes, expected: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=expected) as caught:
        parse_key(value)
    error = caught.value
    secret = value if isinstance(value, str) else value.decode("latin-1")
    for text in (str(error), repr(error)):
        if secret:
            assert secret not in text
            assert "secret" not in text and "s3cr3t" not in text
    # Nothing chained either: foreign decode errors can carry the input.
    printed = "".join(traceback.format_exception(error))
    assert "secret" not in printed and "s3cr3t" not in printed and "czNjcjN0" not in printed


def test_keyring_rejects_bad_and_empty_configs() -> None:
    with pytest.raises(WorkflowDefinitionError, match="at least one"):
        KeyRing([])
    with pytest.raises(WorkflowDefinitionError, match="encryption key #2 decodes to 16 bytes"):
        KeyRing([KEY1, base64.b64encode(b"0123456789abcdef").decode()])


def test_keyring_accepts_a_single_key() -> None:
    assert KeyRing(KEY1).key_ids == (kid(KEY1),)
    assert KeyRing([KEY1, KEY1]).key_ids == (kid(KEY1),)


def test_repr_shows_ids_not_keys() -> None:
    ring = KeyRing([KEY1, KEY2])
    text = repr(ring)
    assert kid(KEY1) in text and kid(KEY2) in text
    assert KEY1 not in text and KEY2 not in text


def test_from_config_nothing_configured() -> None:
    assert KeyRing.from_config(None, environ={}) is None
    assert KeyRing.from_config(None, environ={"ACTORFLOW_ENCRYPTION_KEY": "  "}) is None


def test_from_config_env_var_with_commas() -> None:
    ring = KeyRing.from_config(None, environ={"ACTORFLOW_ENCRYPTION_KEY": f" {KEY2} , {KEY1},"})
    assert ring is not None
    assert ring.key_ids == (kid(KEY2), kid(KEY1))
    assert ring.primary_key_id == kid(KEY2)
    old = KeyRing([KEY1]).encrypt(PLAINTEXT, **WHERE)
    assert decrypt(ring, old) == PLAINTEXT


def test_from_config_env_var_bad_entry() -> None:
    bad = base64.b64encode(b"secret-secret").decode()
    with pytest.raises(
        WorkflowDefinitionError, match="ACTORFLOW_ENCRYPTION_KEY: encryption key #2"
    ) as caught:
        KeyRing.from_config(None, environ={"ACTORFLOW_ENCRYPTION_KEY": f"{KEY1},{bad}"})
    assert bad not in str(caught.value) and KEY1 not in str(caught.value)
    with pytest.raises(
        WorkflowDefinitionError, match="ACTORFLOW_ENCRYPTION_KEY holds no key; give one"
    ):
        KeyRing.from_config(None, environ={"ACTORFLOW_ENCRYPTION_KEY": " , ,"})


def test_from_config_explicit_value_wins_over_env() -> None:
    environ = {"ACTORFLOW_ENCRYPTION_KEY": KEY1}
    for value in (KEY2, parse_key(KEY2), [KEY2], (parse_key(KEY2),)):
        ring = KeyRing.from_config(value, environ=environ)
        assert ring is not None and ring.key_ids == (kid(KEY2),)
    ring = KeyRing.from_config(f"{KEY2},{KEY1}", environ={})
    assert ring is not None and ring.key_ids == (kid(KEY2), kid(KEY1))


@pytest.mark.parametrize("value", ["", b"", []])
def test_from_config_explicit_empty_is_an_error(value: str | bytes | list[str]) -> None:
    # Silently running unencrypted because a key variable was empty would be a security hole.
    with pytest.raises(WorkflowDefinitionError):
        KeyRing.from_config(value, environ={"ACTORFLOW_ENCRYPTION_KEY": KEY1})


def test_small_cache_still_correct() -> None:
    ring = KeyRing([KEY1, KEY2], cache_size=1)
    envelopes = [
        (run, ring.encrypt(run.encode(), run_id=run, event_type="t", correlation_id=None))
        for run in (f"wrun_{i}" for i in range(5))
    ]
    for run, envelope in reversed(envelopes):
        plain = ring.decrypt(
            envelope, run_id=run, event_type="t", correlation_id=None, event_id="e"
        )
        assert plain == run.encode()
    with pytest.raises(WorkflowDefinitionError, match="cache_size"):
        KeyRing([KEY1], cache_size=0)


def test_the_primary_keys_recent_ciphers_stay_within_the_cache_size() -> None:
    # Values sealed under the primary key find their run's cipher in a dict of recent runs; it
    # must stay bounded by cache_size like the LRU behind it, and evicting must not change a byte.
    ring = KeyRing([KEY1], cache_size=3)
    sealed = []
    for round_ in range(2):
        for i in range(10):
            run = f"wrun_{i}"
            sealed.append((run, ring.seal(b"v%d" % i, run, "hook_received", f"hook_{round_}")))
            assert len(ring._recent) <= 3
    for run, value in sealed:
        envelope = orjson.loads(value)
        corr = "hook_0" if sealed.index((run, value)) < 10 else "hook_1"
        plain = ring.decrypt(
            envelope, run_id=run, event_type="hook_received", correlation_id=corr, event_id="e"
        )
        assert plain == b"v" + run.removeprefix("wrun_").encode()


def test_pinned_envelope_still_decrypts() -> None:
    # Known answer: the envelope layout, HKDF parameters and associated data are a storage format;
    # a change that breaks this test makes existing logs unreadable.
    ring = KeyRing([bytes(range(32))])
    envelope = {
        "$enc": "1.fd4fc0bc7f958155.e5XjNeYOHtC3MdiVuZGPYHEwdjLTKagqbbNgOI5o5BM6wXHguW1DoY461cY"
    }
    plain = ring.decrypt(
        envelope,
        run_id="wrun_pin",
        event_type="hook_received",
        correlation_id="hook_pin",
        event_id="evt_pin",
    )
    assert plain == b'{"pinned": true}'


# Records written by actorflow before the envelope was made cheaper (commit 3c91aee), under the
# master keys bytes(range(32)) (primary) and bytes(range(1, 33)); the first payload used the
# second key as a resume_hook(..., encryption_key=...) override.
PINNED_RECORDS = [
    b'["evnt_pin1","wrun_pin","hook_received","hook_pin",1764806400.5,{"payload":{"$enc":"1.0b902a'
    b"3fe0427102.GXphB67ov14OCfVZv9GQWUSd3scMGkJm-u54Og1uW2pQNniDfdcbYxFUmmB3q5ukZvkMJZ4Z1y3bkZ6yS9"
    b'zRDKU9QA"},"token":"order:1"}]',
    b'["evnt_pin2","wrun_pin","run_completed",null,1764806401.0,{"result":{"$enc":"1.fd4fc0bc7f9581'
    b'55.-SAaCZpbfAhza0J5uME3OeM1A7luw1Kt53-kKAd8P-ooHg1hseEo3JZQa4IgJ_0WEA"}}]',
    b'["evnt_pin3","wrun_pin","hook_created","hook_pin",1764806399.0,{"token":"order:1","metadata":'
    b'{"$enc":"1.fd4fc0bc7f958155.hDFglhomuazXv93bpJmuDBVRf8A27H46BqCRmwPrPf_qP1GcUy6bvmg"},"is_webh'
    b'ook":false}]',
]
PINNED_VALUES = [
    {"payload": {"amount": 12.5, "items": ["a", "é", None]}, "token": "order:1"},
    {"result": [1, "two", {"three": 3}]},
    {"token": "order:1", "metadata": {"who": "ops"}, "is_webhook": False},
]


def test_records_written_by_earlier_code_still_decode() -> None:
    payloads = Payloads(KeyRing([bytes(range(32)), bytes(range(1, 33))]))
    for record, values in zip(PINNED_RECORDS, PINNED_VALUES, strict=True):
        assert payloads.decode(record).data == values


def pin_nonce(monkeypatch: pytest.MonkeyPatch, nonce: bytes) -> None:
    """Make this thread's nonce pool hand out ``nonce`` until the test ends."""
    monkeypatch.setattr(crypto._nonces.local, "pool", itertools.repeat(nonce), raising=False)


def test_envelopes_are_byte_for_byte_those_of_earlier_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the nonce the earlier code drew, today's code must write the very same record: the
    # cheaper envelope is the same storage format, not a new one.
    payloads = Payloads(KeyRing([bytes(range(32)), bytes(range(1, 33))]))
    for record, values in zip(PINNED_RECORDS, PINNED_VALUES, strict=True):
        stored = Payloads(None).decode_plain(record)
        (envelope,) = (v for v in stored.data.values() if KeyRing.is_envelope(v))
        data = envelope["$enc"].split(".")[2]
        nonce = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))[:12]
        pin_nonce(monkeypatch, nonce)
        event = Event(stored.event_id, stored.run_id, stored.type, stored.correlation_id,
                      stored.created_at, values)  # fmt: skip
        override = bytes(range(1, 33)) if stored.type == "hook_received" else None
        assert payloads.encode(event, override) == record
        assert event.data == values, "encoding leaves the event's own data plain"


def test_nonces_are_fresh_across_pool_refills() -> None:
    nonces = crypto._Nonces()
    drawn = [nonces.take() for _ in range(3 * 256 + 7)]
    assert all(len(n) == 12 for n in drawn)
    assert len(set(drawn)) == len(drawn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_reuses_the_parents_nonces() -> None:
    crypto._nonces.take()  # the pool now holds unused nonces, which the child inherits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, b"".join(crypto._nonces.take() for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 8 * 12)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    mine = b"".join(crypto._nonces.take() for _ in range(8))
    assert len(child) == 8 * 12
    assert not {child[i : i + 12] for i in range(0, 96, 12)} & {
        mine[i : i + 12] for i in range(0, 96, 12)
    }


@pytest.mark.parametrize(
    "run_id", ["wrun_1", "wrun_01HZZZZZZZZZZZZZZZZZZZZZZZ", "wrun_é\ud800", ""]
)
def test_run_keys_are_hkdf_sha256(run_id: str) -> None:
    # The per-run key is computed with the extract step cached per master key; it must stay the
    # very HKDF the module docstring (and every existing log) defines.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    master = parse_key(KEY1)
    expected = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"actorflow payload encryption v1",
        info=b"actorflow run key\x00" + run_id.encode("utf-8", "surrogatepass"),
    ).derive(master)
    assert KeyRing([KEY1])._run_key(key_id(master), run_id) == expected


@pytest.mark.parametrize("encrypted", [False, True])
def test_values_serialized_once_give_the_same_record(
    monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    # A caller that already serialized a value (the size check's bytes) hands them on; the
    # record is byte for byte the one made by serializing the tree again.
    nonce = bytes(range(12))
    pin_nonce(monkeypatch, nonce)
    payloads = Payloads(KeyRing([bytes(range(32))]) if encrypted else None)
    tree = {"amount": 12.5, "items": ["a", "é", None], "nested": {"z": 1, "a": [True]}}
    data = {"payload": tree, "token": "order:1", "external": True}
    event = Event("evnt_1", "wrun_1", "hook_received", "hook_1", 1764806400.5, data)
    expected = payloads.encode(event)
    assert payloads.encode(event, None, {"payload": orjson.dumps(tree)}) == expected
    assert event.data == {"payload": tree, "token": "order:1", "external": True}
    assert payloads.decode(expected).data == event.data
