"""The bearer-protected routes (resume, hook lookup, runs), /healthz and the OpenAPI document."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import actorflow as af
from actorflow.runtime.log.file_log import FileLog

SECRET = "test-resume-secret-0123456789"
AUTH = {"authorization": f"Bearer {SECRET}"}
PREFIX = "/.well-known/workflow/v1"

pytestmark = pytest.mark.anyio


@dataclass
class Decision:
    approved: bool
    by: str


Decisions = af.define_hook(Decision)


@af.workflow
async def approval(order_id: str, amount: int = 0) -> Any:
    decision = await af.create_hook(token=f"approval:{order_id}", metadata={"amount": amount})
    return {"order": order_id, "decision": decision}


@af.workflow
async def typed_approval(order_id: str) -> bool:
    decision = await Decisions.create(token=f"typed:{order_id}")
    return decision.approved


@af.workflow
async def webhook_only() -> Any:
    return await af.create_webhook()


@af.workflow
async def fails(message: str) -> None:
    raise ValueError(message)


WORKFLOWS = [approval, typed_approval, webhook_only, fails]


@pytest.fixture
async def rt(data_dir: Path) -> AsyncIterator[af.Runtime]:
    async with af.Runtime(
        data_dir, WORKFLOWS, durability="none", base_url="http://edge.test"
    ) as runtime:
        yield runtime


# -- authentication -------------------------------------------------------------------------------

BEARER_ROUTES = [
    ("POST", f"{PREFIX}/hooks/resume"),
    ("GET", f"{PREFIX}/hooks/approval:o-1"),
    ("POST", f"{PREFIX}/runs"),
    ("GET", f"{PREFIX}/runs/wrun_x"),
    ("POST", f"{PREFIX}/runs/wrun_x/cancel"),
]


@pytest.mark.parametrize(("method", "path"), BEARER_ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-secret",
        f"Bearer {SECRET}x",
        f"Bearer {SECRET[:-1]}",
        f"Basic {SECRET}",
        f"{SECRET}",
        "Bearer \u00fcn\u00efc\u00f8d\u00e9".encode(),  # raw UTF-8 bytes on the wire
        f"Bearer {SECRET}".encode() + b"\xff",
    ],
)
async def test_missing_or_wrong_bearer_token_is_401(
    rt: af.Runtime, served: Any, method: str, path: str, authorization: str | bytes | None
) -> None:
    headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    async with served(rt) as client:
        response = await client.request(
            method, path, headers=headers, content=b'{"token":"t","payload":1}'
        )
    assert response.status_code == 401
    assert response.json()["error"] == "Unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert SECRET not in response.text


async def test_the_scheme_is_case_insensitive(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        response = await client.get(
            f"{PREFIX}/runs/wrun_x", headers={"authorization": f"bearer {SECRET}"}
        )
    assert response.status_code == 404


@pytest.mark.parametrize(("method", "path"), BEARER_ROUTES)
async def test_without_a_resume_secret_the_routes_do_not_exist(
    rt: af.Runtime, served: Any, method: str, path: str
) -> None:
    async with served(rt, resume_secret=None) as client:
        response = await client.request(method, path, headers=AUTH)
        unknown = await client.get("/no/such/route")
    assert response.status_code == 404
    assert response.content == unknown.content


async def test_an_empty_resume_secret_is_refused(rt: af.Runtime) -> None:
    from actorflow.http import create_app

    with pytest.raises(af.WorkflowDefinitionError, match="resume_secret is empty"):
        create_app(rt, resume_secret="", manage_runtime=False)


# -- resume and hooks -----------------------------------------------------------------------------


async def test_resume_hook_returns_the_hook_and_the_run_gets_the_payload(
    rt: af.Runtime, served: Any, wait_hooks: Any
) -> None:
    run = await rt.start(approval, "o-1", 120)
    await wait_hooks(rt, run.run_id)
    async with served(rt) as client:
        looked_up = await client.get(f"{PREFIX}/hooks/approval:o-1", headers=AUTH)
        resumed = await client.post(
            f"{PREFIX}/hooks/resume",
            headers=AUTH,
            json={"token": "approval:o-1", "payload": {"approved": True, "by": "ana"}},
        )
    assert looked_up.status_code == 200
    assert resumed.status_code == 200
    hook = resumed.json()
    assert hook == looked_up.json()
    assert hook["token"] == "approval:o-1"
    assert hook["run_id"] == run.run_id
    assert hook["metadata"] == {"amount": 120}
    assert hook["is_webhook"] is False
    assert hook["spec_version"] == 1
    assert set(hook) == {
        "run_id", "hook_id", "token", "owner_id", "project_id", "environment", "created_at",
        "metadata", "spec_version", "is_webhook",
    }  # fmt: skip
    assert await run.result(timeout=10) == {
        "order": "o-1",
        "decision": {"approved": True, "by": "ana"},
    }


async def test_resume_with_an_idempotency_key(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(approval, "o-2")
    await wait_hooks(rt, run.run_id)
    body = {"token": "approval:o-2", "payload": {"ok": 1}, "idempotency_key": "k-1"}
    async with served(rt) as client:
        first = await client.post(f"{PREFIX}/hooks/resume", headers=AUTH, json=body)
        await run.result(timeout=10)
        again = await client.post(f"{PREFIX}/hooks/resume", headers=AUTH, json=body)
        conflict = await client.post(
            f"{PREFIX}/hooks/resume", headers=AUTH, json={**body, "payload": {"ok": 2}}
        )
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "IdempotencyKeyConflictError"
    assert len(log_events(rt, run.run_id, "hook_received")) == 1


@pytest.mark.parametrize(
    "token", ["never-issued", "approval:o-404", "a/b", "..", "ünïcødé", "x" * 10_240]
)
async def test_resume_of_an_unknown_token_is_404(rt: af.Runtime, served: Any, token: str) -> None:
    async with served(rt) as client:
        response = await client.post(
            f"{PREFIX}/hooks/resume", headers=AUTH, json={"token": token, "payload": None}
        )
    assert response.status_code == 404
    assert response.json()["error"] == "HookNotFoundError"


async def test_a_webhook_token_cannot_be_resumed_as_a_hook(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(webhook_only)
    [token] = await wait_hooks(rt, run.run_id)
    async with served(rt) as client:
        resumed = await client.post(
            f"{PREFIX}/hooks/resume", headers=AUTH, json={"token": token, "payload": 1}
        )
    assert resumed.status_code == 404
    assert log_events(rt, run.run_id, "hook_received") == []


async def test_a_typed_hook_rejecting_the_payload_is_422_with_the_problems(
    rt: af.Runtime, served: Any, wait_hooks: Any, log_events: Any
) -> None:
    run = await rt.start(typed_approval, "o-3")
    await wait_hooks(rt, run.run_id)
    async with served(rt) as client:
        rejected = await client.post(
            f"{PREFIX}/hooks/resume",
            headers=AUTH,
            json={"token": "typed:o-3", "payload": {"approved": "maybe"}},
        )
        assert rejected.status_code == 422
        body = rejected.json()
        assert body["error"] == "HookPayloadError"
        assert body["problems"]
        assert log_events(rt, run.run_id, "hook_received") == []
        accepted = await client.post(
            f"{PREFIX}/hooks/resume",
            headers=AUTH,
            json={"token": "typed:o-3", "payload": {"approved": True, "by": "ana"}},
        )
    assert accepted.status_code == 200
    assert await run.result(timeout=10) is True


@pytest.mark.parametrize(
    ("content", "content_type", "status", "error"),
    [
        (b'{"token": "approval:o-1", "payload": ', "application/json", 400, "BadRequest"),
        (b"not json at all", "application/json", 400, "BadRequest"),
        (b"\xff\xfe\x00", "application/json", 400, "BadRequest"),
        (b'["token", "payload"]', "application/json", 400, "BadRequest"),
        (b'{"payload": 1}', "application/json", 400, "BadRequest"),
        (b'{"token": "", "payload": 1}', "application/json", 400, "BadRequest"),
        (b'{"token": 5, "payload": 1}', "application/json", 400, "BadRequest"),
        (b'{"token": "approval:o-1"}', "application/json", 400, "BadRequest"),
        (
            b'{"token": "t", "payload": 1, "idempotency_key": 7}',
            "application/json",
            400,
            "BadRequest",
        ),
        (b'{"token": "t", "payload": 1e999999}', "application/json", 400, "BadRequest"),
        (b'{"token": "t", "payload": 1}', "text/plain", 415, "UnsupportedMediaType"),
        (
            b'{"token": "t", "payload": 1}',
            "application/x-www-form-urlencoded",
            415,
            "UnsupportedMediaType",
        ),
        (b"", "application/json", 400, "BadRequest"),
    ],
)
async def test_bad_resume_bodies(
    rt: af.Runtime,
    served: Any,
    wait_hooks: Any,
    log_events: Any,
    content: bytes,
    content_type: str,
    status: int,
    error: str,
) -> None:
    run = await rt.start(approval, "o-1")
    await wait_hooks(rt, run.run_id)
    async with served(rt) as client:
        response = await client.post(
            f"{PREFIX}/hooks/resume",
            headers={**AUTH, "content-type": content_type},
            content=content,
        )
    assert response.status_code == status
    assert response.json()["error"] == error
    assert set(response.json()) == {"error", "message"}
    assert log_events(rt, run.run_id, "hook_received") == []


async def test_a_json_charset_and_suffix_types_are_json(
    rt: af.Runtime, served: Any, wait_hooks: Any
) -> None:
    run = await rt.start(approval, "o-1")
    await wait_hooks(rt, run.run_id)
    async with served(rt) as client:
        response = await client.post(
            f"{PREFIX}/hooks/resume",
            headers={**AUTH, "content-type": "application/merge-patch+json; charset=utf-8"},
            content=b'{"token": "approval:o-1", "payload": 1}',
        )
    assert response.status_code == 200


async def test_an_oversized_resume_body_is_413(rt: af.Runtime, served: Any) -> None:
    async with served(rt, max_body=2048) as client:
        response = await client.post(
            f"{PREFIX}/hooks/resume",
            headers=AUTH,
            json={"token": "approval:o-1", "payload": "x" * 4096},
        )
    assert response.status_code == 413
    assert response.json()["error"] == "RequestEntityTooLarge"


async def test_get_hook_of_an_unknown_token_is_404(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        response = await client.get(f"{PREFIX}/hooks/nothing-here", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "HookNotFoundError"


# -- runs -----------------------------------------------------------------------------------------


async def test_start_inspect_and_finish_a_run(rt: af.Runtime, served: Any, wait_hooks: Any) -> None:
    async with served(rt) as client:
        started = await client.post(
            f"{PREFIX}/runs",
            headers=AUTH,
            json={"workflow": "approval", "args": ["o-9"], "kwargs": {"amount": 5}},
        )
        assert started.status_code == 201
        run_id = started.json()["run_id"]
        assert started.headers["location"] == f"{PREFIX}/runs/{run_id}"
        await wait_hooks(rt, run_id)
        waiting = (await client.get(f"{PREFIX}/runs/{run_id}", headers=AUTH)).json()
        hook_id = waiting["hooks"][0]["hook_id"]
        assert waiting == {
            "run_id": run_id,
            "workflow": "approval",
            "status": "running",
            "hooks": [{"hook_id": hook_id, "token": "approval:o-9", "is_webhook": False}],
            # The query API's RunInfo (Run.info()).
            "workflow_name": "approval",
            "created_at": waiting["created_at"],
            "started_at": waiting["started_at"],
            "completed_at": None,
            "version": None,
            "waiting_on": {
                "hooks": [
                    {
                        "token": "approval:o-9",
                        "hook_id": hook_id,
                        "is_webhook": False,
                        "since": waiting["waiting_on"]["hooks"][0]["since"],
                    }
                ],
                "sleeps": [],
                "steps": [],
            },
        }
        assert waiting["created_at"] <= waiting["started_at"]
        await client.post(
            f"{PREFIX}/hooks/resume", headers=AUTH, json={"token": "approval:o-9", "payload": "yes"}
        )
        await rt.get_run(run_id).result(timeout=10)
        done = (await client.get(f"{PREFIX}/runs/{run_id}", headers=AUTH)).json()
    assert done["status"] == "completed"
    assert done["result"] == {"order": "o-9", "decision": "yes"}
    assert done["hooks"] == []


async def test_a_run_lists_its_webhook_url(rt: af.Runtime, served: Any, wait_hooks: Any) -> None:
    run = await rt.start(webhook_only)
    [token] = await wait_hooks(rt, run.run_id)
    async with served(rt) as client:
        described = (await client.get(f"{PREFIX}/runs/{run.run_id}", headers=AUTH)).json()
    assert described["hooks"][0]["url"] == f"http://edge.test{PREFIX}/webhook/{token}"
    assert described["hooks"][0]["is_webhook"] is True


async def test_a_failed_run_reports_its_error(rt: af.Runtime, served: Any) -> None:
    run = await rt.start(fails, "boom: the order is gone")
    with pytest.raises(af.WorkflowRunFailedError):
        await run.result(timeout=10)
    async with served(rt) as client:
        described = (await client.get(f"{PREFIX}/runs/{run.run_id}", headers=AUTH)).json()
    assert described["status"] == "failed"
    assert described["error"] == {"type": "ValueError", "message": "boom: the order is gone"}
    assert "result" not in described


async def test_cancel_a_run(rt: af.Runtime, served: Any, wait_hooks: Any) -> None:
    run = await rt.start(approval, "o-c")
    await wait_hooks(rt, run.run_id)
    async with served(rt) as client:
        cancelled = await client.post(
            f"{PREFIX}/runs/{run.run_id}/cancel", headers=AUTH, json={"reason": "customer left"}
        )
        again = await client.post(f"{PREFIX}/runs/{run.run_id}/cancel", headers=AUTH)
        resume = await client.post(
            f"{PREFIX}/hooks/resume", headers=AUTH, json={"token": "approval:o-c", "payload": 1}
        )
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["type"] == "WorkflowRunCancelledError"
    assert "customer left" in cancelled.json()["error"]["message"]
    assert again.status_code == 200  # a no-op once ended
    assert resume.status_code == 404  # its hooks went with it


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"workflow": "no_such_workflow"}, 400, "WorkflowDefinitionError"),
        ({"workflow": ""}, 400, "BadRequest"),
        ({"args": []}, 400, "BadRequest"),
        ({"workflow": "approval", "args": {"a": 1}}, 400, "BadRequest"),
        ({"workflow": "approval", "kwargs": []}, 400, "BadRequest"),
    ],
)
async def test_bad_start_requests(
    rt: af.Runtime, served: Any, body: Any, status: int, error: str
) -> None:
    async with served(rt) as client:
        response = await client.post(f"{PREFIX}/runs", headers=AUTH, json=body)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert rt.state.runs == {}


async def test_unknown_runs_are_404(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        read = await client.get(f"{PREFIX}/runs/wrun_missing", headers=AUTH)
        cancel = await client.post(f"{PREFIX}/runs/wrun_missing/cancel", headers=AUTH)
    for response in (read, cancel):
        assert response.status_code == 404
        assert response.json()["error"] == "WorkflowRunNotFoundError"


async def test_an_overloaded_runtime_answers_503_with_retry_after(
    data_dir: Path, served: Any
) -> None:
    async with af.Runtime(data_dir, WORKFLOWS, durability="none", max_backlog=0) as rt:
        async with served(rt) as client:
            response = await client.post(
                f"{PREFIX}/runs", headers=AUTH, json={"workflow": "approval", "args": ["o"]}
            )
    assert response.status_code == 503
    assert response.json()["error"] == "OverloadedError"
    assert response.headers["retry-after"] == "1"


# -- health and the document ----------------------------------------------------------------------


async def test_healthz_reports_a_failed_log_writer(data_dir: Path, served: Any) -> None:
    """A real fault at the boundary FileLog exposes for it: fsync fails with EIO."""
    failing = False

    def fsync(fd: int) -> None:
        if failing:
            raise OSError(errno.EIO, "injected: I/O error")
        os.fsync(fd)

    store = FileLog(data_dir / "log", fsync=fsync)
    async with af.Runtime(data_dir, WORKFLOWS, store=store) as rt:
        async with served(rt) as client:
            healthy = await client.get("/healthz")
            failing = True
            start = await client.post(
                f"{PREFIX}/runs", headers=AUTH, json={"workflow": "approval", "args": ["o"]}
            )
            broken = await client.get("/healthz")
            later = await client.post(
                f"{PREFIX}/runs", headers=AUTH, json={"workflow": "approval", "args": ["o"]}
            )
    assert healthy.status_code == 200
    body = healthy.json()
    assert body.pop("retention")["retention_seconds"] == 7 * 86400  # the default window
    assert body == {"status": "ok", "log_backlog": 0}
    assert start.status_code == 503
    assert start.json()["error"] == "LogWriteError"
    assert broken.status_code == 503
    assert broken.json()["error"] == "LogWriteError"
    assert later.status_code == 503


@pytest.mark.parametrize("secret", [SECRET, None])
async def test_the_openapi_document_lists_the_served_routes(
    rt: af.Runtime, served: Any, secret: str | None
) -> None:
    async with served(rt, resume_secret=secret) as client:
        response = await client.get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    assert f"{PREFIX}/webhook/{{token}}" in paths
    assert "/healthz" in paths
    bearer = {f"{PREFIX}/hooks/resume", f"{PREFIX}/runs", f"{PREFIX}/runs/{{run_id}}"}
    assert bearer <= paths if secret else not (bearer & paths)


async def test_unknown_routes_and_methods_are_json(rt: af.Runtime, served: Any) -> None:
    async with served(rt) as client:
        missing = await client.get("/nothing/here")
        wrong_method = await client.delete("/healthz")
    assert missing.status_code == 404
    assert missing.json()["error"] == "NotFound"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "MethodNotAllowed"
    assert "GET" in wrong_method.headers["allow"]
