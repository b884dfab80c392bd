"""Signature checks through the HTTP route: every preset's valid, invalid, missing and stale
signatures. A rejected request gets 401 and commits nothing."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import actorflow as af
from actorflow import verify

PREFIX = "/.well-known/workflow/v1"
GITHUB_SECRET = "gh-secret-do-not-leak"
STRIPE_SECRET = "whsec_stripe-secret-do-not-leak"
SW_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-do-not-leak").decode()
SECRETS = {"gh": GITHUB_SECRET, "stripe": STRIPE_SECRET, "sw": SW_SECRET}
BODY = b'{"id":"evt_1","type":"order.paid","amount":4200}'

pytestmark = pytest.mark.anyio


@af.workflow
async def signed(preset: str) -> str:
    if preset == "github":
        webhook = af.create_webhook(verify=af.verify.github("gh"))
    elif preset == "stripe":
        webhook = af.create_webhook(verify=af.verify.stripe("stripe"))
    else:
        webhook = af.create_webhook(verify=af.verify.standard_webhooks("sw"))
    request = await webhook
    return request.text()


def _valid(preset: str, body: bytes, at: float) -> dict[str, str]:
    if preset == "github":
        return verify.sign_github(GITHUB_SECRET, body)
    if preset == "stripe":
        return verify.sign_stripe(STRIPE_SECRET, int(at), body)
    return verify.sign_standard_webhooks(SW_SECRET, "msg_1", int(at), body)


def _signed_for_other_body(preset: str) -> dict[str, str]:
    return _valid(preset, BODY + b" ", time.time())


def _wrong_secret(preset: str) -> dict[str, str]:
    now = int(time.time())
    if preset == "github":
        return verify.sign_github("another-secret", BODY)
    if preset == "stripe":
        return verify.sign_stripe("whsec_another", now, BODY)
    return verify.sign_standard_webhooks(
        "whsec_" + base64.b64encode(b"other").decode(), "msg_1", now, BODY
    )


def _malformed(preset: str) -> dict[str, str]:
    headers = _valid(preset, BODY, time.time())
    name = next(iter(k for k in headers if "signature" in k))
    headers[name] = "garbage"
    return headers


CASES: dict[str, Callable[[str], dict[str, str]]] = {
    "signed for another body": _signed_for_other_body,
    "wrong secret": _wrong_secret,
    "malformed header": _malformed,
    "missing headers": lambda preset: {},
}


@pytest.fixture
async def rt(data_dir: Path) -> AsyncIterator[af.Runtime]:
    async with af.Runtime(data_dir, [signed], durability="none", secrets=SECRETS) as runtime:
        yield runtime


async def _start(rt: af.Runtime, wait_hooks: Any, preset: str) -> tuple[af.Run, str]:
    run = await rt.start(signed, preset)
    tokens = await wait_hooks(rt, run.run_id)
    return run, f"{PREFIX}/webhook/{tokens[0]}"


@pytest.mark.parametrize("preset", ["github", "stripe", "standard_webhooks"])
async def test_a_valid_signature_is_accepted(
    rt: af.Runtime, served: Any, wait_hooks: Any, preset: str
) -> None:
    run, url = await _start(rt, wait_hooks, preset)
    async with served(rt) as client:
        response = await client.post(url, content=BODY, headers=_valid(preset, BODY, time.time()))
    assert response.status_code == 202
    assert await run.result(timeout=10) == BODY.decode()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("preset", ["github", "stripe", "standard_webhooks"])
async def test_a_bad_signature_is_401_and_commits_nothing(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any, preset: str, case: str
) -> None:
    run, url = await _start(rt, wait_hooks, preset)
    async with served(rt) as client:
        response = await client.post(url, content=BODY, headers=CASES[case](preset))
        assert response.status_code == 401
        body = response.json()
        assert body["error"] == "WebhookSignatureError"
        for secret in SECRETS.values():
            assert secret not in response.text
        assert log_events(rt, run.run_id, "hook_received") == []
        # The webhook still takes a good request afterwards.
        good = await client.post(url, content=BODY, headers=_valid(preset, BODY, time.time()))
    assert good.status_code == 202
    assert await run.result(timeout=10) == BODY.decode()


@pytest.mark.parametrize("preset", ["stripe", "standard_webhooks"])
@pytest.mark.parametrize("skew", [-3600, 3600])
async def test_a_stale_or_future_timestamp_is_401(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any, preset: str, skew: int
) -> None:
    run, url = await _start(rt, wait_hooks, preset)
    async with served(rt) as client:
        response = await client.post(
            url, content=BODY, headers=_valid(preset, BODY, time.time() + skew)
        )
    assert response.status_code == 401
    assert response.json()["error"] == "WebhookSignatureError"
    assert log_events(rt, run.run_id, "hook_received") == []


async def test_an_unconfigured_secret_is_a_server_fault_not_a_401(
    data_dir: Path, served: Any, wait_hooks: Any, log_events: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with af.Runtime(data_dir, [signed], durability="none", secrets={}) as rt:
        run, url = await _start(rt, wait_hooks, "github")
        async with served(rt) as client:
            response = await client.post(
                url, content=BODY, headers=_valid("github", BODY, time.time())
            )
        assert response.status_code == 500
        assert response.json()["error"] == "WorkflowDefinitionError"
        assert log_events(rt, run.run_id, "hook_received") == []
    token = url.rsplit("/", 1)[1]
    assert token not in caplog.text  # the fault is logged, the token is not
    assert "webhook: internal error" in caplog.text
