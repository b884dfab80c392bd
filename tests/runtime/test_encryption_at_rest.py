"""Encryption at rest (SPEC section 6), end to end: a real ``Runtime`` on real files.

The unit tests of the envelope format live in ``test_crypto.py``; these prove what a user relies
on: no user value reaches the disk in the clear, what inspection needs stays readable without keys,
damaged or moved ciphertext is refused with ``DecryptionError`` naming the event, keys rotate, and a
wrong or missing key stops the runtime at start instead of handing garbage to a workflow.
"""

from __future__ import annotations

import base64
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from tests.conftest import (
    RecordingStore,
    copy_prefix,
    read_events,
    read_records,
    wait_for_hook,
    wait_until,
)

import actorflow as af
from actorflow.runtime.core.events import USER_VALUE_KEYS, Event
from actorflow.runtime.crypto import ENV_VAR, KeyRing, generate_key, key_id, parse_key
from actorflow.runtime.log.file_log import FileLog
from actorflow.runtime.payloads import Payloads

pytestmark = pytest.mark.anyio

KEY1 = generate_key()
KEY2 = generate_key()
KEY3 = generate_key()
KID1 = key_id(parse_key(KEY1))
KID2 = key_id(parse_key(KEY2))
KID3 = key_id(parse_key(KEY3))

