"""What a person sees when the server interrupts, recovers or caps a low-cost kernel, when
the cloud warns of a risk or its notice cannot be read, and when the server extension is
missing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from cloud_metadata import AwsMetadata, Emulator
from conftest import wait_until
from playwright.async_api import expect

from browser.lab import Lab, new_notebook, run_cell, wait_kernel_idle
from browser.test_switch import status_item, switch

INSTANCE_EVENT = "https://events.jupyter.org/jupyter_lowcost/instance/v1"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"


def toast(page: Any, text: str) -> Any:
    return page.locator(".Toastify__toast").filter(has_text=text)


async def low_cost_notebook(lab: Lab, browser: Any, instance_type: str = "T4") -> tuple[Any, str]:
    """A page with a new notebook whose kernel runs low-cost; the page and its instance id."""
    page = await browser.open(lab)
    await new_notebook(page)
    output = await run_cell(page, f"%lowcost on --type {instance_type}", "Moving this kernel")
    await expect(status_item(page)).to_contain_text(
        re.compile(rf"Low-cost {instance_type} · \d+:\d\d:\d\d left"), timeout=30_000
    )
    instance = lab.api("GET", f"kernels/{lab.only_kernel()}")["instance"]
    # The cell shows what the magic said, not what the old kernel printed as it stopped.
    cell_output = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-OutputArea")
    assert (await cell_output.inner_text()).strip() == output.strip()
    assert "Task was destroyed" not in output
    return page, instance["id"]


async def test_interruption_notice_counts_down_then_the_kernel_is_relaunched(
    lab: Lab, browser: Any, screenshot: Any
) -> None:
    page, instance_id = await low_cost_notebook(lab, browser)
    await run_cell(page, "answer = 42\nprint('set')", "set")
    lab.api("POST", f"instances/{instance_id}/interrupt", {"notice_seconds": 8})

    notice = toast(page, "Interruption in")
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("the low-cost T4 instance of Untitled.ipynb")
    first = await notice.inner_text()
    await expect(notice).not_to_have_text(first)  # a live countdown
    await expect(status_item(page)).to_contain_text(re.compile(r"interruption in \d+ s"))
    await expect(notice).not_to_have_class(re.compile("Toastify--animate"))  # done sliding in
    await screenshot(page, "notice")

    interrupted = toast(page, "was interrupted")
    await expect(interrupted).to_be_visible(timeout=30_000)
    await expect(interrupted).to_contain_text("Restarting the kernel on a new low-cost instance")
    await expect(notice).to_have_count(0)
    relaunched = toast(page, "relaunched on a new low-cost T4 instance")
    await expect(relaunched).to_be_visible(timeout=60_000)
    await expect(relaunched).to_contain_text("1 variable restored")  # from its checkpoint
    await expect(relaunched).not_to_have_class(re.compile("Toastify--animate"))
    await screenshot(page, "resumed")
    await expect(switch(page)).to_have_attribute("aria-checked", "true")
    await expect(status_item(page)).to_contain_text(re.compile(r"Low-cost T4 · 23:59:\d\d left"))

    # JupyterLab's own "the kernel appears to have died" dialog does not cover the page:
    # the toasts say what happened, and the variables came back.
    await wait_kernel_idle(page)
    await expect(page.locator(".jp-Dialog")).to_have_count(0)
    # The toast's Details say why, in the server's words.
    await interrupted.get_by_role("button", name="Details").click()
    details = page.locator(".jp-Dialog").filter(has_text="Low-cost instance")
    await expect(details).to_contain_text("interruption injected through the REST API")
    await details.get_by_role("button", name="Ok").click()
    await wait_kernel_idle(page)
    new_instance = lab.api("GET", f"kernels/{lab.only_kernel()}")["instance"]
    assert new_instance["id"] != instance_id
    assert new_instance["low_cost"] is True
    output = await run_cell(page, "%lowcost", "low-cost T4")
    assert new_instance["id"] in output
    await run_cell(page, "print(answer + 1)", "43")
    assert not [e for e in browser.errors if "uncaught" in e or "lowcost" in e.lower()]


#: A class whose objects take minutes to save once a notice has come (one line: the
#: editor indents what is typed after a colon): the notice's checkpoint cannot be written.
SLOW = (
    "Slow = type('Slow', (), {'__reduce__': lambda self: (__import__('time').sleep("
    "300 if __import__('jupyter_lowcost').notice else 0), (Slow, ()))[1]})"
)


async def test_a_resume_that_misses_cells_says_which_to_run_again(
    lab: Lab, browser: Any, screenshot: Any
) -> None:
    """The notice came during a cell, and the state it had made could not be written
    before the instance went: the toast says which cell to run again, and its Details
    where the kernel is back at."""
    page, instance_id = await low_cost_notebook(lab, browser)
    await run_cell(page, "x = 1\nprint('one')", "one")
    await run_cell(page, SLOW + "\nslow = Slow()\nx = 2\nprint('two')", "two")
    written = "installed().wait_for_write(60)"
    await run_cell(
        page,
        f"print(__import__('jupyter_lowcost.kernel.checkpointing', fromlist=['_']).{written})",
        "True",
    )
    # Still running when the notice comes.
    await run_cell(
        page, "y = 3; print('three', flush=True); __import__('time').sleep(600)", "three"
    )
    prompts = [await p.inner_text() for p in await page.locator(".jp-InputPrompt").all()]
    assert prompts[4] == "[*]:", prompts
    back = int(re.sub(r"\D", "", prompts[3]))
    running = back + 1
    lab.api("POST", f"instances/{instance_id}/interrupt", {"notice_seconds": 2})

    relaunched = toast(page, "relaunched on a new low-cost T4 instance")
    await expect(relaunched).to_be_visible(timeout=60_000)
    await expect(relaunched).to_contain_text(f"run cell [{running}] again;")
    await expect(relaunched).not_to_have_class(re.compile("Toastify--animate"))
    await screenshot(page, "resumed-cells-lost")
    await relaunched.get_by_role("button", name="Details").click()
    details = page.locator(".jp-Dialog")
    await expect(details).to_contain_text(
        f"at cell [{back}]: the changes of cell [{running}] are lost"
    )
    await details.get_by_role("button", name="Ok").click()
    await wait_kernel_idle(page)
    await run_cell(page, "print(x, 'y' in globals())", "2 False")


@pytest.mark.lab(config={"LowCostApp": {"recovery_policy": "fallback"}})
async def test_fallback_turns_the_switch_off(lab: Lab, browser: Any) -> None:
    page, instance_id = await low_cost_notebook(lab, browser)
    lab.api("POST", f"instances/{instance_id}/interrupt", {"notice_seconds": 1})
    await expect(toast(page, "Restarting the kernel on a regular instance")).to_be_visible(
        timeout=30_000
    )
    await expect(toast(page, "fell back to a regular T4 instance")).to_be_visible(timeout=60_000)
    await expect(switch(page)).to_have_attribute("aria-checked", "false")
    await expect(page.locator(".jp-LowCost-type")).to_have_text("T4")
    await expect(status_item(page)).to_contain_text("Regular T4 · $")


@pytest.mark.lab(
    config={"LowCostApp": {"lifetime_cap": 60, "cap_notice": 5}},
    settings={
        "capWarnings": [50],
        "defaultInstanceType": "A100-80G",
        "newNotebooksLowCost": True,
    },
)
async def test_settings_start_new_notebooks_low_cost_and_warn_before_the_cap(
    lab: Lab, browser: Any
) -> None:
    page = await browser.open(lab)
    await new_notebook(page)  # File > New > Notebook, through the launcher
    await expect(toast(page, "now runs on a low-cost A100-80G")).to_be_visible(timeout=60_000)
    await expect(switch(page)).to_have_attribute("aria-checked", "true")
    placement = lab.api("GET", f"kernels/{lab.only_kernel()}")["placement"]
    assert placement == {"instance_type": "A100-80G", "low_cost": True, "tier": "low-cost"}
    await expect(status_item(page)).to_contain_text(
        re.compile(r"Low-cost A100-80G · (1:00|\d\d s) left")
    )
    # The warning comes once the time left crosses the configured 50 s.
    warning = toast(page, "shuts down in")
    await expect(warning).to_be_visible(timeout=30_000)
    await expect(warning).to_contain_text(
        "The low-cost A100-80G instance of Untitled.ipynb shuts down in"
    )
    await expect(warning).to_contain_text("(its lifetime cap)")
    left = lab.api("GET", f"kernels/{lab.only_kernel()}")["instance"]["seconds_left"]
    assert left <= 50


@pytest.mark.lab(config={"ServerApp": {"jpserver_extensions": {"jupyter_lowcost": False}}})
async def test_without_the_server_extension_one_message_says_how_to_install_it(
    lab: Lab, browser: Any
) -> None:
    page = await browser.open(lab)
    hint = toast(page, "server extension is not running")
    await expect(hint).to_be_visible()
    await expect(hint).to_contain_text("pip install jupyter-lowcost")
    await new_notebook(page)
    await expect(switch(page)).to_be_disabled()
    assert "pip install jupyter-lowcost" in (await switch(page).get_attribute("title"))
    await expect(hint).to_have_count(1)  # said once, not once per notebook
    await run_cell(page, "print('still works')", "still works")
    # Nothing of ours throws; the browser only logs the failed request itself.
    assert [e for e in browser.errors if "Failed to load resource" not in e] == []


async def test_a_failing_checkpoint_is_shown_until_checkpoints_work_again(
    lab: Lab, browser: Any, screenshot: Any
) -> None:
    """The kernel reports a checkpoint it could not write (a full disk: tests/test_storage.py
    fills a real one) through the REST API; here the same report comes from the test."""
    page, _ = await low_cost_notebook(lab, browser)
    kernel_id = lab.only_kernel()
    lab.api(
        "POST",
        f"kernels/{kernel_id}/checkpoint",
        {
            "ok": False,
            "error": "could not write the checkpoint in /data: No space left on device",
            "checkpoint_id": "00000007",
        },
    )
    failed = toast(page, "a checkpoint of the variables failed")
    await expect(failed).to_be_visible()
    await expect(failed).to_contain_text("Untitled.ipynb")
    await expect(failed).to_contain_text("An interruption now resumes from checkpoint 00000007")
    await expect(failed).not_to_have_class(re.compile("Toastify--animate"))
    await screenshot(page, "checkpoint-failed")
    await failed.get_by_role("button", name="Details").click()
    details = page.locator(".jp-Dialog").filter(has_text="Low-cost instance")
    await expect(details).to_contain_text("No space left on device")
    await details.get_by_role("button", name="Ok").click()

    lab.api("POST", f"kernels/{kernel_id}/checkpoint", {"ok": True, "checkpoint_id": "00000008"})
    await expect(toast(page, "checkpoints work again")).to_be_visible()
    await expect(failed).to_have_count(0)


# -- the cloud's own metadata, from a local emulator (tests/cloud_metadata.py) ----------


def watching_aws(start_lab: Callable[..., Lab], emulator: Emulator) -> Lab:
    """A lab whose low-cost kernels' launchers read AWS's instance metadata from
    ``emulator``."""
    return start_lab(
        config={"LowCostApp": {"cloud_notices": "aws", "cloud_metadata_url": emulator.url}}
    )


def emit_instance_event(lab: Lab, instance: dict[str, Any], state: str, reason: str) -> None:
    """An instance event of ``instance``, through the server's own event bus
    (``POST api/events``), as the server emits them."""
    data = {
        "instance_id": instance["id"],
        "kernel_id": instance["kernel_id"],
        "state": state,
        "reason": reason,
        "deadline": None,
        "instance_type": instance["instance_type"],
        "tier": instance["tier"],
        "recovery": None,
    }
    lab.api("POST", "/api/events", {"schema_id": INSTANCE_EVENT, "version": "1", "data": data})


async def test_a_rebalance_recommendation_warns_without_a_countdown(
    aws: AwsMetadata, start_lab: Callable[..., Lab], browser: Any, screenshot: Any
) -> None:
    lab = watching_aws(start_lab, aws)
    page, instance_id = await low_cost_notebook(lab, browser)
    await wait_until(lambda: ("GET", REBALANCE) in aws.requests)  # (the launcher polls)
    aws.rebalance()

    warning = toast(page, "may be interrupted soon")
    await expect(warning).to_be_visible(timeout=20_000)
    await expect(warning).to_contain_text(
        "The low-cost T4 instance of Untitled.ipynb may be interrupted soon."
    )
    await expect(warning).not_to_have_class(re.compile("Toastify--animate"))
    # A risk, not a notice: no countdown, neither in a toast nor in the status bar.
    await expect(status_item(page)).to_contain_text(re.compile(r"Low-cost T4 · 23:59:\d\d left"))
    await expect(status_item(page)).not_to_contain_text("interruption")
    await expect(toast(page, "Interruption in")).to_have_count(0)
    await screenshot(page, "early-warning")

    await warning.get_by_role("button", name="Details").click()
    details = page.locator(".jp-Dialog").filter(has_text="Low-cost instance")
    await expect(details).to_contain_text(
        re.compile(r"AWS rebalance recommendation at \S+: this Spot Instance is at elevated risk")
    )
    await details.get_by_role("button", name="Ok").click()
    instance = lab.api("GET", f"instances/{instance_id}")
    assert (instance["state"], instance["notice_deadline"]) == ("running", None)
    await run_cell(page, "print('still here')", "still here")
    assert not [e for e in browser.errors if "uncaught" in e or "lowcost" in e.lower()]


async def test_a_launcher_that_cannot_read_the_spot_notice_is_said_once_per_instance(
    aws: AwsMetadata,
    start_lab: Callable[..., Lab],
    browser: Any,
    screenshot: Any,
) -> None:
    """The server reports it on the instance (``notice_warning``) and as an instance event
    whose reason starts with "warning: "; a page says it once per instance."""
    aws.token_answer = 403  # (and no token-less reads: the spot notice cannot be read)
    lab = watching_aws(start_lab, aws)
    page, instance_id = await low_cost_notebook(lab, browser)

    warning = toast(page, "cannot get interruption notices")
    await expect(warning).to_be_visible(timeout=30_000)
    await expect(warning).to_contain_text(
        "The low-cost T4 instance of Untitled.ipynb cannot get interruption notices: "
        "interruptions will come without warning."
    )
    await expect(warning).not_to_have_class(re.compile("Toastify--animate"))
    await expect(status_item(page)).to_contain_text(re.compile(r"Low-cost T4 · 23:59:\d\d left"))
    await screenshot(page, "no-notices")
    instance = lab.api("GET", f"instances/{instance_id}")
    assert instance["state"] == "running"
    said = instance["notice_warning"]
    assert isinstance(said, str) and said, instance
    await warning.get_by_role("button", name="Details").click()
    details = page.locator(".jp-Dialog").filter(has_text="Low-cost instance")
    await expect(details).to_contain_text(said)  # the server's own words
    await details.get_by_role("button", name="Ok").click()

    # The same report again says nothing new. (The early warning after it shows that the
    # page has received both.)
    emit_instance_event(lab, instance, "running", f"warning: {said}")
    emit_instance_event(lab, instance, "running", "early warning: a test's risk")
    await expect(toast(page, "may be interrupted soon")).to_be_visible()
    await expect(warning).to_have_count(1)

    # A page opened later learns it from the instance, and says it once too.
    await page.reload()
    await page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
    await expect(warning).to_be_visible(timeout=30_000)
    await expect(warning).to_contain_text("Untitled.ipynb cannot get interruption notices")
    emit_instance_event(lab, instance, "running", f"warning: {said}")
    emit_instance_event(lab, instance, "running", "early warning: a test's risk")
    await expect(toast(page, "may be interrupted soon")).to_be_visible()
    await expect(warning).to_have_count(1)
    assert not [e for e in browser.errors if "uncaught" in e or "lowcost" in e.lower()]
