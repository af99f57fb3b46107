"""The command palette: the Low-cost commands, found and run as a person does (Ctrl+Shift+C,
type, click)."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import expect

from browser.lab import Lab, new_notebook, run_cell, wait_kernel_idle


async def run_from_palette(page: Any, search: str, label: str) -> None:
    await page.keyboard.press("Control+Shift+C")
    palette = page.locator("#command-palette")
    await expect(palette).to_be_visible()
    await palette.locator("input").fill(search)
    item = palette.locator(".lm-CommandPalette-item").filter(has_text=label)
    await expect(item).to_have_count(1)
    await item.click()


async def test_the_palette_toggles_low_cost_and_shows_the_status(
    lab: Lab, browser: Any, screenshot: Any
) -> None:
    page = await browser.open(lab)
    await new_notebook(page)
    await wait_kernel_idle(page)

    # Both commands are listed under "Low-cost".
    await page.keyboard.press("Control+Shift+C")
    palette = page.locator("#command-palette")
    await palette.locator("input").fill("low-cost")
    await expect(palette.locator(".lm-CommandPalette-header")).to_contain_text(["Low-cost"])
    items = palette.locator(".lm-CommandPalette-item")
    await expect(items).to_have_count(2)
    labels = sorted(
        t.split("\n")[0]
        for t in await items.locator(".lm-CommandPalette-itemLabel").all_inner_texts()
    )
    assert labels == ["Run Kernel on a Low-cost Instance", "Show Low-cost Status"], labels
    await screenshot(palette, "command-palette")
    await page.keyboard.press("Escape")

    # The toggle asks as the switch does, then moves the kernel.
    await run_from_palette(page, "low-cost inst", "Run Kernel on a Low-cost Instance")
    dialog = page.locator(".jp-Dialog")
    await expect(dialog).to_contain_text("Run this notebook on a low-cost instance?")
    await dialog.get_by_label("Instance type").select_option("T4")
    await dialog.get_by_role("button", name="Switch to low-cost").click()
    switch = page.get_by_role("switch", name="Low-cost")
    await expect(switch).to_have_attribute("aria-checked", "true", timeout=60_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("T4", timeout=60_000)
    kernel_id = lab.only_kernel()
    model = lab.api("GET", f"kernels/{kernel_id}")
    assert model["placement"] == {"instance_type": "T4", "low_cost": True, "tier": "low-cost"}
    await wait_kernel_idle(page)

    # The palette now shows the command as checked.
    await page.keyboard.press("Control+Shift+C")
    await palette.locator("input").fill("low-cost inst")
    await expect(
        palette.locator(".lm-CommandPalette-item.lm-mod-toggled").filter(
            has_text="Run Kernel on a Low-cost Instance"
        )
    ).to_have_count(1)
    await page.keyboard.press("Escape")

    # The status: where the kernel runs, with time left and cost, and the backend.
    await run_from_palette(page, "low-cost status", "Show Low-cost Status")
    dialog = page.locator(".jp-Dialog")
    await expect(dialog).to_contain_text("Low-cost status")
    await expect(dialog).to_contain_text(
        re.compile(r"Untitled\.ipynb: Low-cost T4 · (24:00:00|23:59:\d\d) left")
    )
    await expect(dialog).to_contain_text("Backend: local, 1 live instance(s)")
    await expect(dialog).to_contain_text("Low-cost instances stop after 24 hours")
    await screenshot(dialog.locator(".jp-Dialog-content"), "status-dialog")
    await dialog.get_by_role("button", name="Close").click()
    await expect(dialog).to_have_count(0)

    # And back: the toggle asks before moving to a regular instance.
    await run_from_palette(page, "low-cost inst", "Run Kernel on a Low-cost Instance")
    dialog = page.locator(".jp-Dialog")
    await expect(dialog).to_contain_text("Move this notebook back to a regular instance?")
    await dialog.get_by_role("button", name="Move to regular").click()
    await expect(switch).to_have_attribute("aria-checked", "false", timeout=60_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("T4", timeout=60_000)
    await wait_kernel_idle(page)
    output = await run_cell(page, "%lowcost", "regular T4")
    assert "regular T4" in output
