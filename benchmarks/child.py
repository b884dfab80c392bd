"""Run one measurement in a fresh interpreter, so its RSS and heap start clean.

``python -m benchmarks.child MODULE FUNCTION JSON``: calls ``benchmarks.MODULE.FUNCTION(**JSON)``
and prints its (JSON) return value on the last line of stdout. Progress goes to stderr, which
the parent passes through.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["run_child"]

_ROOT = Path(__file__).resolve().parent.parent


def run_child(module: str, function: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Call ``benchmarks.<module>.<function>(**kwargs)`` in a child interpreter; its result.

    Raises:
        RuntimeError: the child failed or printed no result.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", module, function, json.dumps(kwargs)],
        cwd=_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark child {module}.{function} exited with {proc.returncode}: "
            f"{proc.stdout[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    _, module, function, raw = sys.argv
    fn = getattr(importlib.import_module(f"benchmarks.{module}"), function)
    from .logs import configure_logging

    configure_logging()
    out = fn(**json.loads(raw))
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
