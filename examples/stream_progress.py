"""Progress streamed to a web page: a step writes to its run's stream, the page follows it.

The workflow's step writes one chunk per item it processes; a route of your own app turns
``run.readable()`` into Server-Sent Events for the browser's ``EventSource``, which reconnects
with ``Last-Event-ID`` by itself (the route resumes from there). Backends can use actorflow's own
bearer route, ``GET /.well-known/workflow/v1/runs/<id>/streams/<namespace>``, instead.

Run it with ``python examples/stream_progress.py`` and open http://127.0.0.1:8002/.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from quart import Quart, Response, request

import actorflow as af
from actorflow.http import create_blueprint

PAGE = """<!doctype html>
<title>progress</title>
<button onclick="go()">Process 20 items</button> <progress id="bar" max="20" value="0"></progress>
<pre id="log"></pre>
<script>
async function go() {
  const {run_id} = await (await fetch("/jobs", {method: "POST"})).json();
  const source = new EventSource(`/jobs/${run_id}/progress`);
  source.addEventListener("chunk", (e) => {
    const chunk = JSON.parse(e.data);
    document.getElementById("bar").value = chunk.done;
    document.getElementById("log").textContent += chunk.message + "\\n";
  });
  source.addEventListener("end", () => source.close());
}
</script>
"""


@af.step
async def process(items: int) -> int:
    progress = af.get_writable("progress")
    for i in range(items):
        await anyio.sleep(0.05)  # the real work
        await progress.write({"done": i + 1, "message": f"item {i + 1} of {items} done"})
    await progress.close()
    return items


@af.workflow
async def job(items: int) -> int:
    return await process(items)


def make_app(runtime: af.Runtime) -> Quart:
    app = Quart(__name__)
    app.register_blueprint(create_blueprint(runtime, manage_runtime=True))

    @app.get("/")
    async def page() -> Response:
        return Response(PAGE, content_type="text/html")

    @app.post("/jobs")
    async def start() -> dict[str, Any]:
        run = await runtime.start(job, 20)
        return {"run_id": run.run_id}

    @app.get("/jobs/<run_id>/progress")
    async def progress(run_id: str) -> Response:
        last = request.headers.get("last-event-id", "")
        start = int(last) + 1 if last.isdigit() else 0
        stream = runtime.get_run(run_id).readable("progress", start_index=start)

        async def events() -> AsyncIterator[bytes]:
            index = start
            async for chunk in stream:
                yield b"id: %d\nevent: chunk\ndata: %s\n\n" % (index, orjson.dumps(chunk))
                index += 1
            yield b"event: end\ndata: {}\n\n"

        response = Response(events(), content_type="text/event-stream")
        response.timeout = None
        return response

    return app


if __name__ == "__main__":
    rt = af.Runtime(os.environ.get("DATA_DIR", ".actorflow-progress"), [job])
    make_app(rt).run(host="127.0.0.1", port=8002)
