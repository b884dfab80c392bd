"""A self-contained demo: a workflow waits on a hook, is resumed from outside, and finishes.

Run with ``./scripts/demo``. Everything is on the embedded file log in ``.actorflow-demo/``.
"""

from __future__ import annotations

import tempfile

import anyio

import actorflow as af


@af.step
async def charge(order_id: str, amount: int) -> str:
    # Real I/O lives in steps; get_step_metadata().step_id is the idempotency key to send along.
    return f"charged {amount} for {order_id} (key {af.get_step_metadata().step_id})"


@af.workflow
async def approval(order_id: str, amount: int) -> dict[str, str]:
    hook = af.create_hook(token=f"approval:{order_id}", metadata={"amount": amount})
    index, decision = await af.first(hook, af.sleep("7d"))
    if index == 1:
        return {"order": order_id, "outcome": "expired"}
    if decision["approved"]:
        receipt = await charge(order_id, amount)
        return {"order": order_id, "outcome": "approved", "receipt": receipt}
    return {"order": order_id, "outcome": "rejected", "by": decision["by"]}


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="actorflow-demo-") as data_dir:
        async with af.Runtime(data_dir, workflows=[approval]) as rt:
            run = await rt.start(approval, "order-1", 120)
            print(f"started {run.run_id}; status {await run.status()}")
            # The hook exists once the workflow has run up to create_hook: a moment after start.
            while True:
                try:
                    await rt.get_hook_by_token("approval:order-1")
                    break
                except af.HookNotFoundError:
                    await anyio.sleep(0.001)
            hook = await rt.resume_hook("approval:order-1", {"approved": True, "by": "ana"})
            print(f"resumed hook {hook.hook_id} (durable on disk before this line)")
            print("result:", await run.result(timeout=10))
        async with af.Runtime(data_dir, workflows=[approval]) as rt:
            print("after a restart the log still says:", await rt.get_run(run.run_id).status())


if __name__ == "__main__":
    anyio.run(main)
