"""Running one cell of a job on its kernel, and noticing when the kernel's instance is lost.

Called by :class:`~.runner.JobRunner`: :func:`connect` makes a kernel client for the
job's kernel (again after every relaunch: its ports change), :func:`language_info` asks
it what it runs, and :class:`CellExecutor` runs each code cell with nbclient's own
per-cell execution (``NotebookClient.async_execute_cell``), so that a job's outputs are
what nbclient and papermill give: display ids updated across cells, ipywidgets'
``Output`` capture and widget state, the ``skip-execution`` and ``raises-exception``
tags, one output per stream message. The job's own logic (resume, checkpoints) stays in
the runner, around it. A cell has no time limit; what ends the wait early is the ``lost``
callable saying the kernel's instance is gone (an interruption, the cap), which raises
:class:`KernelLost`. After a relaunch, :func:`resume_state` asks the kernel itself which
checkpoint it restored and what did not come back.
"""

from __future__ import annotations

import ast
import asyncio
import json
import queue
import time
from collections.abc import Callable
from typing import Any

from jupyter_client.channels import AsyncZMQSocketChannel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

#: How often a running cell's wait looks whether the kernel's instance is lost.
POLL_SECONDS = 0.1


class KernelLost(Exception):
    """The kernel's instance went away while a cell ran (the message says how)."""


class CellFailed(Exception):
    """A cell raised, and neither its ``raises-exception`` tag nor the job allows it: the
    ``execute_reply`` content is in :attr:`reply`."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('ename', '')}: {reply.get('evalue', '')}")
        self.reply = reply


class ShellChannel(AsyncZMQSocketChannel):
    """The shell channel of a job's kernel client: a wait without a timeout is a series
    of short ones. nbclient waits for a cell's reply with no timeout while its Output
    widgets send on the same socket; a send can take the socket's wake-up for a reply
    that is already there (zmq's descriptor is edge-triggered), and the wait would never
    end (seen in about one run in four). A short wait starts with a poll that looks at
    what is there, so the reply is found at the next one."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        if timeout is not None:
            return await super().get_msg(timeout)
        while True:
            try:
                return await super().get_msg(POLL_SECONDS)
            except queue.Empty:
                continue


async def connect(kernel_manager: Any, kernel_id: str, timeout: float) -> Any:
    """A started client of the server's kernel ``kernel_id``, once the kernel answers."""
    kernel = kernel_manager.get_kernel(kernel_id)
    ready = getattr(kernel, "ready", None)
    if ready is not None:
        await ready  # (its connection info: a kernel put back by a restart has none before)
    client = kernel.client()
    client.shell_channel_class = ShellChannel
    client.allow_stdin = False
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=timeout)
    except BaseException:
        client.stop_channels()
        raise
    return client