# One marker per place a user value can take, so a leak says where it came from.
MK_INPUT = "mk-run-input-5d1c0e"
MK_OUTPUT = "mk-run-output-8a7f21"
MK_STEP_ARG = "mk-step-arg-29be4d"
MK_STEP_RESULT = "mk-step-result-c04a93"
MK_STEP_ERROR = "mk-step-error-71f0aa"
MK_RETRY_ERROR = "mk-retry-error-0b5e6c"
MK_HOOK_META = "mk-hook-metadata-e3d952"
MK_HOOK_PAYLOAD = "mk-hook-payload-44c1b8"
MK_WEBHOOK_BODY = "mk-webhook-body-9f2d07"
MK_WEBHOOK_HEADER = "mk-webhook-header-16ab3e"
MK_WEBHOOK_QUERY = "mk-webhook-query-d8e5c2"
MK_RESPONSE = "mk-webhook-response-3c9a4f"
MK_RUN_ERROR = "mk-run-error-a6b0d1"
MARKERS = [
    MK_INPUT, MK_OUTPUT, MK_STEP_ARG, MK_STEP_RESULT, MK_STEP_ERROR, MK_RETRY_ERROR,
    MK_HOOK_META, MK_HOOK_PAYLOAD, MK_WEBHOOK_BODY, MK_WEBHOOK_HEADER, MK_WEBHOOK_QUERY,
    MK_RESPONSE, MK_RUN_ERROR,
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A key in the developer's environment would silently turn encryption on for "off" runtimes.
    monkeypatch.delenv(ENV_VAR, raising=False)


# -- helpers ---------------------------------------------------------------------------------


def data_bytes(data_dir: Path) -> bytes:
    """Every byte of every file under the data directory."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


def spellings(marker: str) -> list[bytes]:
    """How ``marker`` can appear in a record: as text, or inside base64 (``$bytes``) at any
    alignment, in either alphabet."""
    raw = marker.encode()
    forms = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        # Skip the group mixed with the prefix and the last, partial one: what is left is the
        # same wherever the marker sits in a longer value with this alignment.
        whole = (
            encoded[4 : 4 * ((shift + len(raw)) // 3)] if shift else encoded[: 4 * (len(raw) // 3)]
        )
        forms += [whole, whole.replace(b"+", b"-").replace(b"/", b"_")]
    return forms


def leaks(marker: str, blob: bytes) -> bool:
    return any(form in blob for form in spellings(marker))


def positions(log: Path) -> list[int]:
    store = FileLog(log, durability="none")
    try:
        return [position for position, _ in store.scan()]
    finally:
        store.close()


def rewrite_in_place(log: Path, position: int, payload: bytes) -> None:
    """Replace one record's payload by another of the same length, with a valid CRC.

    The frame is ``u32 crc | u32 length | payload`` (crc = CRC-32 of length and payload) at
    ``position & (2**40 - 1)`` in segment ``position >> 40``, whose sequence is its top bits
    above 12 (the low 12 are the compaction generation, 0 here; see ``file_log.py``).
    """
    segment, offset = position >> 52, position & ((1 << 40) - 1)
    path = log / f"{segment:020d}.log"
    with path.open("r+b") as f:
        f.seek(offset)
        crc, length = struct.unpack("<II", f.read(8))
        old = f.read(length)
        assert zlib.crc32(struct.pack("<I", length) + old) == crc, "not a frame: format changed?"
        assert len(payload) == length
        f.seek(offset)
        f.write(struct.pack("<II", zlib.crc32(struct.pack("<I", length) + payload), length))
        f.write(payload)


def envelope_kid(stored: Any) -> str:
    assert KeyRing.is_envelope(stored), stored
    return stored["$enc"].split(".")[1]


def user_values(event: Event) -> dict[str, Any]:
    return {k: v for k, v in event.data.items() if k in USER_VALUE_KEYS}


async def webhook_token(rt: af.Runtime, run_id: str) -> str:
    def found() -> str | None:
        for token, entry in rt.state.tokens.items():
            if entry.run_id == run_id and entry.webhook is not None:
                return token
        return None

    await wait_until(lambda: found() is not None)
    token = found()
    assert token is not None
    return token


# -- workflows -------------------------------------------------------------------------------


@af.step
async def enc_step_result(arg: str) -> dict[str, Any]:
    return {"arg_length": len(arg), "secret": MK_STEP_RESULT}


@af.step(max_retries=0)
async def enc_step_fails() -> None:
    raise af.FatalError(MK_STEP_ERROR)


@af.step(max_retries=2)
async def enc_step_flaky() -> str:
    if af.get_step_metadata().attempt == 1:
        raise af.RetryableError(MK_RETRY_ERROR, retry_after=0)
    return "steady"


@af.workflow(name="enc_everything")
async def everything(given: dict[str, str]) -> dict[str, Any]:
    """Puts a marker in every kind of user value the log holds."""
    hook = af.create_hook(token="enc-everything", metadata={"note": MK_HOOK_META})
    webhook = af.create_webhook(respond_with="manual")
    stepped = await enc_step_result(MK_STEP_ARG)
    try:
        await enc_step_fails()
        caught = "nothing"
    except af.FatalError as exc:
        caught = "caught" if str(exc) == MK_STEP_ERROR else f"wrong: {exc}"
    flaky = await enc_step_flaky()
    payload = await hook
    request = await webhook
    await request.respond_with(af.Response(200, MK_RESPONSE.encode()))
    return {
        "given": given == {"secret": MK_INPUT},
        "out": MK_OUTPUT,
        "step": stepped,
        "caught": caught,
        "flaky": flaky,
        "payload": payload,
        "body": request.text(),
        "header": request.header("x-secret"),
        "query": request.query,
    }


@af.workflow(name="enc_fails")
async def enc_fails() -> None:
    raise ValueError(MK_RUN_ERROR)


async def drive_everything(rt: af.Runtime) -> tuple[str, str, dict[str, Any]]:
    """Run ``everything`` and ``enc_fails`` to their ends; their run ids and the first's result."""
    run = await rt.start(everything, {"secret": MK_INPUT})
    await wait_for_hook(rt, "enc-everything")
    token = await webhook_token(rt, run.run_id)
    hook = await rt.get_hook_by_token("enc-everything")
    assert hook.metadata == {"note": MK_HOOK_META}
    await rt.resume_hook("enc-everything", {"secret": MK_HOOK_PAYLOAD})
    request = af.Request(
        method="POST",
        url=f"http://127.0.0.1/.well-known/workflow/v1/webhook/{token}?q={MK_WEBHOOK_QUERY}",
        headers={"x-secret": MK_WEBHOOK_HEADER, "content-type": "text/plain"},
        body=MK_WEBHOOK_BODY.encode(),
    )
    with anyio.fail_after(30):
        response = await rt.resume_webhook(token, request)
        assert response.status == 200 and response.body_bytes == MK_RESPONSE.encode()
        result = await run.result()
        failing = await rt.start(enc_fails)
        with pytest.raises(af.WorkflowRunFailedError) as info:
            await failing.result()
    assert isinstance(info.value.cause, ValueError) and str(info.value.cause) == MK_RUN_ERROR
    return run.run_id, failing.run_id, result


EXPECTED_RESULT = {
    "given": True,
    "out": MK_OUTPUT,
    "step": {"arg_length": len(MK_STEP_ARG), "secret": MK_STEP_RESULT},
    "caught": "caught",
    "flaky": "steady",
    "payload": {"secret": MK_HOOK_PAYLOAD},
    "body": MK_WEBHOOK_BODY,
    "header": MK_WEBHOOK_HEADER,
    "query": {"q": MK_WEBHOOK_QUERY},
}


# -- no user value on disk in the clear ------------------------------------------------------


async def test_markers_are_on_disk_in_the_clear_without_a_key(tmp_path: Path) -> None:
    """The control for the next test: the marker search finds every marker when nothing is
    encrypted, so finding none there means something."""
    async with af.Runtime(tmp_path, workflows=[everything, enc_fails]) as rt:
        _, _, result = await drive_everything(rt)
    assert result == EXPECTED_RESULT
    blob = data_bytes(tmp_path)
    assert [m for m in MARKERS if not leaks(m, blob)] == []


async def test_no_marker_reaches_the_disk_with_encryption_on(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[everything, enc_fails], encryption_key=KEY1) as rt:
        run_id, failed_id, result = await drive_everything(rt)
    assert result == EXPECTED_RESULT
    blob = data_bytes(tmp_path)
    assert [m for m in MARKERS if leaks(m, blob)] == []

    # Inspection without keys: ids, types, names, times and statuses are plain.
    events = read_events(tmp_path / "log")
    kinds = [e.type for e in events if e.run_id == run_id]
    for kind in ("run_created", "run_started", "step_started", "step_retrying", "step_completed",
                 "step_failed", "hook_created", "hook_received", "webhook_responded",
                 "run_completed"):  # fmt: skip
        assert kind in kinds
    assert [e.type for e in events if e.run_id == failed_id][-1] == "run_failed"
    created = next(e for e in events if e.run_id == run_id and e.type == "run_created")
    assert created.data["workflow"] == "enc_everything"
    assert created.event_id.startswith("evnt_") and run_id.startswith("wrun_")
    assert isinstance(created.created_at, float)
    names = {e.data["name"] for e in events if e.type == "step_started"}
    assert {enc_step_result.name, enc_step_fails.name, enc_step_flaky.name} <= names
    tokens = {e.data["token"] for e in events if e.type == "hook_created"}
    assert "enc-everything" in tokens
    assert all(e.correlation_id.startswith("step_") for e in events
               if e.type.startswith("step_"))  # fmt: skip
    # ... and every user value is an envelope under the configured key.
    encrypted = [(e.type, k, v) for e in events for k, v in user_values(e).items()]
    assert {kind for kind, _, _ in encrypted} >= {
        "run_created", "run_completed", "run_failed", "step_started", "step_completed",
        "step_failed", "step_retrying", "hook_created", "hook_received", "webhook_responded",
    }  # fmt: skip
    assert all(envelope_kid(v) == KID1 for _, _, v in encrypted)

    # The runtime reads it all back with the key.
    async with af.Runtime(tmp_path, workflows=[everything, enc_fails], encryption_key=KEY1) as rt:
        assert await rt.get_run(run_id).result() == EXPECTED_RESULT
        with pytest.raises(af.WorkflowRunFailedError) as info:
            await rt.get_run(failed_id).result()
        assert str(info.value.cause) == MK_RUN_ERROR


# -- a flipped byte is refused, naming the event ---------------------------------------------


@af.step
async def enc_tally(tag: str) -> dict[str, Any]:
    return {"tag": tag, "secret": MK_STEP_RESULT}


@af.workflow(name="enc_two_hooks")
async def two_hooks(tag: str) -> list[Any]:
    """A step, then two hooks in turn: stopped after the first, its history holds one of each."""
    tally = await enc_tally(tag)
    first = af.create_hook(token=f"first:{tag}")
    a = await first
    second = af.create_hook(token=f"second:{tag}")
    b = await second
    return [tally, a, b]


async def run_to_second_hook(rt: af.Runtime, tag: str) -> str:
    run = await rt.start(two_hooks, tag)
    await wait_for_hook(rt, f"first:{tag}")
    await rt.resume_hook(f"first:{tag}", {"secret": MK_HOOK_PAYLOAD})
    await wait_for_hook(rt, f"second:{tag}")
    return run.run_id


def flip_in_envelope(record: bytes, how: str) -> bytes:
    """``record`` with one byte changed in the middle of its (first) envelope's ciphertext."""
    start = record.index(b'"$enc":"1.') + len(b'"$enc":"1.') + 17  # past "<kid>."
    end = record.index(b'"', start)
    at = (start + end) // 2
    old = record[at]
    if how == "xor":  # the literal bit flip: may leave the base64 alphabet
        new = old ^ 0x01
    else:  # another base64url character: well-formed, so only the GCM tag can notice
        new = ord("A") if old != ord("A") else ord("B")
    return record[:at] + bytes([new]) + record[at + 1 :]


def tamper(log: Path, choose: Any, how: str) -> Event:
    """Flip a byte in the encrypted value of the first event ``choose`` accepts; that event."""
    payloads = Payloads(None)
    for position, record in zip(positions(log), read_records(log), strict=True):
        event = payloads.decode_plain(record, position)
        if choose(event):
            rewrite_in_place(log, position, flip_in_envelope(record, how))
            return event
    raise AssertionError("no such event")


@pytest.mark.parametrize("how", ["substitute", "xor"])
async def test_flipped_byte_in_a_result_fails_result_naming_the_event(
    tmp_path: Path, how: str
) -> None:
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        run_id = await run_to_second_hook(rt, "t1")
        await rt.resume_hook("second:t1", "last")
        await rt.get_run(run_id).result()
    event = tamper(tmp_path / "log", lambda e: e.type == "run_completed", how)
    # The framing is intact: the store opens without complaint; only decryption notices.
    assert len(read_records(tmp_path / "log")) == len(positions(tmp_path / "log"))
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        assert await rt.get_run(run_id).status() == "completed"
        with pytest.raises(af.DecryptionError) as info:
            await rt.get_run(run_id).result()
    message = str(info.value)
    assert event.event_id in message and "run_completed" in message and run_id in message
    if how == "substitute":
        assert "authentication failed" in message


@pytest.mark.parametrize("kind", ["step_completed", "hook_received"])
async def test_flipped_byte_in_a_history_fails_the_rebuild_naming_the_event(
    tmp_path: Path, kind: str
) -> None:
    """A run that must replay a damaged event fails with ``DecryptionError`` as its cause; its
    workflow never sees garbage, and the other runs are unharmed."""
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        damaged = await run_to_second_hook(rt, "t2")
        healthy = await run_to_second_hook(rt, "t3")
    event = tamper(tmp_path / "log", lambda e: e.run_id == damaged and e.type == kind, "substitute")
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        with anyio.fail_after(30):
            with pytest.raises(af.WorkflowRunFailedError) as info:
                await rt.get_run(damaged).result()
            cause = info.value.cause
            assert isinstance(cause, af.DecryptionError)
            assert event.event_id in str(cause) and kind in str(cause)
            await rt.resume_hook("second:t3", "fine")
            tally, first, second = await rt.get_run(healthy).result()
    assert tally == {"tag": "t3", "secret": MK_STEP_RESULT}
    assert (first, second) == ({"secret": MK_HOOK_PAYLOAD}, "fine")
    # The failure was recorded encrypted, like any error.
    failed = [e for e in read_events(tmp_path / "log") if e.run_id == damaged][-1]
    assert failed.type == "run_failed" and envelope_kid(failed.data["error"]) == KID1


async def test_flipped_byte_in_the_input_checked_at_start_stops_the_start(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        await run_to_second_hook(rt, "t4")
    event = tamper(tmp_path / "log", lambda e: e.type == "run_created", "substitute")
    with pytest.raises(af.DecryptionError) as info:
        async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1):
            pass
    assert event.event_id in str(info.value) and "run_created" in str(info.value)


# -- a ciphertext moved to another event or run fails to decrypt -----------------------------


@af.workflow(name="enc_two_steps")
async def two_steps(tag: str) -> list[Any]:
    return [await enc_tally(f"{tag}-a"), await enc_tally(f"{tag}-b")]


def rewritten(records: list[bytes], edits: dict[int, tuple[str, Any]]) -> list[bytes]:
    """``records`` with ``data[key] = value`` set in the records at the given indexes."""
    out = list(records)
    for index, (key, value) in edits.items():
        fields = orjson.loads(out[index])
        fields[5][key] = value
        out[index] = orjson.dumps(fields)
    return out


async def two_completed_runs(data_dir: Path) -> tuple[str, str, list[Event]]:
    async with af.Runtime(data_dir, workflows=[two_steps], encryption_key=KEY1) as rt:
        first = await rt.start(two_steps, "x")
        second = await rt.start(two_steps, "y")
        await first.result()
        await second.result()
    return first.run_id, second.run_id, read_events(data_dir / "log")


def index_of(events: list[Event], run_id: str, kind: str, nth: int = 0) -> int:
    return [i for i, e in enumerate(events) if e.run_id == run_id and e.type == kind][nth]


@pytest.mark.parametrize("source", ["other_run", "other_event_type"])
async def test_result_moved_from_elsewhere_fails_to_decrypt(tmp_path: Path, source: str) -> None:
    a, b, events = await two_completed_runs(tmp_path / "original")
    target = index_of(events, a, "run_completed")
    if source == "other_run":  # same event type, same (absent) correlation id, other run
        moved = events[index_of(events, b, "run_completed")].data["result"]
    else:  # same run, other event type
        moved = events[index_of(events, a, "run_created")].data["input"]
    records = rewritten(read_records(tmp_path / "original" / "log"), {target: ("result", moved)})
    copy_prefix(records, len(records), tmp_path / "moved" / "log")
    async with af.Runtime(tmp_path / "moved", workflows=[two_steps], encryption_key=KEY1) as rt:
        with pytest.raises(af.DecryptionError) as info:
            await rt.get_run(a).result()
        assert events[target].event_id in str(info.value)
        assert "moved to another event or run" in str(info.value)
        # Run b's own result still reads: only the moved value is refused.
        assert [r["tag"] for r in await rt.get_run(b).result()] == ["y-a", "y-b"]


async def test_step_result_moved_to_another_step_fails_to_decrypt(tmp_path: Path) -> None:
    """Same run, same event type, other correlation id (another step)."""
    a, _, events = await two_completed_runs(tmp_path / "original")
    first, second = (index_of(events, a, "step_completed", n) for n in (0, 1))
    records = rewritten(
        read_records(tmp_path / "original" / "log"),
        {second: ("result", events[first].data["result"])},
    )
    payloads = Payloads(KeyRing([KEY1]))
    refused = []
    for index, record in enumerate(records):
        try:
            payloads.decode(record, index)
        except af.DecryptionError as exc:
            refused.append((index, str(exc)))
    assert [index for index, _ in refused] == [second]
    assert events[second].event_id in refused[0][1]


# -- key rotation ----------------------------------------------------------------------------


def kids_of(records: list[bytes]) -> list[str]:
    """The key id of every envelope in ``records``, in order."""
    payloads = Payloads(None)
    return [
        envelope_kid(value)
        for index, record in enumerate(records)
        for value in user_values(payloads.decode_plain(record, index)).values()
    ]


@pytest.mark.parametrize("spelling", ["list", "commas", "environment"])
async def test_rotation_reads_old_records_and_writes_new_ones_with_the_new_key(
    tmp_path: Path, spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with af.Runtime(tmp_path, workflows=[two_hooks, two_steps], encryption_key=KEY1) as rt:
        done = await rt.start(two_steps, "old")
        await done.result()
        waiting = await run_to_second_hook(rt, "rot")
    written_under_1 = len(read_records(tmp_path / "log"))

    rotated: Any = {"list": [KEY2, KEY1], "commas": f"{KEY2}, {KEY1}", "environment": None}
    if spelling == "environment":
        monkeypatch.setenv(ENV_VAR, f"{KEY2},{KEY1}")
    async with af.Runtime(
        tmp_path, workflows=[two_hooks, two_steps], encryption_key=rotated[spelling]
    ) as rt:
        assert [r["tag"] for r in await rt.get_run(done.run_id).result()] == ["old-a", "old-b"]
        # The waiting run is rebuilt from records under key 1, then moves on under key 2.
        await rt.resume_hook("second:rot", "after rotation")
        tally, first, second = await rt.get_run(waiting).result()
        assert (first, second) == ({"secret": MK_HOOK_PAYLOAD}, "after rotation")
        fresh = await rt.start(two_steps, "new")
        await fresh.result()
    monkeypatch.delenv(ENV_VAR, raising=False)

    kids = kids_of(read_records(tmp_path / "log"))
    old = kids_of(read_records(tmp_path / "log")[:written_under_1])
    assert set(old) == {KID1} and kids[: len(old)] == old
    assert set(kids[len(old) :]) == {KID2}

    # Both keys are still needed: each one alone is refused at start, naming the missing key.
    # (Each attempt on its own copy: see test_refused_start_lets_go_of_the_log_directory.)
    for alone, missing in ((KEY2, KID1), (KEY1, KID2)):
        copy = tmp_path / f"copy-{missing}"
        shutil.copytree(tmp_path / "log", copy / "log")
        with pytest.raises(af.DecryptionError) as info:
            async with af.Runtime(copy, workflows=[two_hooks, two_steps], encryption_key=alone):
                pytest.fail("started without a key the log needs")
        assert f"key {missing} is not configured" in str(info.value)


async def test_key_dropped_after_rotation_fails_at_start_not_in_a_run(tmp_path: Path) -> None:
    """A run's history holds values under both keys, but no ``run_created`` is under the new
    one: dropping the new key must still be refused at start. Otherwise the run cannot be
    rebuilt, is failed for good (``run_failed`` appended) by a configuration mistake, and putting
    the key back cannot save it."""
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        run = await rt.start(two_hooks, "drop")
        await wait_for_hook(rt, "first:drop")
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=[KEY2, KEY1]) as rt:
        await rt.resume_hook("first:drop", "under key 2")
        await wait_for_hook(rt, "second:drop")
    before = data_bytes(tmp_path / "log")
    attempt = tmp_path / "attempt"
    shutil.copytree(tmp_path / "log", attempt / "log")
    try:
        with pytest.raises(af.DecryptionError) as info:
            async with af.Runtime(attempt, workflows=[two_hooks], encryption_key=KEY1) as rt:
                with anyio.fail_after(30):
                    await rt.get_run(run.run_id).wait()
        assert f"key {KID2} is not configured" in str(info.value)
    finally:
        # What the attempt left, whatever it did: with the key back, the run must go on.
        after = tmp_path / "after"
        shutil.copytree(attempt / "log", after / "log")
    assert data_bytes(after / "log") == before
    async with af.Runtime(after, workflows=[two_hooks], encryption_key=[KEY2, KEY1]) as rt:
        await rt.resume_hook("second:drop", "saved")
        assert (await rt.get_run(run.run_id).result())[1:] == ["under key 2", "saved"]


# -- a wrong or missing key stops the start --------------------------------------------------


@pytest.mark.parametrize("key", ["wrong", "none", "wrong_ring"])
async def test_wrong_or_missing_key_is_refused_at_start(tmp_path: Path, key: str) -> None:
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        run_id = await run_to_second_hook(rt, "w")
    before = data_bytes(tmp_path / "log")
    configured: Any = {"wrong": KEY2, "none": None, "wrong_ring": [KEY2, KEY3]}[key]
    with pytest.raises(af.DecryptionError) as info:
        async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=configured):
            pytest.fail("started with a key that cannot read the log")
    message = str(info.value)
    assert run_id in message and "run_created" in message
    if key == "none":
        assert "no encryption key is configured" in message and ENV_VAR in message
    else:
        assert f"key {KID1} is not configured" in message
        assert KEY1 not in message and KEY2 not in message  # ids, never key material
    # Nothing written, nothing truncated.
    assert data_bytes(tmp_path / "log") == before


