"""Webhook deliveries per second and latency through Hypercorn, next to a bare Quart route.

    python -m benchmarks.webhook_http [--quick] [--clients N] [--seconds S] [--rounds R]
                                      [--json PATH]

One server process (Hypercorn, asyncio worker) serves both routes on 127.0.0.1: actorflow's
webhook route (``resume_webhook``: a webhook without signature check, ``hook_received`` appended
and group-committed before the ``202``) and a bare Quart route that reads the same POST body
and answers ``202`` without actorflow. The webhook route is the one ``create_app`` serves, at the
ASGI layer ahead of Quart (``actorflow/http/webhook_route.py``). The load generator is this process: N keep-alive
connections on raw asyncio streams (an HTTP client library would cost more than the server),
each posting back to back; one webhook and one run per connection, as distinct senders would.
Both routes are measured against the same server in the same run, interleaved over a few rounds
(so drift in the machine's load hits both alike; req/s is over all rounds), once
with ``durability="fsync"`` (the default: every 202 waits for its fsync) and once with
``durability="none"`` (labelled: no fsync, for comparison only). The ratio webhook / bare is the
figure, in req/s and, steadier on a shared machine, in requests per CPU second of the server
process (its user + system time over the round, all threads, from Linux's /proc). Prints a table, then the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BODY = json.dumps(
    {"id": "evt_0123456789", "type": "invoice.paid", "amount": 4200, "currency": "eur"}
).encode()
PREFIX = "/.well-known/workflow/v1"
ROUTES = ("bare Quart", "actorflow webhook")

# requests, seconds, latencies, bad statuses, the server's CPU seconds (None: not on Linux)
Round = tuple[int, float, list[float], list[int], float | None]


# -- the server (a subprocess) ------------------------------------------------------------------


def serve_main(durability: str, runs: int, data_dir: str) -> None:
    """Serve both routes; print ``READY <url> <tokens as JSON>``; stop on SIGTERM or SIGINT."""
    import signal
    from functools import partial

    import anyio
    from quart import Response, request

    import actorflow as af
    from actorflow.http import create_app, serve

    @af.workflow(name="sink")
    async def sink() -> None:
        async for _ in af.create_webhook():
            pass

    async def bare() -> Response:
        await request.get_data()
        return Response(b"", status=202)

    async def run_server() -> None:
        async with af.Runtime(data_dir, [sink], durability=durability) as rt:  # type: ignore[arg-type]
            started = [await rt.start(sink) for _ in range(runs)]
            tokens: list[str] = []
            with anyio.fail_after(30):
                for run in started:
                    while True:  # each run registers its webhook a moment after it starts
                        hooks = rt.state.runs[run.run_id].hooks
                        if hooks:
                            tokens.append(hooks[0])
                            break
                        await anyio.sleep(0.001)
            app = create_app(rt, manage_runtime=False)
            app.add_url_rule("/bare", "bare", bare, methods=["POST"])
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                url = await tg.start(
                    partial(serve, app, bind="127.0.0.1:0", shutdown_trigger=stop.wait)
                )
                print("READY", url, json.dumps(tokens), flush=True)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        stop.set()
                        break

    anyio.run(run_server, backend="asyncio")


# -- the load generator -------------------------------------------------------------------------


@dataclass
class Result:
    route: str
    durability: str
    clients: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    round_rps: list[float]
    #: The server process's CPU time per request (all its threads), or None off Linux.
    server_cpu_us: float | None


async def _client(
    host: str, port: int, path: str, until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    try:
        while time.perf_counter() < until:
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            if status != 202:
                errors.append(status)
    finally:
        writer.close()
        await writer.wait_closed()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux's /proc; else None)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(url: str, paths: list[str], seconds: float, server_pid: int = 0) -> Round:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    errors: list[int] = []
    cpu_before = _cpu_seconds(server_pid) if server_pid else None
    began = time.perf_counter()
    until = began + seconds
    await asyncio.gather(*(_client(host, int(port), p, until, latencies, errors) for p in paths))
    elapsed = time.perf_counter() - began
    cpu_after = _cpu_seconds(server_pid) if server_pid else None
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return len(latencies), elapsed, latencies, errors, cpu


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _result(route: str, durability: str, clients: int, rounds: list[Round]) -> Result:
    """Throughput and latency percentiles over every round's requests."""
    latencies = [x for _, _, lat, _, _ in rounds for x in lat]
    requests = sum(count for count, _, _, _, _ in rounds)
    cpu = [c for _, _, _, _, c in rounds]
    server_cpu_us = (
        None if None in cpu or not requests else round(sum(cpu) / requests * 1e6, 1)  # type: ignore[arg-type]
    )
    return Result(
        route=route,
        durability=durability,
        clients=clients,
        requests=requests,
        seconds=round(sum(elapsed for _, elapsed, _, _, _ in rounds), 3),
        rps=round(requests / sum(e for _, e, _, _, _ in rounds), 1),
        round_rps=[round(count / elapsed, 1) for count, elapsed, _, _, _ in rounds],
        p50_ms=round(_percentile(latencies, 0.50), 3),
        p99_ms=round(_percentile(latencies, 0.99), 3),
        errors=sum(len(errors) for _, _, _, errors, _ in rounds),
        server_cpu_us=server_cpu_us,
    )


