"""Malformed requests on every route: a 4xx with a message, nothing changed, never a 5xx.

The last test sends generated requests (hypothesis) across every route and checks both
properties after each one.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any
from urllib.parse import quote, unquote

import nbformat
from conftest import start_lowcost_kernel, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_lowcost.server.rest_schemas import MAX_BODY_BYTES

NAN, INF = float("nan"), float("inf")

BODY_ROUTES = [
    ("POST", "kernels"),
    ("PUT", "kernels/{kernel}"),
    ("POST", "kernels/{kernel}/restored"),
    ("POST", "kernels/{kernel}/checkpoint"),
    ("POST", "instances/{instance}/interrupt"),
]


async def snapshot(api: Any, serverapp: Any) -> Any:
    """What a refused request must not change: instances, kernels, placements, events,
    jobs."""
    _, instances = await api("GET", "instances")
    _, jobs = await api("GET", "jobs")
    kernels = sorted(serverapp.kernel_manager.list_kernel_ids())
    models = []
    for kernel_id in kernels:
        _, model = await api("GET", f"kernels/{kernel_id}")
        models.append(
            (model["placement"], model["moving"], model["restored"], model["checkpoint_status"])
        )
    return (
        [(i["id"], i["state"], i["tier"], i["instance_type"]) for i in instances],
        kernels,
        models,
        [(j["id"], j["state"], j["reason"], j["cells_done"]) for j in jobs],
    )


async def start_one_kernel(api: Any) -> dict[str, str]:
    body = await start_lowcost_kernel(api, "T4")
    return {"kernel": body["kernel"]["id"], "instance": body["instance"]["id"]}


async def test_deeply_nested_json_is_refused_on_every_route(api: Any, jp_serverapp: Any) -> None:
    one_kernel = await start_one_kernel(api)
    before = await snapshot(api, jp_serverapp)
    deep = "[" * 100_000 + "]" * 100_000
    deep_object = '{"a":' * 100_000 + "1" + "}" * 100_000
    for method, route in BODY_ROUTES:
        path = route.format(**one_kernel)
        for body in (deep, deep_object):
            status, answer = await api(method, path, body[: MAX_BODY_BYTES - 1])
            assert status == 400, (method, path, status, answer)
            assert "nested too deeply" in answer["message"], answer
        # Nested inside a field, under the parser's limit: the field's type says no.
        field, others = {
            "kernels": ("path", {}),
            "kernels/{kernel}": ("instance_type", {}),
            "kernels/{kernel}/restored": ("checkpoint_id", {}),
            "kernels/{kernel}/checkpoint": ("error", {"ok": False}),
            "instances/{instance}/interrupt": ("notice_seconds", {}),
        }[route]
        nested = json.dumps({**others, field: [[[[[[[[[[[1]]]]]]]]]]]})
        status, answer = await api(method, path, nested)
        assert status == 400 and f"{field} must be" in answer["message"], (path, answer)
    assert await snapshot(api, jp_serverapp) == before


async def test_numbers_too_large_for_a_float_and_bodies_too_large(
    api: Any, jp_serverapp: Any
) -> None:
    one_kernel = await start_one_kernel(api)
    before = await snapshot(api, jp_serverapp)
    interrupt = f"instances/{one_kernel['instance']}/interrupt"
    for text in ("1" + "0" * 400, "-" + "9" * 400, "1e999", "-1e999", "NaN", "Infinity"):
        status, answer = await api("POST", interrupt, f'{{"notice_seconds": {text}}}')
        assert status == 400, (text, answer)
        # (1e999 is an infinity to Python's JSON parser)
        assert answer["message"].startswith(
            ("notice_seconds must be between 0 and", "notice_seconds must be a finite number")
        ), answer
        assert len(answer["message"]) < 200
    big = json.dumps({"path": "x" * (MAX_BODY_BYTES + 1)})
    status, answer = await api("POST", "kernels", big)
    assert status == 413 and "at most 65536 are accepted" in answer["message"]
    assert await snapshot(api, jp_serverapp) == before


async def test_wrong_types_in_every_field_of_restored_are_refused(
    api: Any, jp_serverapp: Any
) -> None:
    one_kernel = await start_one_kernel(api)
    before = await snapshot(api, jp_serverapp)
    path = f"kernels/{one_kernel['kernel']}/restored"
    wrong = {
        "checkpoint_id": [1, {"a": 1}, None, True],
        "taken_at": ["now", [], {}, True, -1, 1e300, NAN, INF, -INF],
        "variables": ["x", 3, [1], [None], {"a": 1}],
        "bytes": ["1", 1.5, -1, [], 2**70],
        "seconds": ["1", [], -3, NAN, INF],
        "not_restored": ["gen", [1], [{"name": 1, "type": "t", "why": "w"}], [{"name": "x"}]],
    }
    # NaN and the infinities (which Python's JSON parser reads, and every range lets
    # through) are named as what they are, wherever they are.
    for value in (NAN, INF):
        status, answer = await api("POST", path, {"variables": [], "taken_at": 1.0, "x": [value]})
        assert status == 400 and "unknown field" in answer["message"], answer
    status, answer = await api("POST", path, {"taken_at": NAN})
    assert answer["message"].startswith("taken_at must be a finite number, not NaN"), answer
    for field, values in wrong.items():
        for value in values:
            status, answer = await api("POST", path, {field: value})
            assert status == 400, (field, value, answer)
            assert field in answer["message"], (field, value, answer["message"])
    assert await snapshot(api, jp_serverapp) == before
    status, answer = await api(
        "POST",
        path,
        {"checkpoint_id": "00000003", "taken_at": 1.0, "variables": ["x"], "bytes": 10},
    )
    assert status == 201 and answer["variables"] == 1


def _mutating(method: str, route: str, body: Any) -> bool:
    """A well-formed request that would start, move, interrupt or stop a real kernel, or
    run a job: not what this test is about (the other tests do those), and slow."""
    if not isinstance(body, dict) or route.endswith(("restored", "checkpoint")):
        return False
    if route == "jobs" and method == "POST":
        # (a notebook that may be one: without "nbformat" and "cells", none is; garbage
        # or not, as a job's parameters may be NaN)
        notebook = body.get("notebook")
        return isinstance(notebook, dict) and {"nbformat", "cells"} <= set(notebook)
    if _garbage(body):
        return False  # (must be refused: sent)
    known = {"T4", "A100-80G", "L4", "H100-80G", "A10G"}
    if route == "kernels":
        instance_type = body.get("instance_type")
        return set(body) <= {"name", "instance_type", "low_cost", "path"} and (
            instance_type is None or (isinstance(instance_type, str) and instance_type in known)
        )
    if route == "kernels/{kernel}" and method == "PUT":
        return bool(body) and set(body) <= {"low_cost", "instance_type"}
    if route.endswith("interrupt"):
        value = body.get("notice_seconds")
        return set(body) == {"notice_seconds"} and isinstance(value, (int, float))
    return False


def unquote_query(query: str) -> tuple[str, str]:
    """``offset=%2D1`` as (name, value): jp_fetch quotes the parameters it is given."""
    name, value = query.split("=", 1)
    return name, unquote(value)


def _garbage(value: Any) -> bool:
    """Whether a decoded body holds what no field may: NaN, an infinity, a number no
    float holds, a lone surrogate."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) > 2**63
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_garbage(k) or _garbage(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_garbage(v) for v in value)
    return False


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "name",
        "instance_type",
        "low_cost",
        "path",
        "notice_seconds",
        "checkpoint_id",
        "taken_at",
        "variables",
        "bytes",
        "seconds",
        "not_restored",
        "ok",
        "error",
        "notebook",
        "parameters",
        "output_path",
        "kernel_name",
    ]
)
#: A notebook's keys, some of which a generated one has (with both "nbformat" and
#: "cells" it is not sent: it could be a notebook, and run).
NOTEBOOK_KEYS = ["nbformat", "nbformat_minor", "metadata", "worksheets", "cells"]
#: Paths a careless or hostile client gives a job.
PATHS = st.sampled_from(
    ["../x.ipynb", "a\x00.ipynb", ".hidden/x.ipynb", "x\n.ipynb", "/", "", "nb.ipynb", "."]
)
#: What a careless or hostile client puts in a field: NaN and the infinities (which
#: JSON.parse never makes, but Python's json reads), numbers past any float, lone
#: surrogates, control characters, very long strings.
GARBAGE = st.one_of(
    st.sampled_from([NAN, INF, -INF, 10**400, -(10**400), 2**63, "\ud800", "a\x00b", ""]),
    st.text(min_size=1000, max_size=3000),
    st.lists(st.sampled_from([NAN, INF, "\udfff", None]), min_size=1, max_size=3),
)
BODIES = st.one_of(
    st.none(),
    JSON.map(json.dumps),
    st.dictionaries(FIELDS, JSON, max_size=4).map(json.dumps),
    st.dictionaries(FIELDS, GARBAGE, min_size=1, max_size=3).map(json.dumps),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(300, 5000).map(lambda n: '{"notice_seconds": 1' + "0" * n + "}"),
    # (POST jobs: notebooks that are not quite one, names, parameters and paths)
    st.fixed_dictionaries(
        {"notebook": st.dictionaries(st.sampled_from(NOTEBOOK_KEYS), JSON, max_size=4)},
        optional={
            "name": JSON | GARBAGE,
            "parameters": st.dictionaries(st.text(max_size=12), JSON | GARBAGE, max_size=3),
            "path": JSON | GARBAGE | PATHS,
            "output_path": JSON | GARBAGE | PATHS,
        },
    ).map(json.dumps),
)
ROUTES = st.sampled_from(
    [
        ("GET", "instance-types"),
        ("GET", "status"),
        ("POST", "status"),
        ("GET", "kernels"),
        ("POST", "kernels"),
        ("GET", "kernels/{kernel}"),
        ("PUT", "kernels/{kernel}"),
        ("DELETE", "kernels/{kernel}"),
        ("POST", "kernels/{kernel}/restored"),
        ("POST", "kernels/{kernel}/checkpoint"),
        ("GET", "instances"),
        ("GET", "instances?kernel_id={kernel}"),
        ("GET", "instances/{instance}"),
        ("DELETE", "instances/{instance}"),
        ("POST", "instances/{instance}/interrupt"),
        ("PUT", "instances/{instance}/interrupt"),
        ("GET", "jobs"),
        ("POST", "jobs"),
        ("PUT", "jobs"),
        ("GET", "jobs/{job}"),
        ("DELETE", "jobs/{job}"),
        ("POST", "jobs/{job}"),
        ("GET", "jobs/{job}/output"),
        ("GET", "jobs/{job}/log"),
        ("GET", "jobs/{job}/log?offset={offset}"),
    ]
)
#: What ``GET jobs/<id>/log?offset=`` gets: past any file, negative, not a number.
OFFSETS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64, 10**400, -1, 0]),
    st.text(max_size=20),
    st.sampled_from(["1e3", "0x10", " 1", "1.5", "NaN", "inf", "\u0661", "9" * 5000]),
)
IDS = st.one_of(
    st.just("real"),
    st.text(min_size=1, max_size=40),
    st.sampled_from(["", "..", "%00", "0" * 500, "7" * 10_000, "nope", "-", "a/b"]),
)