async def test_refused_start_lets_go_of_the_log_directory(tmp_path: Path) -> None:
    """The operator fixes the key and starts again, in the same process (an embedding app)."""
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        run_id = await run_to_second_hook(rt, "lock")
    with pytest.raises(af.DecryptionError):
        async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY2):
            pass
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        await rt.resume_hook("second:lock", "fixed")
        assert (await rt.get_run(run_id).result())[2] == "fixed"


async def test_plain_log_stays_readable_when_encryption_is_turned_on(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[two_hooks]) as rt:
        run_id = await run_to_second_hook(rt, "on")
    plain = len(read_records(tmp_path / "log"))
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=KEY1) as rt:
        await rt.resume_hook("second:on", {"secret": MK_HOOK_PAYLOAD})
        tally, first, second = await rt.get_run(run_id).result()
    assert first == second == {"secret": MK_HOOK_PAYLOAD}
    events = read_events(tmp_path / "log")
    assert all(not KeyRing.is_envelope(v) for e in events[:plain] for v in user_values(e).values())
    assert kids_of(read_records(tmp_path / "log")[plain:]) != []
    assert set(kids_of(read_records(tmp_path / "log")[plain:])) == {KID1}


# -- resume_hook(..., encryption_key=k) ------------------------------------------------------


