"""The Low-cost switch in JupyterLab, clicked in a real Chromium, on a server whose backend
is ``kubernetes``: the notebook's kernel moves to a pod on the cluster's spot node and back
to a pod on its on-demand node, its variables with it.

The server is ``jupyter lab`` in a subprocess (tests/browser/lab.py), configured for the
test cluster through its config file; Chromium is driven through Playwright's async API on
pytest-jupyter's event loop, as in tests/browser. Screenshots of each step go to
tests/artifacts/kubernetes-*.png.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser.lab import CHROMIUM_ARGS, Lab, find_chromium, open_lab, run_cell, wait_kernel_idle
from kubernetes_cluster import KubernetesCluster, _python_mounts

from .conftest import CHECKOUT, KUBERNETES_CONFIG

ARTIFACTS = Path(__file__).parent.parent / "artifacts"
OURS = "app.kubernetes.io/managed-by=jupyter-lowcost"


@pytest.fixture
def lab(
    tmp_path: Path, kubernetes_cluster: KubernetesCluster, kube_namespace: str
) -> Iterator[Lab]:
    """``jupyter lab`` whose backend runs kernels as pods in this test's namespace; stopped
    (its kernels shut down) before the namespace goes."""
    config: dict[str, Any] = json.loads(json.dumps(KUBERNETES_CONFIG))
    config["KubernetesBackend"].update(
        namespace=kube_namespace,
        kubeconfig=kubernetes_cluster.env["KUBECONFIG"],
        # The server's data folder (checkpoints) is under tmp_path: the pods see it too.
        host_paths=sorted({*_python_mounts(), CHECKOUT, str(tmp_path)}, key=len),
    )
    server = Lab(tmp_path / "lab", config)
    server.start()
    yield server
    server.stop()
    print(server.log()[-5000:])  # pytest shows it when the test failed


@pytest.fixture
def page(jp_asyncio_loop: asyncio.AbstractEventLoop, lab: Lab) -> Iterator[Any]:
    """A Chromium page on ``lab`` once JupyterLab has loaded (an AssertionError saying how
    to install Chromium when there is none); ``page.errors``: its uncaught errors."""
    from playwright.async_api import async_playwright

    executable = find_chromium()
    run = jp_asyncio_loop.run_until_complete
    playwright = run(async_playwright().start())
    try:
        browser = run(playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS))
        try:
            made = run(open_lab(browser, lab))
            made.errors = []
            made.on("pageerror", lambda error: made.errors.append(f"uncaught: {error}"))
            yield made
        finally:
            run(browser.close())
    finally:
        run(playwright.stop())


@pytest.fixture
def screenshot() -> Callable[..., Any]:
    """``await screenshot(page_or_locator, "name")`` saves tests/artifacts/kubernetes-<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)

    async def take(target: Any, name: str) -> Path:
        path = ARTIFACTS / f"kubernetes-{name}.png"
        await target.screenshot(path=str(path))
        return path

    return take


def switch(page: Any) -> Any:
    return page.get_by_role("switch", name="Low-cost")


def status_item(page: Any) -> Any:
    return page.get_by_role("status", name="Low-cost instance")


def kernel_pods(cluster: KubernetesCluster, namespace: str, kernel_id: str) -> list[dict[str, Any]]:
    """The pods of ours labelled with ``kernel_id``, those being deleted included."""
    selector = f"{OURS},jupyter-lowcost/kernel={kernel_id[:63]}"
    return cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")[
        "items"
    ]


