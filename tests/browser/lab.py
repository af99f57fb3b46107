"""A real ``jupyter lab`` in a subprocess and a real Chromium page on it, for the browser
tests (``tests/browser/``) and the notice latency benchmark.

Each :class:`Lab` has its own home: configuration, data, settings and workspaces, so that
nothing leaks between tests or from the developer's own JupyterLab.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import requests
from jupyter_process import JupyterProcess

TOKEN = "browser-test-token"

#: Where Debian puts Chromium (``apt-get install -y chromium``); override with
#: ``JUPYTER_LOWCOST_CHROMIUM``.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every name Chromium looks up on its own (update, sign-in, autofill servers) fails at
    # once, without a name server: the pages load from 127.0.0.1, no name to look up.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def find_chromium() -> str:
    """Chromium's path, or an AssertionError that says how to install it."""
    candidates = [os.environ.get("JUPYTER_LOWCOST_CHROMIUM", ""), *CHROMIUM_CANDIDATES]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise AssertionError(
        "The browser tests need Chromium and found none at "
        f"{', '.join(CHROMIUM_CANDIDATES)}. Install it with `apt-get install -y chromium` "
        "(Debian/Ubuntu; .ci/run does this), or point JUPYTER_LOWCOST_CHROMIUM at a "
        "Chromium or Chrome binary."
    )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) for key, value in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


BASE_CONFIG: dict[str, Any] = {
    # expose_app_in_browser: the tests wait on the kernel's status through window.jupyterapp;
    # everything they do, they do by clicking and typing.
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "expose_app_in_browser": True,
    },
    "LowCostApp": {"launch_timeout": 60.0},
    "LocalBackend": {"slots": 4, "gpus": 0},
}


class Lab(JupyterProcess):
    """``jupyter lab`` on a free port, configured through a config file in its own home."""

    def __init__(
        self,
        home: Path,
        config: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__("jupyterlab", home, TOKEN, "lab.log")
        config_dir = home / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "jupyter_server_config.json").write_text(
            json.dumps(_merge(BASE_CONFIG, config or {}))
        )
        user_settings = {
            # No "get notified about Jupyter news?" toast over the page.
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
            "jupyter-lowcost/plugin": settings or {},
        }
        for plugin, values in user_settings.items():
            path = home / "settings" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        (home / "notebooks").mkdir(exist_ok=True)

    @property
    def url(self) -> str:
        return f"{self.base}lab?token={TOKEN}"

    def start(self) -> None:
        env = {
            "JUPYTER_CONFIG_DIR": str(self.home / "config"),
            "JUPYTER_DATA_DIR": str(self.home / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(self.home / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.home / "workspaces"),
        }
        self.launch(self.home / "notebooks", env, self._answers)

    def _answers(self) -> bool:
        try:
            return (
                self.exited()
                or requests.get(f"{self.base}api/status", headers=self.headers, timeout=5).ok
            )
        except requests.ConnectionError:
            return False

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call ``lowcost/api/<path>`` (or ``api/<path>`` when it starts with ``/``)."""
        url = f"{self.base}{path[1:]}" if path.startswith("/") else f"{self.base}lowcost/api/{path}"
        response = requests.request(method, url, json=body, headers=self.headers, timeout=120)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.text else None

    def only_kernel(self) -> str:
        """The id of the one kernel this server runs."""
        kernels = self.api("GET", "/api/kernels")
        assert len(kernels) == 1, kernels
        return kernels[0]["id"]


async def open_lab(browser: Any, lab: Lab) -> Any:
    """A new page on ``lab``, once JupyterLab has finished loading."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(lab.url)
    await page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
    return page


async def new_notebook(page: Any) -> None:
    """Create a notebook from the launcher, and wait until its kernel is idle."""
    await page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    await wait_kernel_idle(page)


async def wait_kernel_idle(page: Any, timeout: float = 60_000) -> None:
    """Wait until the current notebook's kernel is connected and not busy."""
    await page.wait_for_function(
        """() => {
            const app = window.jupyterapp;
            const panel = app && app.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            // After a reconnect JupyterLab reports 'unknown' until the first execution.
            return kernel && kernel.connectionStatus === 'connected'
                && (kernel.status === 'idle' || kernel.status === 'unknown');
        }""",
        timeout=timeout,
    )


async def run_cell(page: Any, code: str, expect: str, timeout: float = 60_000) -> str:
    """Type ``code`` into the last cell, run it, and wait for ``expect`` in its output."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    cell = cells.nth(await cells.count() - 1)  # Shift+Enter adds a cell below this one
    await cell.locator(".cm-content").click()
    await page.keyboard.type(code)
    await page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    await output.filter(has_text=expect).first.wait_for(timeout=timeout)
    return "\n".join(await output.all_inner_texts())


def chromium_path() -> str:
    return find_chromium()


def built_extension_js_bytes() -> int:
    """The size of the built extension's JavaScript (``static/*.js``), as JupyterLab loads it."""
    from jupyter_core.paths import jupyter_path

    for root in jupyter_path("labextensions"):
        static = Path(root) / "jupyter-lowcost" / "static"
        if static.is_dir():
            return sum(p.stat().st_size for p in static.glob("*.js"))
    raise AssertionError("the extension is not installed: no jupyter-lowcost in labextensions")
