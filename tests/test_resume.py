"""Kernels resume with their variables: after an interruption, across moves, past the cap."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from conftest import (
    EventRecorder,
    checkpointed,
    execute,
    moved,
    start_lowcost_kernel,
    wait_until,
)

from jupyter_lowcost.server.events import RESTORED_SCHEMA_ID

STATE = (
    "import numpy as np, pandas as pd\n"
    "big = np.arange(100 * 1024 * 1024 // 8, dtype=np.int64)\n"  # 100 MB
    "frame = pd.DataFrame({'x': [1, 2, 3]})\n"
    "config = {'lr': 0.01, 'layers': [64, 32]}\n"
    "alias = config\n"
    "gen = (i for i in range(3))\n"
    "class Point:\n"
    "    def __init__(self, x): self.x = x\n"
    "point = Point(7)\n"
)
CHECK = (
    "print(int(big.sum()) == sum(range(len(big))), len(big), frame['x'].tolist(), "
    "config, alias is config, 'gen' in globals(), point.x, type(point) is Point)\n"
)
EXPECTED = "True 13107200 [1, 2, 3] {'lr': 0.01, 'layers': [64, 32]} True False 7 True\n"


@pytest.fixture
def restored_events(jp_serverapp: Any) -> EventRecorder:
    recorder = EventRecorder()
    jp_serverapp.event_logger.add_listener(schema_id=RESTORED_SCHEMA_ID, listener=recorder.listener)
    return recorder


async def new_instance(api: Any, kernel_id: str, old: str) -> dict[str, Any]:
    async def relaunched() -> bool:
        status, model = await api("GET", f"kernels/{kernel_id}")
        instance = model["instance"]
        return instance is not None and instance["id"] != old and instance["state"] == "running"

    await wait_until(relaunched, timeout=60)
    await wait_until(lambda: moved(api, kernel_id))
    return (await api("GET", f"kernels/{kernel_id}"))[1]


async def test_an_interrupted_kernel_resumes_with_its_variables(
    api: Any, jp_serverapp: Any, restored_events: EventRecorder
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await execute(jp_serverapp, kernel_id, STATE)
    status, _ = await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 1})
    assert status == 202
    model = await new_instance(api, kernel_id, first)
    assert model["placement"]["low_cost"] is True

    assert await execute(jp_serverapp, kernel_id, CHECK) == EXPECTED
    event = await restored_events.wait_for(kernel_id=kernel_id)
    assert event["message"].startswith("resumed from the checkpoint taken ")
    assert "before the interruption, at cell [" in event["message"]
    assert "]: 8 variables, " in event["message"]
    assert event["message"].endswith("not restored: gen (generator)")
    assert event["not_restored"][0]["name"] == "gen"
    _, model = await api("GET", f"kernels/{kernel_id}")
    assert model["restored"]["checkpoint_id"] == event["checkpoint_id"]
    # The magic says so too.
    status_text = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert "Resumed from checkpoint" in status_text and "not restored: gen" in status_text
    # A second interruption: what came back the first time is saved and comes back again.
    second = model["instance"]["id"]
    await api("POST", f"instances/{second}/interrupt", {"notice_seconds": 1})
    await new_instance(api, kernel_id, second)
    assert await execute(jp_serverapp, kernel_id, CHECK) == EXPECTED


@pytest.mark.lowcost(LowCostApp={"checkpoints": "notice"})
async def test_moves_both_ways_keep_the_namespace(api: Any, jp_serverapp: Any) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id = body["kernel"]["id"]
    await execute(jp_serverapp, kernel_id, STATE)
    for low_cost in (False, True):
        status, model = await api(
            "PUT", f"kernels/{kernel_id}", {"low_cost": low_cost, "instance_type": "T4"}
        )
        assert status == 200, model
        assert model["placement"]["low_cost"] is low_cost
        # "notice" mode: nothing after cells; the move's graceful shutdown saved it.
        assert await execute(jp_serverapp, kernel_id, CHECK) == EXPECTED


@pytest.mark.lowcost(LowCostApp={"lifetime_cap": 6.0, "cap_notice": 2.0})
async def test_the_cap_rollover_keeps_the_namespace(
    api: Any, jp_serverapp: Any, instance_events: EventRecorder
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    await execute(jp_serverapp, kernel_id, "steps = 41\nsteps += 1\n")
    await instance_events.wait_for(instance_id=first, state="expired", timeout=30)
    await new_instance(api, kernel_id, first)
    assert await execute(jp_serverapp, kernel_id, "print(steps)") == "42\n"


async def test_checkpoint_magics(api: Any, jp_serverapp: Any) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id = body["kernel"]["id"]
    await execute(jp_serverapp, kernel_id, "x = [1, 2]\n")
    saved = await execute(jp_serverapp, kernel_id, "%lowcost checkpoint")
    assert saved.startswith("Checkpoint ") and "variables" in saved
    listing = await execute(jp_serverapp, kernel_id, "%lowcost checkpoints")
    checkpoint_id = saved.split()[1].rstrip(":")
    assert checkpoint_id in listing
    await execute(jp_serverapp, kernel_id, "x.append(3)\ndel x\n")
    restored = await execute(jp_serverapp, kernel_id, f"%lowcost restore {checkpoint_id}\nprint(x)")
    assert f"Restored checkpoint {checkpoint_id}: " in restored
    assert restored.endswith("[1, 2]\n")
    missing = await execute(jp_serverapp, kernel_id, "%lowcost restore 99999999")
    assert "no checkpoint '99999999' (kept: " in missing


async def test_a_user_restart_does_not_restore(api: Any, jp_serverapp: Any) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id = body["kernel"]["id"]
    await execute(jp_serverapp, kernel_id, "kept = 1\n")
    await jp_serverapp.kernel_manager.restart_kernel(kernel_id)
    assert await execute(jp_serverapp, kernel_id, "print('kept' in globals())") == "False\n"


async def test_save_on_notice_writes_the_training_state(
    api: Any, jp_serverapp: Any, tmp_path: Any
) -> None:
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    target = tmp_path / "train.ckpt"
    await execute(
        jp_serverapp,
        kernel_id,
        "from jupyter_lowcost import save_on_notice\n"
        "class Model:\n"
        "    def __init__(self): self.w = [0.5, 0.25]\n"
        "    def state_dict(self): return {'w': self.w}\n"
        "model = Model()\n"
        f"save_on_notice({str(target)!r}, model=model, step=7)\n",
    )
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 2})
    await wait_until(target.exists, timeout=30)
    # The kernel has not imported PyTorch: a pickle (torch.save's files: test_kernel_side.py)
    saved = pickle.loads(target.read_bytes())
    assert saved == {"model": {"w": [0.5, 0.25]}, "step": 7}
    from jupyter_lowcost import load_saved

    assert load_saved(target) == saved


async def _interrupted(api: Any, kernel_id: str, notice_seconds: float) -> dict[str, Any]:
    """Interrupt the kernel's instance with a notice; the kernel's model once it runs
    again on a new one."""
    _, model = await api("GET", f"kernels/{kernel_id}")
    old = model["instance"]["id"]
    status, _ = await api("POST", f"instances/{old}/interrupt", {"notice_seconds": notice_seconds})
    assert status == 202
    return await new_instance(api, kernel_id, old)


async def test_a_kernel_with_many_variables_says_what_came_back(
    api: Any, jp_serverapp: Any, restored_events: EventRecorder
) -> None:
    """Its report named every variable: past about 6,000 the server refused it (413), and
    nobody heard of the resume, nor of what did not come back."""
    kernel_id = (await start_lowcost_kernel(api, "T4"))["kernel"]["id"]
    await execute(
        jp_serverapp,
        kernel_id,
        "globals().update({f'v{i}': i for i in range(10_000)})\n"
        "globals().update({f'gen{i}': (j for j in range(3)) for i in range(25)})\n",
    )
    await checkpointed(jp_serverapp, kernel_id)
    await _interrupted(api, kernel_id, 1)
    check = "print(v0, v9999, sum(k.startswith('gen') for k in globals()))"
    assert await execute(jp_serverapp, kernel_id, check) == "0 9999 0\n"

    event = await restored_events.wait_for(kernel_id=kernel_id)
    assert event["variables"] == 10_000 and event["not_restored_count"] == 25
    listed = [s["name"] for s in event["not_restored"]]
    assert len(listed) == 10 and set(listed) <= {f"gen{i}" for i in range(25)}
    assert "]: 10,000 variables, " in event["message"]
    assert event["message"].endswith(" (generator) and 15 more")
    _, model = await api("GET", f"kernels/{kernel_id}")
    assert model["restored"]["variables"] == 10_000
    assert model["restored"]["not_restored"] == event["not_restored"]
    assert model["restored"]["message"] == event["message"]
    status_text = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert "10,000 variables" in status_text and " (generator) and 15 more." in status_text


#: Whether the kernel is writing a checkpoint in the background (not a cell of the
#: notebook: no name assigned).
WRITING = (
    "print(__import__('jupyter_lowcost.kernel.checkpointing', fromlist=['_'])"
    ".installed().writing is not None)"
)


async def _start_cell(serverapp: Any, kernel_id: str, code: str) -> Any:
    """Send a cell and return once it runs (its client: stop its channels when done)."""
    client = serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    msg_id = client.execute("print('running', flush=True)\n" + code)
    while True:
        msg = await client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            return client


async def test_a_notice_during_a_long_background_write_saves_the_last_cell(
    api: Any, jp_serverapp: Any, restored_events: EventRecorder
) -> None:
    """The notice's seconds went to the write in flight (less one second), of the state
    before the last cell: a large one did not make it, and the last cells were lost. The
    newest state comes first."""
    kernel_id = (await start_lowcost_kernel(api, "T4"))["kernel"]["id"]
    await execute(jp_serverapp, kernel_id, "x = 1")  # [1]
    await checkpointed(jp_serverapp, kernel_id)  # [2]
    # [3]: 2 GiB, written in the background for seconds; [4]: the newest state, small;
    # [5] runs when the notice comes (the write waits for it while it can).
    await execute(jp_serverapp, kernel_id, "import numpy as np\ndata = np.ones(2**28)")
    await execute(jp_serverapp, kernel_id, "total = float(data.sum())\ndel data")
    assert await execute(jp_serverapp, kernel_id, WRITING, silent=True) == "True\n"
    client = await _start_cell(jp_serverapp, kernel_id, "__import__('time').sleep(600)")
    try:
        await _interrupted(api, kernel_id, 2)
    finally:
        client.stop_channels()
    check = "print(x, total, 'data' in globals())"
    assert await execute(jp_serverapp, kernel_id, check) == "1 268435456.0 False\n"
    event = await restored_events.wait_for(kernel_id=kernel_id)
    assert (event["execution_count"], event["taken_during"]) == (4, 5)
    assert event["message"].startswith("resumed from the checkpoint taken ")
    assert (
        "before the interruption, in cell [5]: "
        "the changes of cell [5] after the checkpoint are lost; "
    ) in event["message"]


#: A class whose objects take minutes to save: a state that holds one cannot be written
#: within a notice, on any machine.
SLOW = (
    "class Slow:\n"
    "    def __reduce__(self):\n"
    "        __import__('time').sleep(300)\n"
    "        return (Slow, ())\n"
)


async def test_a_resume_names_the_cells_whose_changes_are_lost(
    api: Any, jp_serverapp: Any, restored_events: EventRecorder
) -> None:
    """When the newest state cannot be written in time, the resume comes back from the
    checkpoint before it: the message said "resumed from the checkpoint taken 11 s before
    the interruption", not which cells it misses."""
    kernel_id = (await start_lowcost_kernel(api, "T4"))["kernel"]["id"]
    await execute(jp_serverapp, kernel_id, "x = 1")  # [1]
    await checkpointed(jp_serverapp, kernel_id)  # [2]
    await execute(jp_serverapp, kernel_id, "import numpy as np\ndata = np.ones(2**27)")  # [3]
    await execute(jp_serverapp, kernel_id, SLOW + "slow = Slow()\nx = 2")  # [4]
    assert await execute(jp_serverapp, kernel_id, WRITING, silent=True) == "True\n"
    await _interrupted(api, kernel_id, 2)
    check = "print(x, 'data' in globals(), 'slow' in globals())"
    assert await execute(jp_serverapp, kernel_id, check) == "1 False False\n"

    event = await restored_events.wait_for(kernel_id=kernel_id)
    lost = "the changes of cells [3]–[4] are lost"
    assert event["message"].startswith("resumed from the checkpoint taken ")
    assert f"before the interruption, at cell [2]: {lost}; " in event["message"]
    assert (event["execution_count"], event["last_execution_count"]) == (2, 4)
    assert event["taken_during"] is None
    _, model = await api("GET", f"kernels/{kernel_id}")
    assert model["restored"]["message"] == event["message"]
    assert model["restored"]["execution_count"] == 2
    status_text = await execute(jp_serverapp, kernel_id, "%lowcost")
    assert f"The kernel is back at cell [2]: {lost}." in status_text


