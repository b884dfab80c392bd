"""Tests for ``actorflow.verify``: the webhook signature presets, signing helpers and secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import pytest

from actorflow import verify
from actorflow.errors import WebhookSignatureError, WorkflowDefinitionError
from actorflow.runtime.webhook_request import Request

NOW = 1_700_000_000
BODY = b'{"type":"order.paid","id":"evt_1","amount":4200}'
# Secrets with distinctive content, so a leak into a message is easy to spot.
RAW_SECRET = "s3cr3t-do-not-leak-7f1e"
WHSEC_KEY = b"standard-webhooks-key-do-not-leak"
WHSEC = "whsec_" + base64.b64encode(WHSEC_KEY).decode()
STRIPE_SECRET = "whsec_stripe-do-not-leak-91ab"


def clock(at: float = NOW) -> Callable[[], float]:
    return lambda: at


def secrets_of(mapping: Mapping[str, str | bytes]) -> verify.SecretResolver:
    return partial(verify.resolve_secret, secrets=mapping, environ={})


def request(headers: Mapping[str, str], body: bytes = BODY) -> Request:
    return Request(method="POST", url="https://example.test/hook", headers=headers, body=body)


def flip_one_byte(body: bytes) -> bytes:
    return body[:5] + bytes([body[5] ^ 0x01]) + body[6:]


def rejected(check: verify.Verifier, req: Request, secrets: verify.SecretResolver) -> str:
    with pytest.raises(WebhookSignatureError) as info:
        check(req, secrets)
    return str(info.value)


# --- one table of cases for the three presets ----------------------------------------------------


@dataclass(frozen=True)
class Preset:
    name: str
    secret: str
    make: Callable[[str, Callable[[], float]], verify.SignatureCheck]
    sign: Callable[[bytes, int], dict[str, str]]  # (body, timestamp) -> headers
    signature_header: str
    timestamped: bool


PRESETS = [
    Preset(
        "standard_webhooks",
        WHSEC,
        lambda name, now: verify.standard_webhooks(name, now=now),
        lambda body, ts: verify.sign_standard_webhooks(WHSEC, "msg_1", ts, body),
        "webhook-signature",
        True,
    ),
    Preset(
        "github",
        RAW_SECRET,
        lambda name, now: verify.github(name),
        lambda body, ts: verify.sign_github(RAW_SECRET, body),
        "x-hub-signature-256",
        False,
    ),
    Preset(
        "stripe",
        STRIPE_SECRET,
        lambda name, now: verify.stripe(name, now=now),
        lambda body, ts: verify.sign_stripe(STRIPE_SECRET, ts, body),
        "stripe-signature",
        True,
    ),
]
by_name = pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)


@by_name
def test_valid_request_passes(preset: Preset) -> None:
    check = preset.make("hook", clock())
    check(request(preset.sign(BODY, NOW)), secrets_of({"hook": preset.secret}))


@by_name
def test_wrong_secret_is_a_signature_mismatch(preset: Preset) -> None:
    headers = preset.sign(BODY, NOW)
    message = rejected(
        preset.make("hook", clock()), request(headers), secrets_of({"hook": "another-secret"})
    )
    assert "signature mismatch" in message
    assert preset.name in message


@by_name
def test_body_changed_by_one_byte_is_rejected(preset: Preset) -> None:
    headers = preset.sign(BODY, NOW)
    message = rejected(
        preset.make("hook", clock()),
        request(headers, flip_one_byte(BODY)),
        secrets_of({"hook": preset.secret}),
    )
    assert "signature mismatch" in message


@by_name
def test_missing_signature_header_is_rejected(preset: Preset) -> None:
    headers = dict(preset.sign(BODY, NOW))
    del headers[preset.signature_header]
    message = rejected(
        preset.make("hook", clock()), request(headers), secrets_of({"hook": preset.secret})
    )
    assert f"missing header {preset.signature_header!r}" in message


@by_name
def test_empty_body_is_signed_too(preset: Preset) -> None:
    check = preset.make("hook", clock())
    secrets = secrets_of({"hook": preset.secret})
    check(request(preset.sign(b"", NOW), b""), secrets)
    with pytest.raises(WebhookSignatureError):
        check(request(preset.sign(b"", NOW), b"x"), secrets)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.timestamped], ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("offset", "passes", "words"),
    [
        (0, True, ""),
        (300, True, ""),  # the edge of the window is inside it
        (-300, True, ""),
        (301, False, "s ago"),
        (-301, False, "in the future"),
        (86_400, False, "s ago"),
        (-86_400, False, "in the future"),
    ],
)
def test_timestamp_tolerance_both_ways(
    preset: Preset, offset: int, passes: bool, words: str
) -> None:
    # The request was signed at NOW - offset; the verifier's clock reads NOW.
    headers = preset.sign(BODY, NOW - offset)
    check = preset.make("hook", clock(NOW))
    secrets = secrets_of({"hook": preset.secret})
    if passes:
        check(request(headers), secrets)
    else:
        message = rejected(check, request(headers), secrets)
        assert "stale timestamp" in message
        assert words in message


def test_tolerance_is_configurable() -> None:
    headers = verify.sign_standard_webhooks(WHSEC, "msg_1", NOW - 30, BODY)
    secrets = secrets_of({"sw": WHSEC})
    verify.standard_webhooks("sw", tolerance=60, now=clock())(request(headers), secrets)
    with pytest.raises(WebhookSignatureError, match="tolerance of 10 s"):
        verify.standard_webhooks("sw", tolerance=10, now=clock())(request(headers), secrets)
    stripe_headers = verify.sign_stripe(STRIPE_SECRET, NOW + 30, BODY)
    with pytest.raises(WebhookSignatureError, match="in the future"):
        verify.stripe("st", tolerance=10, now=clock())(
            request(stripe_headers), secrets_of({"st": STRIPE_SECRET})
        )


@pytest.mark.parametrize("tolerance", [0, -1, float("nan")])
def test_tolerance_must_be_positive(tolerance: float) -> None:
    with pytest.raises(WorkflowDefinitionError, match="tolerance"):
        verify.standard_webhooks("sw", tolerance=tolerance)
    with pytest.raises(WorkflowDefinitionError, match="tolerance"):
        verify.stripe("st", tolerance=tolerance)


# --- Standard Webhooks ---------------------------------------------------------------------------


def test_standard_webhooks_known_answer() -> None:
    # The worked example of the Svix documentation (Standard Webhooks grew out of Svix).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    check = verify.standard_webhooks("sw", now=clock(1614265330))
    check(request(headers, body), secrets_of({"sw": secret}))
    assert verify.sign_standard_webhooks(secret, headers["webhook-id"], 1614265330, body) == (
        headers
    )


def test_standard_webhooks_raw_secret_is_the_key_as_is() -> None:
    key = b"raw key bytes, no prefix"
    headers = verify.sign_standard_webhooks(key, "msg_1", NOW, BODY)
    expected = hmac.new(key, b"msg_1." + str(NOW).encode() + b"." + BODY, hashlib.sha256)
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected.digest()).decode()
    verify.standard_webhooks("sw", now=clock())(request(headers), secrets_of({"sw": key}))


def test_standard_webhooks_whsec_without_padding_is_accepted() -> None:
    unpadded = "whsec_" + base64.b64encode(b"sixteen byte key").decode().rstrip("=")
    assert not unpadded.endswith("=")
    headers = verify.sign_standard_webhooks(unpadded, "m", NOW, BODY)
    padded = "whsec_" + base64.b64encode(b"sixteen byte key").decode()
    verify.standard_webhooks("sw", now=clock())(request(headers), secrets_of({"sw": padded}))


def test_standard_webhooks_bad_whsec_secret_is_a_configuration_error() -> None:
    secret = "whsec_not*base64*do-not-leak"
    headers = verify.sign_standard_webhooks(WHSEC, "msg_1", NOW, BODY)
    check = verify.standard_webhooks("sw", now=clock())
    with pytest.raises(WorkflowDefinitionError) as info:
        check(request(headers), secrets_of({"sw": secret}))
    assert "'sw'" in str(info.value) and "not base64" in str(info.value)
    assert "do-not-leak" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_standard_webhooks_one_of_several_signatures_matches() -> None:
    old = verify.sign_standard_webhooks(
        "whsec_" + base64.b64encode(b"old").decode(), "m", NOW, BODY
    )
    new = verify.sign_standard_webhooks(WHSEC, "m", NOW, BODY)
    signature = " ".join(
        [
            "v1a,c29tZS1hc3ltbWV0cmljLXNpZ25hdHVyZQ==",  # another scheme: skipped
            "v1,not-base64!",  # unreadable: skipped
            old["webhook-signature"],
            new["webhook-signature"],
        ]
    )
    headers = {**new, "webhook-signature": signature}
    verify.standard_webhooks("sw", now=clock())(request(headers), secrets_of({"sw": WHSEC}))
    # And none of them matching is a mismatch, not a malformed header.
    headers = {**new, "webhook-signature": f"{old['webhook-signature']} v1,AAAA"}
    message = rejected(
        verify.standard_webhooks("sw", now=clock()), request(headers), secrets_of({"sw": WHSEC})
    )
    assert "signature mismatch" in message


def test_standard_webhooks_signature_of_another_message_id_fails() -> None:
    headers = verify.sign_standard_webhooks(WHSEC, "msg_1", NOW, BODY)
    headers["webhook-id"] = "msg_2"
    message = rejected(
        verify.standard_webhooks("sw", now=clock()), request(headers), secrets_of({"sw": WHSEC})
    )
    assert "signature mismatch" in message


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_webhooks_each_header_is_required(missing: str) -> None:
    headers = verify.sign_standard_webhooks(WHSEC, "msg_1", NOW, BODY)
    del headers[missing]
    message = rejected(
        verify.standard_webhooks("sw", now=clock()), request(headers), secrets_of({"sw": WHSEC})
    )
    assert f"missing header {missing!r}" in message


@pytest.mark.parametrize(
    ("header", "value", "words"),
    [
        ("webhook-signature", "v2,AAAA", "no 'v1,<base64>' entry"),
        ("webhook-signature", "v1,***", "no 'v1,<base64>' entry"),
        ("webhook-signature", "garbage", "no 'v1,<base64>' entry"),
        ("webhook-timestamp", "1700000000.5", "not whole Unix seconds"),
        ("webhook-timestamp", "-1700000000", "not whole Unix seconds"),
        ("webhook-timestamp", "yesterday", "not whole Unix seconds"),
        ("webhook-timestamp", "9" * 400, "not whole Unix seconds"),
    ],
)
def test_standard_webhooks_malformed_headers(header: str, value: str, words: str) -> None:
    headers = {**verify.sign_standard_webhooks(WHSEC, "msg_1", NOW, BODY), header: value}
    message = rejected(
        verify.standard_webhooks("sw", now=clock()), request(headers), secrets_of({"sw": WHSEC})
    )
    assert f"malformed header {header!r}" in message
    assert words in message


def test_header_names_are_matched_without_regard_to_case() -> None:
    headers = {
        k.title(): v for k, v in verify.sign_standard_webhooks(WHSEC, "m", NOW, BODY).items()
    }
    assert "Webhook-Signature" in headers
    verify.standard_webhooks("sw", now=clock())(request(headers), secrets_of({"sw": WHSEC}))


# --- GitHub --------------------------------------------------------------------------------------


def test_github_known_answer() -> None:
    # The test values of GitHub's "Validating webhook deliveries" page.
    secret = "It's a Secret to Everybody"
    headers = {
        "x-hub-signature-256": "sha256="
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    }
    assert verify.sign_github(secret, b"Hello, World!") == headers
    verify.github("gh")(request(headers, b"Hello, World!"), secrets_of({"gh": secret}))


def test_github_upper_case_hex_is_accepted() -> None:
    headers = verify.sign_github(RAW_SECRET, BODY)
    digest = headers["x-hub-signature-256"].removeprefix("sha256=")
    upper = {"x-hub-signature-256": "sha256=" + digest.upper()}
    verify.github("gh")(request(upper), secrets_of({"gh": RAW_SECRET}))


@pytest.mark.parametrize(
    "value",
    [
        "sha1=" + "0" * 40,  # the legacy X-Hub-Signature scheme
        "sha256=" + "0" * 63,
        "sha256=" + "g" * 64,
        "sha256",
        "0" * 64,
    ],
)
def test_github_malformed_header(value: str) -> None:
    message = rejected(
        verify.github("gh"),
        request({"x-hub-signature-256": value}),
        secrets_of({"gh": RAW_SECRET}),
    )
    assert "malformed header 'x-hub-signature-256'" in message


# --- Stripe --------------------------------------------------------------------------------------


def test_stripe_signature_matches_an_independent_hmac() -> None:
    header = verify.sign_stripe(STRIPE_SECRET, NOW, BODY)["stripe-signature"]
    # Stripe keys the HMAC with the whole secret, whsec_ prefix included, not base64-decoded.
    expected = hmac.new(
        STRIPE_SECRET.encode(), str(NOW).encode() + b"." + BODY, hashlib.sha256
    ).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_stripe_one_of_several_signatures_matches() -> None:
    good = verify.sign_stripe(STRIPE_SECRET, NOW, BODY)["stripe-signature"].split(",")[1]
    wrong = verify.sign_stripe("old-secret", NOW, BODY)["stripe-signature"].split(",")[1]
    header = f"t={NOW},v1={wrong},v0={'a' * 64},{good},v1=zz"
    check = verify.stripe("st", now=clock())
    check(request({"stripe-signature": header}), secrets_of({"st": STRIPE_SECRET}))
    message = rejected(
        check,
        request({"stripe-signature": f"t={NOW},{wrong},v0={'a' * 64}"}),
        secrets_of({"st": STRIPE_SECRET}),
    )
    assert "signature mismatch" in message


def test_stripe_timestamp_is_part_of_the_signature() -> None:
    header = verify.sign_stripe(STRIPE_SECRET, NOW, BODY)["stripe-signature"]
    moved = header.replace(f"t={NOW}", f"t={NOW - 1}")
    message = rejected(
        verify.stripe("st", now=clock()),
        request({"stripe-signature": moved}),
        secrets_of({"st": STRIPE_SECRET}),
    )
    assert "signature mismatch" in message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("v1=" + "a" * 64, "exactly one 't='"),
        (f"t={NOW},t={NOW},v1=" + "a" * 64, "exactly one 't='"),
        (f"t={NOW}", "no 'v1=' entry"),
        (f"t={NOW},v0=" + "a" * 64, "no 'v1=' entry"),
        (f"t={NOW},v1=abc", "no 'v1=' entry"),
        ("t=soon,v1=" + "a" * 64, "not whole Unix seconds"),
        ("garbage", "exactly one 't='"),
    ],
)
def test_stripe_malformed_header(value: str, words: str) -> None:
    message = rejected(
        verify.stripe("st", now=clock()),
        request({"stripe-signature": value}),
        secrets_of({"st": STRIPE_SECRET}),
    )
    assert "malformed header 'stripe-signature'" in message
    assert words in message


# --- secrets -------------------------------------------------------------------------------------


def test_resolve_secret_from_the_mapping_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTORFLOW_SECRET_GH", "from-env")
    assert verify.resolve_secret("gh", {"gh": "from-map"}) == b"from-map"
    assert verify.resolve_secret("gh", {"gh": b"\x00bytes"}) == b"\x00bytes"


def test_resolve_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTORFLOW_SECRET_STRIPE_LIVE_2", "from-env")
    assert verify.resolve_secret("stripe-live.2", {}) == b"from-env"


def test_presets_resolve_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTORFLOW_SECRET_GITHUB_APP", RAW_SECRET)
    resolver = partial(verify.resolve_secret, secrets={})
    verify.github("github-app")(request(verify.sign_github(RAW_SECRET, BODY)), resolver)


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("gh", "ACTORFLOW_SECRET_GH"),
        ("stripe-live.2", "ACTORFLOW_SECRET_STRIPE_LIVE_2"),
        ("Ünïcode key", "ACTORFLOW_SECRET__N_CODE_KEY"),
    ],
)
def test_secret_env_var(name: str, variable: str) -> None:
    assert verify.secret_env_var(name) == variable


def test_missing_secret_names_the_secret_and_the_variable() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        verify.resolve_secret("stripe-live", {"other": RAW_SECRET}, environ={})
    message = str(info.value)
    assert "'stripe-live'" in message and "ACTORFLOW_SECRET_STRIPE_LIVE" in message
    assert RAW_SECRET not in message


def test_missing_secret_fails_the_preset_with_the_same_error() -> None:
    headers = verify.sign_github(RAW_SECRET, BODY)
    with pytest.raises(WorkflowDefinitionError, match="ACTORFLOW_SECRET_GH"):
        verify.github("gh")(request(headers), secrets_of({}))


@pytest.mark.parametrize(
    ("mapping", "environ"), [({"gh": ""}, {}), ({}, {"ACTORFLOW_SECRET_GH": ""})]
)
def test_empty_secret_is_an_error(mapping: dict[str, str], environ: dict[str, str]) -> None:
    with pytest.raises(WorkflowDefinitionError, match="'gh' is empty"):
        verify.resolve_secret("gh", mapping, environ)


@pytest.mark.parametrize("name", ["", b"gh", None])
def test_secret_name_must_be_a_non_empty_string(name: object) -> None:
    for make in (verify.github, verify.standard_webhooks, verify.stripe):
        with pytest.raises(WorkflowDefinitionError, match="non-empty str"):
            make(name)  # type: ignore[arg-type]


def test_a_secret_passed_as_the_name_is_not_echoed() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        verify.github(RAW_SECRET.encode())  # type: ignore[arg-type]
    assert RAW_SECRET not in str(info.value)


# --- no secret in any message or repr ------------------------------------------------------------


def _all_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@by_name
def test_no_error_message_contains_the_secret_or_the_expected_signature(preset: Preset) -> None:
    good = preset.sign(BODY, NOW)
    expected = good[preset.signature_header]
    stale = preset.sign(BODY, NOW - 10_000)
    cases = [
        request(good, flip_one_byte(BODY)),
        request({k: v for k, v in good.items() if k != preset.signature_header}),
        request({**good, preset.signature_header: "nonsense"}),
        *([request(stale)] if preset.timestamped else []),
        request(preset.sign(BODY, NOW), b"other body"),
    ]
    check = preset.make("hook", clock())
    secrets = secrets_of({"hook": preset.secret})
    for req in cases:
        with pytest.raises(WebhookSignatureError) as info:
            check(req, secrets)
        text = _all_text(info.value)
        assert preset.secret not in text
        assert base64.b64encode(WHSEC_KEY).decode() not in text
        assert "do-not-leak" not in text
        # Neither the expected signature nor any part of it that would help forge one.
        for fragment in expected.replace(",", " ").replace("=", " ").split():
            if len(fragment) >= 16:
                assert fragment not in text


@by_name
def test_repr_names_the_preset_and_the_secret_name_only(preset: Preset) -> None:
    check = preset.make("my-secret-name", clock())
    assert check.secret_name == "my-secret-name"
    assert repr(check).startswith(f"{preset.name}('my-secret-name'")
    assert preset.secret not in repr(check)


# --- delivery ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"x-github-delivery": "gh-1"}, "gh-1"),
        ({"webhook-id": "msg_1", "x-github-delivery": "gh-1"}, "msg_1"),
        ({"idempotency-key": "k1", "webhook-id": "msg_1"}, "k1"),
        ({"idempotency-key": "", "webhook-id": "msg_1"}, "msg_1"),
        ({"Idempotency-Key": "k2"}, "k2"),
    ],
)
def test_delivery_id(headers: dict[str, str], expected: str | None) -> None:
    assert verify.delivery_id(request(headers)) == expected


def test_presets_are_verifiers_that_name_their_secret() -> None:
    checks: list[verify.SignatureCheck] = [
        verify.standard_webhooks("a"),
        verify.github("b"),
        verify.stripe("c"),
    ]
    verifiers: list[verify.Verifier] = list(checks)
    assert [c.secret_name for c in checks] == ["a", "b", "c"]
    assert all(callable(v) for v in verifiers)
