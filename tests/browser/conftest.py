"""Fixtures of the browser tests: Playwright driving the distribution's chromium.

Playwright cannot download its own browsers here, so the tests launch the Debian ``chromium``
package (``ACTORFLOW_CHROMIUM`` names another binary). Without it, or without Playwright, they
skip with the install command, except under ``CI=true``: ``.ci/run`` installs chromium, so
there a missing browser is a failure, not a skip (as the PostgreSQL suite does with its server).

The browser is started once per module, with the switches that keep chromium from reaching for
the network on its own (this machine's closed network refuses those connections).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

CHROMIUM = os.environ.get("ACTORFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str) -> NoReturn:
    """Skip, or under ``CI=true`` fail, naming what is missing and how to install it."""
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{reason}; CI=true and .ci/run installs chromium, so this is a failure, not a skip",
            pytrace=False,
        )
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium driven by Playwright (sync API), for one test module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: .venv/bin/pip install -e '.[dev]'")
    if not Path(CHROMIUM).is_file():
        unavailable(f"chromium is not installed at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: ``ACTORFLOW_SCREENSHOTS`` (``scripts/screenshots`` sets it to
    ``docs/``), else the test's own temporary folder."""
    target = os.environ.get("ACTORFLOW_SCREENSHOTS")
    return Path(target) if target else tmp_path