async def one_finished_job(api: Any) -> str:
    """A job that ran (one cell) and ended: its id."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    status, job = await api("POST", "jobs", {"notebook": notebook, "instance_type": "T4"})
    assert status == 201, job

    async def ended() -> bool:
        return (await api("GET", f"jobs/{job['id']}"))[1]["state"] == "succeeded"

    await wait_until(ended, timeout=120)
    return str(job["id"])


async def test_generated_requests_never_get_a_5xx_and_refusals_change_nothing(
    api: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    one_kernel = await start_one_kernel(api)
    job_id = await one_finished_job(api)
    loop = asyncio.get_running_loop()
    state = {"last": await snapshot(api, jp_serverapp), "sent": 0, "refused": 0}

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    async def send(method: str, path: str, body: str | None) -> tuple[int, Any]:
        """(status, JSON answer or None): a path no route matches gets the server's page."""
        path, _, query = path.partition("?")
        response = await jp_fetch(
            "lowcost",
            "api",
            *path.split("/"),
            method=method,
            body=body if body is not None or method not in ("POST", "PUT") else "",
            params=dict([unquote_query(query)]) if query else None,
            raise_error=False,
            allow_nonstandard_methods=True,
        )
        try:
            return response.code, json.loads(response.body or b"null")
        except ValueError:
            return response.code, None

    @settings(
        max_examples=1100,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(route=ROUTES, body=BODIES, kernel=IDS, instance=IDS, job=IDS, offset=OFFSETS)
    def one_request(
        route: tuple[str, str],
        body: str | None,
        kernel: str,
        instance: str,
        job: str,
        offset: Any,
    ) -> None:
        method, template = route
        ids = {
            "kernel": one_kernel["kernel"] if kernel == "real" else quote(kernel, safe=""),
            "instance": one_kernel["instance"] if instance == "real" else quote(instance, safe=""),
            "job": job_id if job == "real" else quote(job, safe=""),
            "offset": quote(str(offset), safe=""),
        }
        if method == "DELETE" and template.startswith("instances/") and instance == "real":
            return  # would stop the kernel: not a malformed request
        try:
            decoded = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            decoded = None
        if _mutating(method, template.split("?")[0], decoded):
            return
        path = template.format(**ids)
        if method == "GET" and body is not None:
            body = None  # (tornado refuses a GET with a body before any handler sees it)
        status, answer = call(send(method, path, body))
        state["sent"] += 1
        assert status < 500, (method, path, body, status, answer)
        after = call(snapshot(api, jp_serverapp))
        if 400 <= status < 500:
            state["refused"] += 1
            assert answer is None or answer.get("message"), (method, path, answer)
            assert after == state["last"], (method, path, body, status, answer)
        state["last"] = after

    await asyncio.to_thread(one_request)
    assert state["sent"] >= 1000, state
    assert state["refused"] >= 500, state
