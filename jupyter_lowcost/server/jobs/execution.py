"""Running one cell of a job on its kernel, and noticing when the kernel's instance is lost.

Called by :class:`~.runner.JobRunner` for each code cell: :func:`connect` makes a kernel
client for the job's kernel (again after every relaunch: its ports change), and
:func:`run_cell` sends one ``execute_request`` and gathers its outputs until both the
reply and the kernel's ``idle`` have come. A cell has no time limit; what ends the wait
early is the ``lost`` callable saying the kernel's instance is gone (an interruption, the
cap), which raises :class:`KernelLost`. After a relaunch, :func:`resume_state` asks the
kernel itself which checkpoint it restored and what did not come back.
"""

from __future__ import annotations

import ast
import json
import queue
import time
from collections.abc import Callable
from typing import Any

from .notebook import CellOutputs

#: How often the wait for a cell's messages looks whether the instance is lost.
POLL_SECONDS = 0.1


class KernelLost(Exception):
    """The kernel's instance went away while a cell ran (the message says how)."""


async def connect(kernel_manager: Any, kernel_id: str, timeout: float) -> Any:
    """A started client of the server's kernel ``kernel_id``, once the kernel answers."""
    kernel = kernel_manager.get_kernel(kernel_id)
    ready = getattr(kernel, "ready", None)
    if ready is not None:
        await ready  # (its connection info: a kernel put back by a restart has none before)
    client = kernel.client()
    client.allow_stdin = False
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=timeout)
    except BaseException:
        client.stop_channels()
        raise
    return client


async def run_cell(
    client: Any,
    code: str,
    outputs: CellOutputs,
    lost: Callable[[], str | None],
    on_message: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Execute ``code`` (in the kernel's history, as a notebook's cell is); return the
    ``execute_reply`` content once the kernel is idle again, with its outputs in
    ``outputs``. Raises :class:`KernelLost` when ``lost()`` says why the kernel is gone."""
    msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
    reply: dict[str, Any] | None = None
    idle = False
    while reply is None or not idle:
        why = lost()
        if why is not None:
            raise KernelLost(why)
        if not idle:
            message = await _get(client.get_iopub_msg, POLL_SECONDS)
            if message is not None and message["parent_header"].get("msg_id") == msg_id:
                msg_type = message["header"]["msg_type"]
                content = message["content"]
                if msg_type == "status":
                    idle = content.get("execution_state") == "idle"
                else:
                    outputs.add(msg_type, content)
                    if on_message is not None:
                        on_message(msg_type, content)
        if reply is None:
            message = await _get(client.get_shell_msg, 0 if not idle else POLL_SECONDS)
            if message is not None and message["parent_header"].get("msg_id") == msg_id:
                reply = message["content"]
    return reply


async def _get(get: Callable[..., Any], timeout: float) -> dict[str, Any] | None:
    try:
        return await get(timeout=timeout)
    except queue.Empty:
        return None


#: What a job's kernel evaluates to say what it restored at its start (a JSON string).
RESUME_STATE_EXPRESSION = (
    "__import__('json').dumps(__import__('jupyter_lowcost.kernel.checkpointing', "
    "fromlist=['_']).job_resume_state())"
)


async def resume_state(
    client: Any, lost: Callable[[], str | None], timeout: float = 60
) -> dict[str, Any] | None:
    """What the kernel restored at its start: ``{"checkpoint_id", "not_restored",
    "not_restored_count"}`` (``kernel/checkpointing.py``'s ``job_resume_state``).

    Called by the runner after each relaunch of a job's kernel: asked over the kernel's own
    connection, as the ``user_expressions`` of a silent request (which runs no cell: no
    execution count, no checkpoint), so that the job's resume point does not depend on the
    kernel's ``restored`` report reaching the server. None when the kernel cannot say
    (lost, no answer within ``timeout`` seconds, an answer that is not one)."""
    msg_id = client.execute(
        "",
        silent=True,
        store_history=False,
        user_expressions={"state": RESUME_STATE_EXPRESSION},
        allow_stdin=False,
    )
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if lost() is not None:
            return None
        message = await _get(client.get_shell_msg, POLL_SECONDS)
        if message is None or message["parent_header"].get("msg_id") != msg_id:
            continue
        answer = (message["content"].get("user_expressions") or {}).get("state") or {}
        if answer.get("status") != "ok":
            return None
        try:
            value = json.loads(ast.literal_eval((answer.get("data") or {})["text/plain"]))
        except (KeyError, TypeError, ValueError, SyntaxError):
            return None
        return value if isinstance(value, dict) else None
    return None
