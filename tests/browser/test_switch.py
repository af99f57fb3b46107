"""The Low-cost switch, its dialog and the status bar, clicked as a person clicks them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from browser.lab import Lab, new_notebook, run_cell, wait_kernel_idle
from playwright.async_api import expect


def switch(page: Any) -> Any:
    return page.get_by_role("switch", name="Low-cost")


def status_item(page: Any) -> Any:
    return page.get_by_role("status", name="Low-cost instance")


async def test_switch_on_shows_prices_rules_and_a_countdown(
    lab: Lab, browser: Any, screenshot: Any
) -> None:
    page = await browser.open(lab)
    await new_notebook(page)
    await expect(switch(page)).to_have_attribute("aria-checked", "false")
    await expect(page.locator(".jp-LowCost-type")).to_have_text("local")

    await switch(page).click()
    dialog = page.locator(".jp-Dialog")
    await expect(dialog).to_contain_text("Run this notebook on a low-cost instance?")
    await dialog.get_by_label("Instance type").select_option("A100-80G")
    await expect(dialog).to_contain_text("A100-80G: $1.15/h instead of $3.09/h, 63% less")
    await expect(dialog).to_contain_text("can be interrupted at any time, even in the first")
    await expect(dialog).to_contain_text("always shut down after 24 hours")
    await expect(dialog).to_contain_text("lost on an interruption unless it was checkpointed")
    await screenshot(dialog.locator(".jp-Dialog-content"), "dialog")

    await dialog.get_by_role("button", name="Switch to low-cost").click()
    await expect(page.locator(".Toastify__toast").filter(has_text="starting a low-cost")).to_be_visible()
    await expect(switch(page)).to_have_attribute("aria-checked", "true", timeout=60_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("A100-80G")
    await expect(
        page.locator(".Toastify__toast").filter(has_text="now runs on a low-cost A100-80G")
    ).to_be_visible()

    status = status_item(page)
    await expect(status).to_contain_text(re.compile(r"Low-cost A100-80G · 23:59:\d\d left · \$"))
    first = await status.inner_text()
    await expect(status).not_to_have_text(first, timeout=3000)  # it counts down live
    await screenshot(page.locator("#jp-main-statusbar"), "statusbar")

    await wait_kernel_idle(page)
    kernel_id = lab.only_kernel()
    model = lab.api("GET", f"kernels/{kernel_id}")
    assert model["placement"] == {"instance_type": "A100-80G", "low_cost": True, "tier": "low-cost"}
    output = await run_cell(page, "%lowcost", "low-cost A100-80G")
    assert model["instance"]["id"] in output  # the cell ran on the new instance's kernel
    await screenshot(page, "notebook-low-cost")

    # After a reload the switch still says where the kernel runs.
    await page.reload()
    await page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
    await expect(switch(page)).to_have_attribute("aria-checked", "true", timeout=30_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("A100-80G")
    assert browser.errors == []
