"""The approval flow ``./scripts/demo`` serves: a webhook receives a receipt, a hook with a chosen
token receives the manager's decision.

Serve it with::

    ACTORFLOW_RESUME_SECRET=demo-secret actorflow serve examples.approval_server \\
        --bind 127.0.0.1:8000 --data-dir .actorflow

then drive it with curl (``./scripts/demo`` prints the exact commands):

1. ``POST /.well-known/workflow/v1/runs`` ``{"workflow": "expense_approval", "args": ["exp-1", 120]}``
   starts a run;
2. ``GET /.well-known/workflow/v1/runs/<run_id>`` lists its live hooks, with the webhook's URL;
3. posting the receipt to that URL gets the workflow's own answer (a manual response);
4. ``POST /.well-known/workflow/v1/hooks/resume`` ``{"token": "approval:exp-1", "payload":
   {"approved": true, "by": "ana"}}`` approves;
5. ``GET .../runs/<run_id>`` shows the result.

Stop the server between any two steps and start it again: the run carries on from its log.
"""

from __future__ import annotations

from typing import Any

import actorflow as af


@af.step
async def pay(expense_id: str, amount: int) -> str:
    # Real I/O lives in steps; step_id is stable across retries: the idempotency key to send.
    return f"paid {amount} for {expense_id} (idempotency key {af.get_step_metadata().step_id})"


@af.workflow
async def expense_approval(expense_id: str, amount: int) -> dict[str, Any]:
    """Wait for a receipt over HTTP, then for a manager's decision (or expire after 7 days)."""
    receipts = af.create_webhook(respond_with="manual", respond_timeout=10)
    request = await receipts
    try:
        receipt = request.json() if request.body else {}
    except ValueError:
        receipt = {"raw": request.text()}
    # The sender waits for this answer; it is recorded, so a replay never sends it twice.
    await request.respond_with(
        af.Response.json({"expense": expense_id, "status": "receipt received, awaiting approval"})
    )
    receipts.dispose()

    decision_hook = af.create_hook(token=f"approval:{expense_id}", metadata={"amount": amount})
    index, decision = await af.first(decision_hook, af.sleep("7d"))
    if index == 1:
        return {"expense": expense_id, "outcome": "expired", "receipt": receipt}
    decision = decision if isinstance(decision, dict) else {"approved": decision is True}
    if decision.get("approved"):
        payment = await pay(expense_id, amount)
        return {"expense": expense_id, "outcome": "approved", "by": decision.get("by"),
                "receipt": receipt, "payment": payment}  # fmt: skip
    return {"expense": expense_id, "outcome": "rejected", "by": decision.get("by")}


#: What ``actorflow serve examples.approval_server`` serves.
workflows = [expense_approval]