async def test_resume_hook_with_a_key_of_the_ring(tmp_path: Path) -> None:
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=[KEY1, KEY2]) as rt:
        run = await rt.start(two_hooks, "k")
        await wait_for_hook(rt, "first:k")
        await rt.resume_hook("first:k", {"secret": MK_HOOK_PAYLOAD}, encryption_key=KEY2)
        # The live run read it (it moved on to its second hook).
        await wait_for_hook(rt, "second:k")
    events = [e for e in read_events(tmp_path / "log") if e.run_id == run.run_id]
    received = next(e for e in events if e.type == "hook_received")
    assert envelope_kid(received.data["payload"]) == KID2
    others = [v for e in events if e is not received for v in user_values(e).values()]
    assert {envelope_kid(v) for v in others} == {KID1}
    assert not leaks(MK_HOOK_PAYLOAD, data_bytes(tmp_path))
    # After a restart the run is rebuilt from the log, reading that payload under key 2; the
    # override may also be given as raw bytes.
    async with af.Runtime(tmp_path, workflows=[two_hooks], encryption_key=[KEY1, KEY2]) as rt:
        await rt.resume_hook("second:k", "raw", encryption_key=parse_key(KEY2))
        _, first, second = await rt.get_run(run.run_id).result()
    assert (first, second) == ({"secret": MK_HOOK_PAYLOAD}, "raw")