async def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` (without blocking the loop for long) until it returns something
    true; that value."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < end, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.2)


def the_running_pod(cluster: KubernetesCluster, namespace: str, kernel_id: str) -> Any:
    """The kernel's one pod when it is the only one (no other one still being deleted) and
    it runs; None otherwise."""
    pods = kernel_pods(cluster, namespace, kernel_id)
    if len(pods) != 1 or pods[0]["metadata"].get("deletionTimestamp"):
        return None
    return pods[0] if pods[0]["status"].get("phase") == "Running" else None


def in_pod(text: str, pod: dict[str, Any]) -> str:
    """A cell that prints ``text``, x, ``in pod`` and whether the kernel's process is in
    ``pod``'s container (its id, which the node's dockerd names the container's cgroup
    after, is in the process's cgroup paths)."""
    [container] = pod["status"]["containerStatuses"]
    container_id = container["containerID"].split("://")[-1]
    assert container_id, pod["status"]
    return (
        f"container = '{container_id}'\n"
        f"print('{text}', x, 'in pod', container in open('/proc/self/cgroup').read())"
    )


@pytest.mark.timeout(300)
async def test_the_switch_moves_the_kernel_to_a_spot_pod_and_back_to_an_on_demand_one(
    lab: Lab,
    page: Any,
    screenshot: Any,
    kubernetes_cluster: KubernetesCluster,
    kube_namespace: str,
) -> None:
    from playwright.async_api import expect

    cluster = kubernetes_cluster
    # A new notebook from the launcher; its kernel starts on the server's machine.
    await page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    await wait_kernel_idle(page)
    await expect(switch(page)).to_have_attribute("aria-checked", "false")
    kernel_id = lab.only_kernel()
    assert kernel_pods(cluster, kube_namespace, kernel_id) == []
    await run_cell(page, "x = 42\nprint('x =', x)", "x = 42")
    await screenshot(page, "1-notebook-before")

    # The switch, clicked; the dialog warns about prices and interruptions.
    await switch(page).click()
    dialog = page.locator(".jp-Dialog")
    await expect(dialog).to_contain_text("Run this notebook on a low-cost instance?")
    await dialog.get_by_label("Instance type").select_option("T4")
    await expect(dialog).to_contain_text("can be interrupted at any time, even in the first")
    await expect(dialog).to_contain_text("lost on an interruption unless it was checkpointed")
    await screenshot(dialog.locator(".jp-Dialog-content"), "2-dialog-on")
    await dialog.get_by_role("button", name="Switch to low-cost").click()

    # The switch flips with the first event of the new instance and says "T4 moving…" (and
    # is disabled) until the page has reconnected to the kernel in its new pod. A cell run
    # in that window stays at [*] with no output (seen here), so this waits for the end of
    # the move, as the notification tells a person to.
    await expect(switch(page)).to_have_attribute("aria-checked", "true", timeout=120_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("T4", timeout=60_000)
    await expect(switch(page)).to_be_enabled()
    await expect(status_item(page)).to_contain_text("Low-cost T4", timeout=30_000)
    await expect(status_item(page)).not_to_contain_text("moving")
    await expect(
        page.locator(".Toastify__toast").filter(has_text="now runs on a low-cost T4")
    ).to_be_visible()
    # The cluster says so: the kernel's one pod runs on the spot node.
    pod = await wait_for(
        lambda: the_running_pod(cluster, kube_namespace, kernel_id), 60, "the kernel's spot pod"
    )
    assert pod["spec"]["nodeName"] == cluster.spot_node, pod["spec"]
    assert pod["metadata"]["labels"]["jupyter-lowcost/tier"] == "low-cost"
    spot_pod = pod["metadata"]["name"]
    model = lab.api("GET", f"kernels/{kernel_id}")
    assert model["placement"] == {"instance_type": "T4", "low_cost": True, "tier": "low-cost"}
    assert model["instance"]["state"] == "running"
    assert lab.only_kernel() == kernel_id  # the same kernel, moved

    # x came along, and the cell ran in that pod's container.
    await wait_kernel_idle(page)
    output = await run_cell(page, in_pod("x is", pod), "x is 42 in pod")
    assert "x is 42 in pod True" in output, output
    await expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=30_000)
    await screenshot(page, "3-notebook-on-spot-pod")
    await screenshot(page.locator("#jp-main-statusbar"), "4-statusbar-low-cost")

    # Off again: the switch asks first, then the kernel moves to an on-demand pod.
    await wait_kernel_idle(page)
    await switch(page).click()
    dialog = page.locator(".jp-Dialog")
    await expect(dialog).to_contain_text("Move this notebook back to a regular instance?")
    await screenshot(dialog.locator(".jp-Dialog-content"), "5-dialog-off")
    await dialog.get_by_role("button", name="Move to regular").click()
    await expect(switch(page)).to_have_attribute("aria-checked", "false", timeout=120_000)
    await expect(page.locator(".jp-LowCost-type")).to_have_text("T4", timeout=60_000)
    await expect(switch(page)).to_be_enabled()
    await expect(status_item(page)).to_contain_text("Regular T4", timeout=30_000)
    await expect(status_item(page)).not_to_contain_text("moving")
    await expect(
        page.locator(".Toastify__toast").filter(has_text="now runs on a regular T4")
    ).to_be_visible()

    pod = await wait_for(
        lambda: the_running_pod(cluster, kube_namespace, kernel_id),
        60,
        "the kernel's on-demand pod, and its spot pod gone",
    )
    assert pod["spec"]["nodeName"] == cluster.on_demand_node, pod["spec"]
    assert pod["metadata"]["labels"]["jupyter-lowcost/tier"] == "regular"
    assert pod["metadata"]["name"] != spot_pod
    placement = lab.api("GET", f"kernels/{kernel_id}")["placement"]
    assert placement == {"instance_type": "T4", "low_cost": False, "tier": "regular"}
    assert lab.only_kernel() == kernel_id

    await wait_kernel_idle(page)
    output = await run_cell(page, in_pod("x is still", pod), "x is still 42 in pod")
    assert "x is still 42 in pod True" in output, output
    await expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=30_000)
    await screenshot(page, "6-notebook-on-demand-pod")
    await screenshot(page.locator("#jp-main-statusbar"), "7-statusbar-regular")
    assert not page.errors, page.errors

    # Shut down from the server: no pod of ours is left.
    lab.api("DELETE", f"/api/kernels/{kernel_id}")
    await wait_for(
        lambda: (
            not cluster.api(
                "GET", f"/api/v1/namespaces/{kube_namespace}/pods?labelSelector={OURS}"
            )["items"]
        ),
        60,
        "no pod of ours left after the kernel's shutdown",
    )
