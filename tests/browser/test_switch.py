"""The Low-cost switch, its dialog and the status bar, clicked as a person clicks them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import expect

from browser.lab import Lab, new_notebook, run_cell, wait_kernel_idle


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
    options = await dialog.get_by_label("Instance type").locator("option").all_inner_texts()
    assert "T4 (1 x NVIDIA T4 16 GB): $0.14/h instead of $0.35/h, 60% less" in options, options
    await expect(dialog).to_contain_text("can be interrupted at any time, even in the first")
    await expect(dialog).to_contain_text("always shut down after 24 hours")
    await expect(dialog).to_contain_text("lost on an interruption unless it was checkpointed")
    await screenshot(dialog.locator(".jp-Dialog-content"), "dialog")

    await dialog.get_by_role("button", name="Switch to low-cost").click()
    await expect(
        page.locator(".Toastify__toast").filter(has_text="starting a low-cost")
    ).to_be_visible()
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

    # JupyterLab's own kernel status says the kernel on the new instance is idle.
    await expect(page.locator("#jp-main-statusbar")).to_contain_text(
        "Python 3 (ipykernel) | Idle", timeout=30_000
    )
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

    # Turning it off asks first, then moves the kernel to a regular instance.
    await wait_kernel_idle(page)
    await switch(page).click()
    dialog = page.locator(".jp-Dialog")
    await expect(dialog).to_contain_text("Move this notebook back to a regular instance?")
    await expect(dialog).to_contain_text("regular A100-80G instance at $3.09/h")
    await dialog.get_by_role("button", name="Move to regular").click()
    await expect(switch(page)).to_have_attribute("aria-checked", "false", timeout=60_000)
    await expect(status_item(page)).to_contain_text("Regular A100-80G · $")
    placement = lab.api("GET", f"kernels/{kernel_id}")["placement"]
    assert placement == {"instance_type": "A100-80G", "low_cost": False, "tier": "regular"}
    await run_cell(page, "%lowcost", "regular A100-80G")
    assert not [e for e in browser.errors if "uncaught" in e or "lowcost" in e.lower()]


async def test_cancel_changes_nothing(lab: Lab, browser: Any) -> None:
    page = await browser.open(lab)
    await new_notebook(page)
    await switch(page).click()
    dialog = page.locator(".jp-Dialog")
    await dialog.get_by_label("Instance type").select_option("T4")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_have_count(0)
    await expect(switch(page)).to_have_attribute("aria-checked", "false")
    await expect(page.locator(".jp-LowCost-type")).to_have_text("local")
    await expect(status_item(page)).to_have_count(0)
    kernel_id = lab.only_kernel()
    assert lab.api("GET", f"kernels/{kernel_id}")["placement"] is None
    assert lab.api("GET", "instances") == []
    await run_cell(page, "print(6 * 7)", "42")  # the same kernel still answers
    assert lab.only_kernel() == kernel_id


async def test_magic_in_a_cell_moves_the_switch_without_a_reload(lab: Lab, browser: Any) -> None:
    page = await browser.open(lab)
    await new_notebook(page)
    await run_cell(page, "%lowcost on --type T4", "Moving this kernel to a low-cost T4")
    await expect(switch(page)).to_have_attribute("aria-checked", "true", timeout=30_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("T4")
    await expect(status_item(page)).to_contain_text("Low-cost T4")
    await wait_kernel_idle(page)
    await run_cell(page, "%lowcost off", "regular T4")
    await expect(switch(page)).to_have_attribute("aria-checked", "false", timeout=30_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("T4")
    await expect(status_item(page)).to_contain_text("Regular T4")
    # Turning it back on from the switch asks again, with the current type selected.
    await wait_kernel_idle(page)
    await switch(page).click()
    await expect(page.locator(".jp-Dialog").get_by_label("Instance type")).to_have_value("T4")


@pytest.mark.lab(
    config={
        "LocalBackend": {"slots": 1, "low_cost_when_full": "fail"},
        "LowCostApp": {"lifetime_cap": 7200},
    }
)
async def test_a_refused_move_shows_the_servers_message(lab: Lab, browser: Any) -> None:
    # Another kernel holds the only slot on a regular instance.
    lab.api("POST", "kernels", {"instance_type": "T4", "low_cost": False})
    page = await browser.open(lab)
    await new_notebook(page)
    await switch(page).click()
    # The dialog states this server's cap, not a fixed 24 hours.
    await expect(page.locator(".jp-Dialog")).to_contain_text("always shut down after 2 hours")
    await page.get_by_role("button", name="Switch to low-cost").click()
    error = page.locator(".Toastify__toast").filter(has_text="Kernel not moved")
    await expect(error).to_be_visible(timeout=30_000)
    await expect(error).to_contain_text("all 1 slot(s) of the local backend are in use")
    await error.get_by_role("button", name="Details").click()
    details = page.locator(".jp-Dialog")
    await expect(details).to_contain_text(
        "Untitled.ipynb: could not move the kernel to a low-cost T4 instance: all 1 slot(s) "
        "of the local backend are in use; stop a kernel, or use a regular instance"
    )
    await page.keyboard.press("Escape")
    await expect(details).to_have_count(0)
    await expect(switch(page)).to_have_attribute("aria-checked", "false")
    await expect(switch(page)).to_be_enabled()
    assert not any("lowcost" in e.lower() or "uncaught" in e for e in browser.errors), (
        browser.errors
    )


@pytest.mark.lab(config={"LowCostApp": {"demo": True}, "LocalBackend": {"slots": 2}})
async def test_a_demo_server_is_labelled_as_one(lab: Lab, browser: Any, screenshot: Any) -> None:
    page = await browser.open(lab)
    await new_notebook(page)
    await switch(page).click()
    dialog = page.locator(".jp-Dialog")
    await expect(dialog.locator(".jp-LowCost-demo")).to_have_text(
        "Demo server (LowCostApp.demo): its low-cost instances stop after 10 minutes "
        "(not 24 hours) and are interrupted at random, about every 5 minutes on average, "
        "with 30 s notice."
    )
    await expect(dialog).to_contain_text("always shut down after 10 minutes")
    await screenshot(dialog.locator(".jp-Dialog-content"), "dialog-demo")
    await dialog.get_by_label("Instance type").select_option("T4")
    await dialog.get_by_role("button", name="Switch to low-cost").click()
    await expect(switch(page)).to_have_attribute("aria-checked", "true", timeout=60_000)
    status = status_item(page)
    # (a random interruption may already have come: its countdown is labelled the same)
    await expect(status).to_contain_text(
        re.compile(r"^Demo · Low-cost T4 · (9:\d\d left|interruption in)")
    )
    assert "Demo server (LowCostApp.demo)" in (await status.get_attribute("title"))
    await screenshot(page.locator("#jp-main-statusbar"), "statusbar-demo")
