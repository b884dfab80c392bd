"""The inspector's templates and stylesheet are in the wheel: it reads them from the installed
package, so a wheel without them would install cleanly and then fail on its first page."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import actorflow.http.inspector as inspector

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_template_and_stylesheet(tmp_path: Path) -> None:
    package = Path(inspector.__file__).parent
    assets = sorted(
        f"actorflow/http/inspector/{path.relative_to(package).as_posix()}"
        for folder in ("templates", "static")
        for path in (package / folder).rglob("*")
        if path.is_file()
    )
    assert any(a.endswith(".html") for a in assets) and any(a.endswith(".css") for a in assets)
    # A copy of what a build reads, so the build leaves nothing in the work tree.
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"),
         str(project)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = (tmp_path / "out").glob("actorflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [a for a in assets if a not in names] == []
