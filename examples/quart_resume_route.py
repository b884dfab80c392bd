"""Your own Quart route resuming a hook, as the Workflow SDK's documentation shows it.

``resume_hook`` raising ``HookNotFoundError`` means nothing was committed and no live hook owns
the token: answer ``404``. Anything else is a fault on our side: answer ``500`` (and log it).
actorflow's own routes (the webhook route among them) are mounted beside yours as a blueprint.

Run it with ``python examples/quart_resume_route.py`` (serves on 127.0.0.1:8001), then::

    curl -X POST 127.0.0.1:8001/orders -H 'content-type: application/json' -d '{"order_id": "o-1"}'
    curl -X POST 127.0.0.1:8001/api/approve/o-1 -H 'content-type: application/json' \\
         -d '{"approved": true}'
"""

from __future__ import annotations

import logging
import os
from typing import Any

from quart import Quart, request

import actorflow as af
from actorflow.api import resume_hook
from actorflow.http import create_blueprint

logger = logging.getLogger(__name__)


@af.workflow
async def order_approval(order_id: str) -> dict[str, Any]:
    """Wait for the approval of one order, resumed by ``POST /api/approve/<order_id>``."""
    decision = await af.create_hook(token=f"order-approval:{order_id}")
    return {"order": order_id, "approved": bool(decision.get("approved"))}


def make_app(runtime: af.Runtime) -> Quart:
    """A user's Quart app: its own routes, plus actorflow's routes as a blueprint."""
    app = Quart(__name__)
    # The blueprint starts the runtime when the app starts serving and closes it at the end.
    app.register_blueprint(create_blueprint(runtime, manage_runtime=True))

    @app.post("/orders")
    async def create_order() -> tuple[dict[str, Any], int]:
        data = await request.get_json()
        run = await runtime.start(order_approval, str(data["order_id"]))
        return {"run_id": run.run_id}, 201

    @app.post("/api/approve/<order_id>")
    async def approve(order_id: str) -> tuple[dict[str, Any], int]:
        payload = await request.get_json()
        try:
            hook = await resume_hook(
                f"order-approval:{order_id}",
                payload,
                idempotency_key=request.headers.get("Idempotency-Key"),
            )
        except af.HookNotFoundError:
            return {"error": "no order is waiting for approval under this id"}, 404
        except Exception:
            logger.exception("resuming the approval of an order failed")
            return {"error": "internal error"}, 500
        return {"run_id": hook.run_id}, 200

    return app


if __name__ == "__main__":
    from actorflow.http import run

    logging.basicConfig(level=logging.INFO)
    data_dir = os.environ.get("ACTORFLOW_DATA_DIR", ".actorflow-quart")
    run(make_app(af.Runtime(data_dir, workflows=[order_approval])), bind="127.0.0.1:8001")