def bench_server(
    durability: str,
    clients: int,
    seconds: float,
    warmup: float,
    rounds: int,
    work_dir: Path | None = None,
) -> list[Result]:
    """Both routes on one server process, alternating over ``rounds``; the server's log in a
    temporary folder under ``work_dir`` (default: the system's).

    Raises:
        MemoryBackedError: ``durability`` is ``"fsync"`` and that folder is memory-backed.
    """
    # Imported here: the server subprocess runs this file as a script, outside the package.
    from benchmarks.disk import require_disk

    with tempfile.TemporaryDirectory(prefix="actorflow-bench-http-", dir=work_dir) as data_dir:
        if durability == "fsync":
            require_disk(Path(data_dir))
        command = [
            sys.executable, __file__, "--serve", "--durability", durability,
            "--runs", str(clients), "--data-dir", data_dir,
        ]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            ready = server.stdout.readline().split(maxsplit=2)
            if not ready or ready[0] != "READY":
                raise SystemExit(f"the benchmark server did not start (exit {server.wait(10)})")
            url, tokens = ready[1], json.loads(ready[2])
            paths = {
                "bare Quart": ["/bare"] * clients,
                "actorflow webhook": [f"{PREFIX}/webhook/{token}" for token in tokens],
            }
            for route_paths in paths.values():
                asyncio.run(_measure(url, route_paths, warmup))
            measured: dict[str, list[Round]] = {route: [] for route in paths}
            for _ in range(rounds):
                for route, route_paths in paths.items():
                    measured[route].append(
                        asyncio.run(_measure(url, route_paths, seconds, server.pid))
                    )
            return [_result(route, durability, clients, measured[route]) for route in paths]
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (about 15 s in all)")
    parser.add_argument("--clients", type=int, help="concurrent connections (default 32, quick 16)")
    parser.add_argument("--seconds", type=float, help="per route and round (default 3, quick 1)")
    parser.add_argument(
        "--rounds", type=int, help="alternations of the routes (default 3, quick 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the JSON results to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--durability", default="fsync", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.durability, args.runs, args.data_dir)
        return
    clients = args.clients or (16 if args.quick else 32)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    rounds = args.rounds or (2 if args.quick else 3)
    warmup = 0.3 if args.quick else 1.0

    results: list[Result] = []
    for durability in ("fsync", "none"):
        results.extend(bench_server(durability, clients, seconds, warmup, rounds))

    print(
        f"\nwebhook POST through Hypercorn (asyncio worker), {clients} keep-alive clients, "
        f"{rounds} rounds of {seconds:g} s per route (interleaved), 127.0.0.1, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    )
    header = (
        f"{'route':<19} {'durability':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'requests':>9} {'errors':>6} {'server CPU us/req':>18}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.route:<19} {r.durability:<11} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.requests:>9} {r.errors:>6} {r.server_cpu_us or float('nan'):>18.1f}"
        )
    ratios: dict[str, dict[str, Any]] = {}
    for durability in ("fsync", "none"):
        bare, webhook = (r for r in results if r.durability == durability)
        ratio = {
            "rps_webhook_over_bare": round(webhook.rps / bare.rps, 3) if bare.rps else None,
            "p50_webhook_over_bare": round(webhook.p50_ms / bare.p50_ms, 2)
            if bare.p50_ms
            else None,
            "p99_webhook_over_bare": round(webhook.p99_ms / bare.p99_ms, 2)
            if bare.p99_ms
            else None,
            # Requests per CPU second of the server, webhook over bare: what throughput would
            # be on a server with a core to itself, unmoved by other load on a shared machine.
            "cpu_throughput_webhook_over_bare": round(bare.server_cpu_us / webhook.server_cpu_us, 3)
            if bare.server_cpu_us and webhook.server_cpu_us
            else None,
        }
        ratios[durability] = ratio
        print(
            f"ratio webhook/bare ({durability}): throughput {ratio['rps_webhook_over_bare']}x, "
            f"p50 latency {ratio['p50_webhook_over_bare']}x, "
            f"p99 latency {ratio['p99_webhook_over_bare']}x, "
            f"requests per server CPU second {ratio['cpu_throughput_webhook_over_bare']}x"
        )
    note = 'durability "none" skips fsync: a comparison figure only, never a production setting'
    print(f"({note})\n")
    report = {
        "benchmark": "webhook_http",
        "clients": clients,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "note": note,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