@pytest.mark.parametrize("override", ["not_in_ring", "malformed", "encryption_off"])
async def test_resume_hook_with_an_unusable_key_writes_nothing(
    tmp_path: Path, override: str
) -> None:
    ring = None if override == "encryption_off" else KEY1
    store = RecordingStore(FileLog(tmp_path / "log"))
    async with af.Runtime(tmp_path, workflows=[two_hooks], store=store, encryption_key=ring) as rt:
        run = await rt.start(two_hooks, "u")
        await wait_for_hook(rt, "first:u")
        await rt.wait_idle()
        before = store.records
        bad = {"not_in_ring": KEY3, "malformed": "not-a-key", "encryption_off": KEY1}[override]
        with pytest.raises(af.WorkflowDefinitionError) as info:
            await rt.resume_hook("first:u", {"secret": MK_HOOK_PAYLOAD}, encryption_key=bad)
        if override == "not_in_ring":
            assert KID3 in str(info.value) and KID1 in str(info.value)
        assert KEY3 not in str(info.value) and KEY1 not in str(info.value)
        await rt.wait_idle()
        assert store.records == before
        # The hook and the run are unharmed.
        assert rt.state.runs[run.run_id].external == 0
        await rt.resume_hook("first:u", "good")
        await wait_for_hook(rt, "second:u")
        await rt.resume_hook("second:u", "done")
        assert (await run.result())[1:] == ["good", "done"]
    assert not leaks(MK_HOOK_PAYLOAD, data_bytes(tmp_path))
