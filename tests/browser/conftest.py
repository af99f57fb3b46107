"""Fixtures of the browser tests: real ``jupyter lab`` servers and a real Chromium.

The tests are async and drive Playwright's async API on the event loop pytest-jupyter
gives every test. ``@pytest.mark.lab(config={...}, settings={...})`` configures the
server (by class name, as in a config file) and the extension's user settings; a test
whose server's configuration is known only as it runs (the URL of an emulator on a free
port) calls ``start_lab(config={...})`` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from browser.lab import CHROMIUM_ARGS, Lab, find_chromium, open_lab

ARTIFACTS = Path(__file__).parent.parent / "artifacts"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab(config=None, settings=None): the test server's config and settings"
    )


@pytest.fixture
def start_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """``start_lab(config=None, settings=None)``: a started ``jupyter lab`` with the
    extension; each is stopped after the test."""
    started: list[Lab] = []

    def start(config: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> Lab:
        server = Lab(tmp_path / f"lab{len(started)}", config, settings)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
        print(server.log()[-5000:])  # pytest shows it when the test failed


@pytest.fixture
def lab(request: pytest.FixtureRequest, start_lab: Callable[..., Lab]) -> Lab:
    """A started ``jupyter lab`` with the extension, configured by the test's marker."""
    marker = request.node.get_closest_marker("lab")
    options = marker.kwargs if marker else {}
    return start_lab(options.get("config"), options.get("settings"))


class Browser:
    """One Chromium for one test; pages remember what they printed to the console."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from playwright.async_api import async_playwright

        executable = find_chromium()
        self.loop = loop
        self._playwright = loop.run_until_complete(async_playwright().start())
        self.browser = loop.run_until_complete(
            self._playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        )
        #: Uncaught errors and console errors of every page, as text.
        self.errors: list[str] = []

    async def open(self, lab: Lab) -> Any:
        page = await open_lab(self.browser, lab)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type == "error"
                else None
            ),
        )
        return page

    def close(self) -> None:
        self.loop.run_until_complete(self.browser.close())
        self.loop.run_until_complete(self._playwright.stop())


@pytest.fixture
def browser(jp_asyncio_loop: asyncio.AbstractEventLoop) -> Iterator[Browser]:
    made = Browser(jp_asyncio_loop)
    yield made
    made.close()


@pytest.fixture
def screenshot() -> Callable[..., Any]:
    """``await screenshot(page_or_locator, "name")`` saves tests/artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)

    async def take(target: Any, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        await target.screenshot(path=str(path))
        return path

    return take
