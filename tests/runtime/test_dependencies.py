"""What a plain ``pip install actorflow`` brings in is enough for the embedded runtime and its
HTTP app: the self-contained demo runs with every other package refused at import.

``sniffio`` once reached the runtime only through trio, an extra: ``import actorflow`` failed on
a machine that installed no extras. The child process here refuses every package that neither
the base dependencies nor theirs provide (trio, psycopg, the test tools...), then runs
``examples/approval_demo.py`` and builds the Quart app, as such a machine would.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import actorflow

ROOT = Path(actorflow.__file__).parent.parent.parent

CHILD = """
import importlib.abc, json, runpy, sys
REFUSED = set(json.loads(sys.argv[1]))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in a plain install)")
        return None

sys.meta_path.insert(0, Refuse())
runpy.run_path(sys.argv[2], run_name="__main__")
import actorflow.cli
import actorflow as af
from actorflow.http.app import create_app
create_app(af.Runtime(sys.argv[3], workflows=[]))
print("plain install: ok")
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _plain_install() -> set[str]:
    """The distributions the base dependencies bring in, with theirs, on this Python."""
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [_canonical(Requirement(line).name) for line in base]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in md.requires(name) or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_canonical(req.name))
    return seen


def test_the_demo_and_the_app_need_nothing_beyond_a_plain_install(tmp_path: Path) -> None:
    plain = _plain_install()
    refused = sorted(
        top
        for top, dists in md.packages_distributions().items()
        if top != "actorflow" and not {_canonical(d) for d in dists} & plain
    )
    assert "trio" in refused and "psycopg" in refused, refused  # the extras really are refused
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            json.dumps(refused),
            str(ROOT / "examples" / "approval_demo.py"),
            str(tmp_path / "app"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plain install: ok" in done.stdout