class CellExecutor(NotebookClient):
    """nbclient's executor of the job's notebook, on a kernel the job's server started.

    Made once per runner (display ids and widget state then span the cells it runs,
    across interruptions); :meth:`use` gives it the client of the kernel's current
    instance. nbclient polls ``kc.is_alive()`` once a second to notice a dead kernel;
    here the job's ``lost`` callable says it, every :data:`POLL_SECONDS`, by replacing
    ``_async_poll_kernel_alive`` (there is no public hook for it; nbclient pinned below
    0.12 in ``pyproject.toml``, and the interruption tests fail if it changes)."""

    def __init__(self, notebook: Any, kernel_name: str, **kw: Any) -> None:
        super().__init__(
            notebook,
            kernel_name=kernel_name,
            timeout=None,  # (a cell runs as long as it needs)
            allow_errors=False,
            **kw,
        )
        self._lost: Callable[[], str | None] = lambda: None
        self._lost_why: str | None = None
        self._reply: dict[str, Any] | None = None
        #: Cells whose outputs changed since :meth:`changed_cells` was last asked.
        self._changed: set[int] = set()
        #: Called with each output message (msg_type, content) of the running cell.
        self.on_message: Callable[[str, dict[str, Any]], None] | None = None
        self.on_cell_executed = self._keep_reply

    def use(self, client: Any) -> None:
        """Run the next cells on ``client`` (the kernel's new instance). The comms of the
        previous kernel (its Output widgets) are gone with it."""
        self.kc = client
        self.comm_objects = {}

    async def run_cell(self, index: int, lost: Callable[[], str | None]) -> dict[str, Any]:
        """Execute cell ``index`` (its outputs go into the notebook as nbclient puts them);
        return its ``execute_reply`` content. Raises :class:`KernelLost` when ``lost()``
        says why the kernel is gone, :class:`CellFailed` when the cell raised and may not."""
        self._lost, self._lost_why, self._reply = lost, None, None
        cell = self.nb.cells[index]
        self._changed.add(index)
        # A cell that runs again (after an interruption: it may have replied, its
        # checkpoint not on disk) starts with no outputs: the displays it showed are no
        # longer where nbclient noted them (nbclient clears its outputs, not its notes).
        self.clear_display_id_mapping(index)
        execution = asyncio.ensure_future(self.async_execute_cell(cell, index, store_history=True))
        try:
            await _through_cancel(execution, self._stop_waiting)
        except DeadKernelError:
            raise KernelLost(self._lost_why or "the kernel died") from None
        except CellExecutionError:
            raise CellFailed(self._reply or {}) from None
        finally:
            self._lost = lambda: None
        return self._reply or {}

    def _stop_waiting(self) -> None:
        """The job was cancelled while its cell ran: nbclient's wait for the cell ends at
        the next poll (nbclient takes a cancel of its wait for a dead kernel; its tasks
        end, none is left polling)."""
        self._lost = lambda: "the job was cancelled"

    def put_first(self, index: int, output: Any) -> None:
        """Put ``output`` (a note of the job's) before cell ``index``'s own outputs; a
        later update of one of its displays still finds it (nbclient's
        ``_display_id_map`` counts their places)."""
        self.nb.cells[index].outputs.insert(0, output)
        for cells in self._display_id_map.values():
            if index in cells:
                cells[index] = [place + 1 for place in cells[index]]
        self._changed.add(index)

    def changed_cells(self) -> set[int]:
        """The cells whose outputs changed since the last call: the cells run, and earlier
        ones whose display a later cell updated (a reused display id)."""
        changed, self._changed = self._changed, set()
        return changed

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        content = msg.get("content") or {}
        transient = content.get("transient") or {}
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        if display_id:
            # (``_display_id_map``: nbclient's own record of which cells show that id)
            self._changed.update(self._display_id_map.get(display_id, {}).keys())
        if self.on_message is not None:
            self.on_message(msg["msg_type"], content)
        return super().process_message(msg, cell, cell_index)

    async def _async_poll_kernel_alive(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            why = self._lost()
            if why is not None:
                self._lost_why = why
                assert self.task_poll_for_reply is not None
                self.task_poll_for_reply.cancel()
                return

    def _keep_reply(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        self._reply = dict(execute_reply.get("content") or {})


async def _through_cancel(task: asyncio.Future[Any], on_cancel: Callable[[], None]) -> None:
    """Wait for ``task``; a cancel of this wait calls ``on_cancel`` (which makes the task
    end soon), waits for the task to end all the same, then is raised."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            if not cancelled:
                cancelled = True
                on_cancel()
    if cancelled:
        if not task.cancelled():
            task.exception()  # (retrieved: the cancel is what counts)
        raise asyncio.CancelledError
    task.result()


async def wait_until_idle(client: Any, lost: Callable[[], str | None]) -> dict[str, Any]:
    """Send an empty cell and return its ``execute_reply`` content: it waits for a cell
    still running, and answers the number of the last cell that ran, without taking a
    number of its own. Raises :class:`KernelLost` when ``lost()`` says why."""
    msg_id = client.execute("", store_history=True, allow_stdin=False, stop_on_error=False)
    reply = await _shell_reply(client, msg_id, lost)
    if reply is None:
        raise KernelLost(lost() or "the kernel was lost")
    return reply


async def language_info(
    client: Any, lost: Callable[[], str | None], timeout: float = 60
) -> dict[str, Any] | None:
    """The kernel's ``language_info`` (from its ``kernel_info_reply``), for the notebook's
    metadata as nbclient writes it; None when the kernel does not say in time."""
    reply = await _shell_reply(client, client.kernel_info(), lost, timeout)
    info = (reply or {}).get("language_info")
    return dict(info) if isinstance(info, dict) else None


async def _shell_reply(
    client: Any, msg_id: str, lost: Callable[[], str | None], timeout: float | None = None
) -> dict[str, Any] | None:
    """The content of the kernel's reply to request ``msg_id``; None once ``lost()`` says
    the kernel is gone, or after ``timeout`` seconds (None: no limit)."""
    end = None if timeout is None else time.monotonic() + timeout
    while (end is None or time.monotonic() < end) and lost() is None:
        try:
            message = await client.get_shell_msg(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") == msg_id:
            return dict(message["content"])
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
    reply = await _shell_reply(client, msg_id, lost, timeout)
    answer = ((reply or {}).get("user_expressions") or {}).get("state") or {}
    if answer.get("status") != "ok":
        return None
    try:
        value = json.loads(ast.literal_eval((answer.get("data") or {})["text/plain"]))
    except (KeyError, TypeError, ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None