async def test_a_resumed_kernel_has_the_notebooks_sys_path_and_open_files(
    api: Any, jp_serverapp: Any, tmp_path: Any
) -> None:
    """Issue 27, 3 and 7: an object of a class imported from a folder the notebook put on
    sys.path did not come back (nor did every variable saved after it), and an open file
    came back as a StringIO."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "resume_lib_27.py").write_text(
        "class Trainer:\n    def __init__(self, n):\n        self.n = n\n"
    )
    data = tmp_path / "data.csv"
    data.write_text("a\nb\nc\n")
    body = await start_lowcost_kernel(api, "T4")
    kernel_id, first = body["kernel"]["id"], body["instance"]["id"]
    cell = (
        f"import sys\nsys.path.insert(0, {str(src)!r})\nfrom resume_lib_27 import Trainer\n"
        f"model = Trainer(3)\nsteps = [1, 2]\nlines = open({str(data)!r})\nhead = lines.readline()\n"
    )
    await execute(jp_serverapp, kernel_id, cell)
    await api("POST", f"instances/{first}/interrupt", {"notice_seconds": 1})
    await new_instance(api, kernel_id, first)
    check = (
        f"print(type(model).__name__, model.n, steps, sys.path[0] == {str(src)!r}, "
        "type(lines).__name__, lines.readline().strip())"
    )
    expected = "Trainer 3 [1, 2] True TextIOWrapper b\n"
    assert await execute(jp_serverapp, kernel_id, check) == expected
