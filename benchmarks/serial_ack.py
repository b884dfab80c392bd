"""One resumer's acknowledgement, on a log that reserves space ahead and on one that appends.

Usage::

    python -m benchmarks.serial_ack                 # 6 rounds of each, asyncio
    python -m benchmarks.serial_ack --rounds 4 --backend trio

Each round opens a fresh runtime per variant, in turn (appending, then reserved), starts
``--runs`` runs of ``hook_once``, waits until the log is idle, then resumes them one at a time,
each after its predecessor's run ended, timing ``resume_hook`` until it returns (its
``hook_received`` fsynced) and until the workflow's code sees the payload (the ``hook``
scenario's target row). Before each resume one ``write(128 bytes)`` + ``fsync`` on an
``O_APPEND`` file beside the log is timed: the baseline of the ``hook`` scenario, sampled under
the same conditions. Per round and variant it prints both p50s and their ratios to that round's
fsync p50; then the median ratios of each variant. Alternating variants round
by round keeps a disk or a machine that gets busier from favouring either. Not part of the
test suite, nor of ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import anyio

import actorflow as af
from actorflow.runtime.log.file_log import FileLog

from .disk import FsyncProbe, default_work_dir, require_disk
from .roundtrip import hook_round_trip
from .workflows import hook_once, observations

VARIANTS = {"appending": False, "reserved": True}


async def _round(directory: Path, runs: int, reserve: bool) -> tuple[float, float, float]:
    """(acknowledgement p50, workflow-sees-it p50, fsync p50) of one runtime, in seconds."""
    shutil.rmtree(directory, ignore_errors=True)
    observations.clear()
    store = FileLog(directory / "log", reserve=reserve)
    with FsyncProbe(directory / "probe") as probe:
        async with af.Runtime(directory, workflows=[hook_once], store=store) as rt:
            # The hook scenario's own serial phase: every run resumed one at a time.
            trip = await hook_round_trip(
                rt, n=runs, serial=runs, concurrency=1, tag="ack", probe=probe
            )
    shutil.rmtree(directory, ignore_errors=True)
    return (
        statistics.median(trip.serial_ack),
        statistics.median(trip.serial_observed),
        statistics.median(trip.serial_probe),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serial_ack", description=__doc__)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--runs", type=int, default=300, help="serial resumes per runtime")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--work-dir", type=Path, default=default_work_dir())
    args = p.parse_args(argv)
    directory = args.work_dir / "serial-ack"
    require_disk(args.work_dir)
    ratios: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    rows = []
    for n in range(args.rounds):
        for name, reserve in VARIANTS.items():
            ack, seen, fsync = anyio.run(
                _round, directory, args.runs, reserve, backend=args.backend
            )
            ratios[name].append((ack / fsync, seen / fsync))
            rows.append({"round": n, "variant": name, "ack_p50_ms": ack * 1e3,
                         "seen_p50_ms": seen * 1e3, "fsync_p50_ms": fsync * 1e3,
                         "ack_ratio": ack / fsync, "seen_ratio": seen / fsync})  # fmt: skip
            print(f"round {n}  {name:10s} ack p50 {ack * 1e3:.3f} ms ({ack / fsync:.2f}x)  "
                  f"sees it {seen * 1e3:.3f} ms ({seen / fsync:.2f}x)  fsync p50 "
                  f"{fsync * 1e3:.3f} ms", flush=True)  # fmt: skip
    for name, values in ratios.items():
        ack_median = statistics.median(v[0] for v in values)
        seen_median = statistics.median(v[1] for v in values)
        print(f"{name:10s} median of {len(values)} rounds: ack {ack_median:.2f}x, "
              f"sees it {seen_median:.2f}x fsync p50")  # fmt: skip
    print(json.dumps({"backend": args.backend, "runs": args.runs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
