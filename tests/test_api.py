"""The REST API: the catalog, low-cost kernels that run code, auth, and bad input."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import execute, process_alive, start_lowcost_kernel
from tornado.httpclient import HTTPClientError

ROUTES = [
    ("GET", "instance-types"),
    ("GET", "status"),
    ("POST", "kernels"),
    ("GET", "kernels/abc"),
    ("PUT", "kernels/abc"),
    ("GET", "instances"),
    ("GET", "instances/abc"),
    ("DELETE", "instances/abc"),
    ("POST", "instances/abc/interrupt"),
]


async def test_catalog_lists_prices_discounts_and_the_cap(api: Any) -> None:
    status, types = await api("GET", "instance-types")
    assert status == 200
    assert len(types) >= 4
    by_name = {t["name"]: t for t in types}
    a100 = by_name["A100-80G"]
    assert a100["price_regular"] == 3.09 and a100["price_low_cost"] == 1.15
    assert a100["discount_percent"] == 63
    assert all(t["low_cost_lifetime_cap_seconds"] == 24 * 3600 for t in types)
    assert all(t["price_low_cost"] < t["price_regular"] for t in types)


@pytest.mark.lowcost(
    LowCostApp={
        "instance_types": [
            {"name": "tiny", "gpu": "none", "price_regular": 2.0, "price_low_cost": 0.5}
        ],
        "lifetime_cap": 7200.0,
    }
)
async def test_catalog_and_cap_come_from_config(api: Any) -> None:
    status, types = await api("GET", "instance-types")
    assert status == 200
    assert [t["name"] for t in types] == ["tiny"]
    assert types[0]["discount_percent"] == 75
    assert types[0]["low_cost_lifetime_cap_seconds"] == 7200


async def test_low_cost_kernel_starts_on_an_instance_and_runs_code(
    api: Any, jp_serverapp: Any
) -> None:
    body = await start_lowcost_kernel(api)
    kernel, instance = body["kernel"], body["instance"]
    assert instance["state"] == "running"
    assert instance["tier"] == "low-cost" and instance["instance_type"] == "A100-80G"
    assert instance["kernel_id"] == kernel["id"]
    assert instance["price_per_hour"] == 1.15 and instance["regular_price_per_hour"] == 3.09
    assert instance["expires"] is not None and 0 < instance["seconds_left"] <= 24 * 3600

    # The kernel is a standard one: the server's kernels API knows it.
    assert kernel["id"] in jp_serverapp.kernel_manager
    # It runs in the launcher's process that the local backend started for the instance.
    provisioner = jp_serverapp.kernel_manager.get_kernel(kernel["id"]).provisioner
    pid = await execute(jp_serverapp, kernel["id"], "import os; print(os.getpid())")
    manager = jp_serverapp.web_app.settings["jupyter_lowcost_manager"]
    assert int(pid) == manager.current_instance(kernel["id"]).backend_state["pid"]
    assert provisioner.has_process
    assert (await execute(jp_serverapp, kernel["id"], "print(6 * 7)")).strip() == "42"

    status, model = await api("GET", f"kernels/{kernel['id']}")
    assert status == 200
    assert model["placement"] == {"instance_type": "A100-80G", "low_cost": True, "tier": "low-cost"}
    assert model["instance"]["id"] == instance["id"]

    status, server = await api("GET", "status")
    assert server["backend"] == "local" and server["live_instances"] == 1
    assert server["capacity"]["used"] == 1


async def test_delete_instance_stops_it_and_its_kernel(api: Any, jp_serverapp: Any) -> None:
    body = await start_lowcost_kernel(api)
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    manager = jp_serverapp.web_app.settings["jupyter_lowcost_manager"]
    pid = manager.current_instance(kernel_id).backend_state["pid"]

    status, _ = await api("DELETE", f"instances/{instance_id}")
    assert status == 204
    status, model = await api("GET", f"instances/{instance_id}")
    assert model["state"] == "terminated" and model["ended"] is not None
    assert kernel_id not in jp_serverapp.kernel_manager
    assert not process_alive(pid)
    status, again = await api("DELETE", f"instances/{instance_id}")
    assert status == 409 and "already ended" in again["message"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_the_token(jp_fetch: Any, method: str, path: str) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(
            "lowcost",
            "api",
            *path.split("/"),
            method=method,
            headers={"Authorization": ""},
            body="{}" if method in ("POST", "PUT") else None,
        )
    assert caught.value.code == 403


async def test_bad_input_is_refused_with_a_message_and_changes_nothing(
    api: Any, jp_serverapp: Any
) -> None:
    body = await start_lowcost_kernel(api)
    kernel_id, instance_id = body["kernel"]["id"], body["instance"]["id"]
    before = await _snapshot(api, jp_serverapp)

    cases = [
        ("POST", "kernels", "{not json", 400, "not JSON"),
        ("POST", "kernels", "[1, 2]", 400, "JSON object"),
        ("POST", "kernels", {"instance_type": "Z999"}, 400, "unknown instance type 'Z999'"),
        ("POST", "kernels", {"instance_type": "T4", "low_cost": "yes"}, 400, "low_cost must be"),
        ("POST", "kernels", {"name": "no-such-kernel"}, 400, "no kernelspec named"),
        ("POST", "kernels", {"lowcost": True}, 400, "unknown field(s) lowcost"),
        ("GET", "kernels/nope", None, 404, "no kernel with id 'nope'"),
        ("PUT", "kernels/nope", {"low_cost": False}, 404, "no kernel with id"),
        ("PUT", f"kernels/{kernel_id}", "{", 400, "not JSON"),
        ("PUT", f"kernels/{kernel_id}", {}, 400, "say where to move"),
        ("PUT", f"kernels/{kernel_id}", {"instance_type": "Z999"}, 400, "unknown instance type"),
        (
            "PUT",
            f"kernels/{kernel_id}",
            {"low_cost": True, "instance_type": "A100-80G"},
            409,
            "already runs on a low-cost A100-80G instance",
        ),
        ("GET", "instances/nope", None, 404, "no instance with id 'nope'"),
        ("DELETE", "instances/nope", None, 404, "no instance with id"),
        ("POST", "instances/nope/interrupt", {"notice_seconds": 5}, 404, "no instance"),
        ("POST", f"instances/{instance_id}/interrupt", {}, 400, "notice_seconds is required"),
        (
            "POST",
            f"instances/{instance_id}/interrupt",
            {"notice_seconds": -1},
            400,
            "between 0 and",
        ),
        (
            "POST",
            f"instances/{instance_id}/interrupt",
            {"notice_seconds": 1e9},
            400,
            "between 0 and",
        ),
        (
            "POST",
            f"instances/{instance_id}/interrupt",
            {"notice_seconds": "5"},
            400,
            "must be a number",
        ),
        (
            "POST",
            f"instances/{instance_id}/interrupt",
            {"notice_seconds": True},
            400,
            "must be a number",
        ),
        ("POST", f"instances/{instance_id}/interrupt", "nope", 400, "not JSON"),
    ]
    for method, path, payload, code, words in cases:
        status, answer = await api(method, path, payload)
        assert status == code, (method, path, payload, answer)
        assert words in answer["message"], (method, path, answer["message"])
    assert await _snapshot(api, jp_serverapp) == before


async def test_regular_instances_are_not_interrupted(api: Any) -> None:
    body = await start_lowcost_kernel(api, "T4", low_cost=False)
    status, answer = await api(
        "POST", f"instances/{body['instance']['id']}/interrupt", {"notice_seconds": 1}
    )
    assert status == 409 and "regular instances are not interrupted" in answer["message"]


@pytest.mark.lowcost(LocalBackend={"slots": 1})
async def test_a_full_backend_refuses_a_low_cost_kernel_with_a_message(api: Any) -> None:
    await start_lowcost_kernel(api)
    status, answer = await api("POST", "kernels", {"instance_type": "T4", "low_cost": True})
    assert status == 503
    assert "all 1 slot(s) of the local backend are in use" in answer["message"]
    status, instances = await api("GET", "instances")
    assert [i["state"] for i in instances] == ["running"]


async def _snapshot(api: Any, serverapp: Any) -> Any:
    status, instances = await api("GET", "instances")
    kernels = sorted(serverapp.kernel_manager.list_kernel_ids())
    return [(i["id"], i["state"], i["tier"], i["instance_type"]) for i in instances], kernels


def _kernelspec(data_dir: Any, name: str, argv: list[str]) -> None:
    import json

    spec_dir = data_dir / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": name, "language": "python"})
    )


async def test_a_kernel_that_is_not_ipython_cannot_go_low_cost(
    api: Any, jp_data_dir: Any, jp_serverapp: Any
) -> None:
    _kernelspec(jp_data_dir, "shellish", ["/bin/sh", "-c", "sleep 60", "{connection_file}"])
    status, answer = await api("POST", "kernels", {"name": "shellish", "instance_type": "T4"})
    assert status == 400
    assert "only IPython kernels run on low-cost instances" in answer["message"]
    assert list(jp_serverapp.kernel_manager.list_kernel_ids()) == []


async def test_a_launch_that_fails_says_why(api: Any, jp_data_dir: Any, tmp_path: Any) -> None:
    broken = tmp_path / "bin" / "python"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'this python is broken' >&2\nexit 3\n")
    broken.chmod(0o755)
    _kernelspec(
        jp_data_dir, "broken", [str(broken), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    )
    status, answer = await api("POST", "kernels", {"name": "broken", "instance_type": "T4"})
    assert status == 500
    assert "the launcher exited before its kernel was ready" in answer["message"]
    assert "this python is broken" in answer["message"]
    status, instances = await api("GET", "instances")
    assert [i["state"] for i in instances] == ["failed"]
    assert "this python is broken" in instances[0]["reason"]


@pytest.mark.lowcost(KernelProvisionerFactory={"default_provisioner_name": "local-provisioner"})
async def test_a_kernel_of_another_provisioner_is_not_moved(
    api: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    import json

    response = await jp_fetch("api", "kernels", method="POST", body="{}")
    kernel_id = json.loads(response.body)["id"]
    status, answer = await api("PUT", f"kernels/{kernel_id}", {"low_cost": True})
    assert status == 409 and "LocalProvisioner, which cannot move it" in answer["message"]
    status, model = await api("GET", f"kernels/{kernel_id}")
    assert model["placement"] is None


async def test_interrupting_a_low_cost_kernel_stops_its_cell(
    api: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    body = await start_lowcost_kernel(api)
    kernel_id = body["kernel"]["id"]
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        msg_id = client.execute("import time\nprint('started', flush=True)\ntime.sleep(120)")
        while True:  # the cell is running once it has printed
            msg = await client.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="")
        reply = await client.get_shell_msg(timeout=30)
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    status, model = await api("GET", f"kernels/{kernel_id}")
    assert model["instance"]["id"] == body["instance"]["id"]  # same instance, still running
    assert model["instance"]["state"] == "running"
