"""One description of the REST API's shapes: the server answers what its schemas say, and
the front end's types are generated from those schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import (
    EventRecorder,
    checkpointed,
    execute,
    moved,
    start_lowcost_kernel,
    wait_until,
)
from job_notebooks import notebook_of, ten_cells, until_running_cell, until_state

from jupyter_lowcost.server import rest_responses as shapes
from jupyter_lowcost.server.events import JOB_SCHEMA_ID
from jupyter_lowcost.server.typescript import generate

REST_TS = Path(__file__).parent.parent / "labextension" / "src" / "rest.ts"


def check(model: Any, schema: dict[str, Any]) -> None:
    jsonschema.validate(model, schema, cls=jsonschema.Draft202012Validator)


def test_the_front_ends_types_are_generated_from_the_schemas() -> None:
    assert REST_TS.read_text() == generate(), (
        "labextension/src/rest.ts is not what the schemas say: run "
        "`python -m jupyter_lowcost.server.typescript labextension/src/rest.ts`"
    )
    # The front end takes its REST types from that file only.
    api_ts = (REST_TS.parent / "api.ts").read_text()
    assert "export interface" not in api_ts


def test_a_field_the_schemas_do_not_know_is_caught() -> None:
    model = {
        "instance_type": "T4",
        "low_cost": True,
        "tier": "low-cost",
    }
    check(model, shapes.PLACEMENT)
    with pytest.raises(jsonschema.ValidationError, match="'zone' was unexpected"):
        check({**model, "zone": "us-central1-a"}, shapes.PLACEMENT)
    with pytest.raises(jsonschema.ValidationError, match="'tier' is a required property"):
        check({"instance_type": "T4", "low_cost": True}, shapes.PLACEMENT)


async def test_every_answer_of_the_server_has_the_shape_its_schema_says(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    status, types = await api("GET", "instance-types")
    assert status == 200 and types
    for itype in types:
        check(itype, shapes.INSTANCE_TYPE)
    status, server = await api("GET", "status")
    check(server, shapes.STATUS)

    body = await start_lowcost_kernel(api, "T4")
    check(body, shapes.STARTED_KERNEL)
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    status, kernel = await api("GET", f"kernels/{kernel_id}")
    check(kernel, shapes.KERNEL)
    assert kernel["restored"] is None and kernel["checkpoint_status"] is None

    # After an interruption and a resume, every part of the kernel's model is filled in.
    await execute(jp_serverapp, kernel_id, "x = 41")
    await checkpointed(jp_serverapp, kernel_id)  # (no notice: nothing to finish a write)
    status, instance = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    assert status == 202
    check(instance, shapes.INSTANCE)

    async def resumed() -> bool:
        status, model = await api("GET", f"kernels/{kernel_id}")
        return model["restored"] is not None and model["instance"]["id"] != first

    await wait_until(resumed, timeout=60)
    await wait_until(lambda: moved(api, kernel_id))
    status, kernel = await api("GET", f"kernels/{kernel_id}")
    check(kernel, shapes.KERNEL)
    check(kernel["restored"], shapes.RESTORED)
    assert [i["state"] for i in kernel["history"]] == ["interrupted", "running"]

    status, moved_kernel = await api("PUT", f"kernels/{kernel_id}", {"low_cost": False})
    assert status == 200, moved_kernel
    check(moved_kernel, shapes.KERNEL)
    status, instances = await api("GET", "instances")
    assert len(instances) == 3
    for instance in instances:
        check(instance, shapes.INSTANCE)
    status, one = await api("GET", f"instances/{first}")
    check(one, shapes.INSTANCE)

    for event in instance_events.events:
        check(event, shapes.INSTANCE_EVENT)
    assert {e["state"] for e in instance_events.events} >= {"pending", "running", "interrupted"}


async def test_the_jobs_answers_and_events_have_the_shapes_their_schemas_say(
    api: Any, jp_serverapp: Any, tmp_path: Path
) -> None:
    recorder = EventRecorder()
    jp_serverapp.event_logger.add_listener(schema_id=JOB_SCHEMA_ID, listener=recorder.listener)
    notebook, log, go = ten_cells(tmp_path, wait_in=3)
    status, job = await api("POST", "jobs", {"notebook": notebook, "instance_type": "T4"})
    assert status == 201, job
    check(job, shapes.JOB)
    first = await until_running_cell(api, job["id"], 3)
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 0})
    await until_running_cell(api, job["id"], 3, not_on=(first,))
    go.touch()
    # A failing cell fills in the error.
    status, failing = await api("POST", "jobs", {"notebook": notebook_of(["1/0"])})
    ended = await until_state(api, failing["id"], "failed")
    check(ended, shapes.JOB)
    check(ended["error"], shapes.JOB_ERROR)
    model = await until_state(api, job["id"], "succeeded")
    check(model, shapes.JOB)
    check(model["interruptions"][0], shapes.JOB_INTERRUPTION)
    status, jobs = await api("GET", "jobs")
    for each in jobs:
        check(each, shapes.JOB)
    status, text = await api("GET", f"jobs/{job['id']}/log?offset=0")
    check(text, shapes.JOB_LOG)
    assert text["offset"] == len(text["text"].encode())
    for event in recorder.events:
        check(event, shapes.JOB)
    assert {e["state"] for e in recorder.events} >= {"running", "resuming", "succeeded", "failed"}
