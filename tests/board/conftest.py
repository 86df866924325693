"""Browser fixtures for the board tests: Debian's chromium driven headless through its chromedriver (Selenium), and
the folder that keeps each step's screenshot (env TKC_BOARD_SCREENSHOTS, else the test's tmp dir).

No browser is downloaded at run time (the machines reach package registries only): `make test` installs
Debian's `chromium` and `chromium-driver` first. A missing browser is a failure, never a skip."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))   # the test modules import board_server (the real server helper)

INSTALL = (
    "apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver "
    "(or run the README's test command, `make test`, which does it when they are missing)"
)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            f"the board's browser test needs Debian's chromium and chromedriver; install them: {INSTALL}"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("TKC_BOARD_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where
