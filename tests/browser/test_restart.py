"""JupyterLab left open while its server is killed and restarted keeps working in the same
notebook, on the same kernel, with its variables."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import expect

from browser.lab import Lab, run_cell, wait_kernel_idle
from browser.test_notifications import low_cost_notebook
from browser.test_switch import status_item


async def test_jupyterlab_open_across_a_server_restart_keeps_its_kernel(
    lab: Lab, browser: Any, screenshot: Any
) -> None:
    page, instance_id = await low_cost_notebook(lab, browser)
    kernel_id = lab.only_kernel()
    await run_cell(page, "import os\nanswer = 42\nprint('pid', os.getpid())", "pid")
    pid = (await page.locator(".jp-OutputArea-output").filter(has_text="pid").inner_text()).split()[
        1
    ]

    lab.kill_hard()
    lab.start()

    # The same page, the same notebook: JupyterLab reconnects to the same kernel.
    await wait_kernel_idle(page)
    # JupyterLab says so if one of its requests failed while the server was away (its
    # own "Server Connection Error" dialog): a person closes it.
    lost = page.locator(".jp-Dialog").filter(has_text="Server Connection Error")
    if await lost.count():
        await lost.get_by_role("button", name="Close").click()
        await expect(lost).to_have_count(0)
    output = await run_cell(page, "print(answer + 1, os.getpid())", "43")
    assert output.strip() == f"43 {pid}"
    assert lab.only_kernel() == kernel_id
    instance = lab.api("GET", f"kernels/{kernel_id}")["instance"]
    assert instance["id"] == instance_id and instance["state"] == "running"
    await expect(status_item(page)).to_contain_text(re.compile(r"Low-cost T4 · \d+:\d\d:\d\d left"))
    # No dialog about a dead kernel, no kernel picker: nothing asked of the user.
    await expect(page.locator(".jp-Dialog")).to_have_count(0)
    assert not await page.get_by_text("Select Kernel").count()
    await screenshot(page, "after-restart")
