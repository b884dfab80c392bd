"""The public API surface: a name that appears or vanishes must be a deliberate change.

When this test fails after you added or removed a public name on purpose, update the expected
set here in the same commit (and the SPEC or the changelog, if the name is part of the contract).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import wait_for_hook

import actorflow as af
import actorflow.api
import actorflow.errors

EXPECTED_ALL = {
    # errors
    "DecryptionError",
    "FatalError",
    "HookConflictError",
    "HookError",
    "HookNotFoundError",
    "HookPayloadError",
    "HookTimeoutError",
    "IdempotencyKeyConflictError",
    "InvalidQueryError",
    "LogCorruptedError",
    "LogFormatError",
    "LeaseLostError",
    "LogWriteError",
    "NonDeterministicAwaitError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ReplayDivergenceError",
    "RetryableError",
    "RunExpiredError",
    "SerializationError",
    "StorageError",
    "WebhookSignatureError",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowRunCancelledError",
    "WorkflowRunError",
    "WorkflowRunFailedError",
    "WorkflowRunNotFoundError",
    # records and the runtime
    "EventRecord",
    "Hook",
    "HookSummary",
    "HookWait",
    "Page",
    "RunInfo",
    "RunSummary",
    "SleepWait",
    "StepWait",
    "WaitingOn",
    "Readable",
    "Request",
    "Response",
    "Run",
    "Runtime",
    "StepMetadata",
    "TypedHook",
    "WorkflowMetadata",
    # deploying changes (issue 17)
    "Parking",
    "RetryReport",
    "deprecate_patch",
    "patched",
    "Writable",
    # submodules
    "api",
    "verify",
    # inside a workflow
    "create_hook",
    "create_webhook",
    "define_hook",
    "first",
    "gather",
    "get_step_metadata",
    "get_workflow_metadata",
    "get_writable",
    "now",
    "random",
    "sleep",
    "step",
    "uuid4",
    "workflow",
}

#: Every error the SPEC names (sections 2, 3 and 6), by its exact name.
SPEC_ERRORS = {
    "WorkflowError",
    "FatalError",
    "RetryableError",
    "HookConflictError",
    "HookTimeoutError",
    "HookPayloadError",
    "HookNotFoundError",
    "SerializationError",
    "WorkflowRunNotFoundError",
    "WorkflowRunFailedError",
    "WorkflowRunCancelledError",
    "ReplayDivergenceError",
    "DecryptionError",
}


def test_top_level_all_is_exactly_the_expected_set() -> None:
    assert set(af.__all__) == EXPECTED_ALL
    assert len(af.__all__) == len(set(af.__all__)), "a name is listed twice"


def test_every_listed_name_exists() -> None:
    for name in af.__all__:
        assert hasattr(af, name), name


def test_api_module_surface() -> None:
    expected = {
        "get_hook_by_token",
        "get_run",
        "list_events",
        "list_hooks",
        "list_runs",
        "resume_hook",
        "resume_webhook",
        "start",
    }
    assert set(actorflow.api.__all__) == expected
    for name in expected:
        assert inspect.isfunction(getattr(actorflow.api, name)), name
        # The same operation exists on Runtime.
        assert callable(getattr(af.Runtime, name)), name


@pytest.mark.parametrize("name", sorted(SPEC_ERRORS))
def test_spec_errors_exist_and_derive_from_workflow_error(name: str) -> None:
    cls = getattr(af, name)
    assert isinstance(cls, type) and issubclass(cls, af.WorkflowError)
    assert getattr(actorflow.errors, name) is cls


def test_every_exported_error_derives_from_workflow_error() -> None:
    for name in af.__all__:
        value = getattr(af, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, af.WorkflowError), name
    assert set(actorflow.errors.__all__) <= set(af.__all__)


def test_error_attributes_callers_match_on() -> None:
    assert af.HookNotFoundError("t").token == "t"
    conflict = af.HookConflictError("t", "wrun_1")
    assert (conflict.token, conflict.conflicting_run_id) == ("t", "wrun_1")
    cause = ValueError("boom")
    failed = af.WorkflowRunFailedError("wrun_1", cause)
    assert failed.cause is cause and failed.run_id == "wrun_1"
    assert af.WorkflowRunCancelledError("wrun_1", "why").reason == "why"
    assert af.RetryableError("later", retry_after="5m").retry_after == "5m"
    assert isinstance(af.NonDeterministicAwaitError(object()), af.WorkflowDefinitionError)
    assert issubclass(af.HookNotFoundError, af.HookError)


def test_public_names_have_docstrings() -> None:
    for name in af.__all__:
        value = getattr(af, name)
        if callable(value) or inspect.ismodule(value):
            assert inspect.getdoc(value), f"af.{name} has no docstring"


# -- actorflow.api acts on the current runtime ---------------------------------------------------


@af.workflow
async def api_flow(tag: str) -> Any:
    return await af.create_hook(token=f"api:{tag}", metadata={"tag": tag})


@pytest.mark.anyio
async def test_api_functions_act_on_the_current_runtime(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[api_flow]) as rt:
        run = await af.api.start(api_flow, "u")
        assert isinstance(run, af.Run)
        await wait_for_hook(rt, "api:u")
        hook = await af.api.get_hook_by_token("api:u")
        assert isinstance(hook, af.Hook) and hook.metadata == {"tag": "u"}
        assert await af.api.resume_hook("api:u", "via api") == hook
        assert await af.api.get_run(run.run_id).result() == "via api"
        by_name = await af.api.start("api_flow", "v")
        await wait_for_hook(rt, "api:v")
        await af.api.resume_hook("api:v", 2)
        assert await by_name.result() == 2
        with pytest.raises(af.WorkflowDefinitionError):
            await af.api.start("no_such_workflow")


@pytest.mark.anyio
async def test_api_functions_outside_a_runtime_say_so() -> None:
    with pytest.raises(af.WorkflowError, match="Runtime"):
        af.api.get_run("wrun_x")


# -- definitions and configuration are checked early ---------------------------------------------


def test_decorators_refuse_what_they_cannot_run() -> None:
    def not_async() -> None:
        pass

    with pytest.raises(af.WorkflowDefinitionError):
        af.workflow(not_async)  # type: ignore[arg-type]
    with pytest.raises(af.WorkflowDefinitionError):
        af.step(not_async)  # type: ignore[arg-type]
    with pytest.raises(af.WorkflowDefinitionError):
        af.step(max_retries=-1)


def test_two_different_steps_cannot_share_a_name() -> None:
    @af.step(name="tests.api_surface.shared_name")
    async def one() -> int:
        return 1

    with pytest.raises(af.WorkflowDefinitionError, match="shared_name"):

        @af.step(name="tests.api_surface.shared_name")
        async def two() -> int:
            return 2


def test_runtime_options_are_checked() -> None:
    with pytest.raises(af.WorkflowDefinitionError):
        af.Runtime(durability="sometimes")  # type: ignore[arg-type]

    @af.workflow(name="dup")
    async def a() -> None:
        pass

    @af.workflow(name="dup")
    async def b() -> None:
        pass

    with pytest.raises(af.WorkflowDefinitionError, match="dup"):
        af.Runtime(workflows=[a, b])


@pytest.mark.anyio
async def test_an_error_in_the_runtime_block_propagates_unwrapped(tmp_path: Path) -> None:
    with pytest.raises(af.HookNotFoundError):
        async with af.Runtime(tmp_path) as rt:
            await rt.resume_hook("nobody", 1)
