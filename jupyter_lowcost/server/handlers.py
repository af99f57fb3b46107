"""The REST API under ``{base_url}lowcost/api/`` (the table in DESIGN.md).

Each handler is a few lines: parse, call the
:class:`~jupyter_lowcost.server.manager.InstanceManager`, answer JSON. Every method is
``@web.authenticated`` and ``@authorized`` (resource ``lowcost``). Every body is checked
against its route's JSON Schema (:mod:`jupyter_lowcost.server.rest_schemas`) before
anything else; bad input is answered with a 4xx whose ``message`` names the problem; the
manager validates the rest before it changes anything. The shapes of the answers are in
:mod:`jupyter_lowcost.server.rest_responses`.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import url_path_join
from tornado import web

from ..backends import BackendError
from . import rest_schemas
from .instances.rest_models import check_launchable
from .jobs import contents as jobs_contents
from .jobs import notebook as jobs_notebook
from .manager import InstanceManager

AUTH_RESOURCE = "lowcost"
API = r"/lowcost/api"
#: The largest byte offset ``GET jobs/<id>/log`` takes (2**53: an integer every JSON
#: client reads exactly).
MAX_LOG_OFFSET = 2**53


@contextmanager
def backend_errors() -> Iterator[None]:
    """Answer a backend's refusal with its status and message."""
    try:
        yield
    except BackendError as err:
        raise web.HTTPError(err.status, err.message, reason=err.reason) from err


class LowCostHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every route: the manager, and JSON bodies checked field by field."""

    auth_resource = AUTH_RESOURCE

    @property
    def manager(self) -> InstanceManager:
        return self.settings["jupyter_lowcost_manager"]

    async def prepare(self) -> None:  # type: ignore[override]
        """Every route sees a started backend (its catalog, its capacity); a backend that
        cannot start answers 503 with its reason, to authenticated users only."""
        await super().prepare()
        if self.current_user:
            with backend_errors():
                await self.manager.ensure_started()

    def json_body(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The request body checked against ``schema`` (empty body: ``{}``)."""
        return rest_schemas.parse_body(self.request.body or b"", schema)

    def write_json(self, model: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(model))


class InstanceTypesHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(self.manager.rest.catalog_models())


class StatusHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        root = getattr(self.contents_manager, "root_dir", None)
        self.write_json({**self.manager.rest.status_model(), "root_dir": root or None})


class KernelsHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(rest_schemas.START_KERNEL)
        name = body.get("name") or self.kernel_manager.default_kernel_name
        path = body.get("path")
        try:
            await ensure_async(self.kernel_spec_manager.get_kernel_spec(name))
        except NoSuchKernel as err:
            known = ", ".join(sorted(self.kernel_spec_manager.find_kernel_specs()))
            raise web.HTTPError(400, f"no kernelspec named {name!r}; installed: {known}") from err
        placement = self.manager.rest.parse_placement(body, None)
        try:
            kernel_path = await ensure_async(self.contents_manager.get_kernel_path(path or ""))
        except (OSError, ValueError, web.HTTPError) as err:
            raise web.HTTPError(400, f"path {path!r} is not a path of this server: {err}") from err
        with backend_errors():
            kernel_id = await self.manager.launches.start_kernel(name, placement, kernel_path, path)
        model = await ensure_async(self.kernel_manager.kernel_model(kernel_id))
        self.set_header("Location", url_path_join(self.base_url, "lowcost/api/kernels", kernel_id))
        self.write_json(
            {"kernel": model, "instance": self.manager.rest.current_instance_model(kernel_id)}, 201
        )


class KernelHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        self.write_json(self.manager.rest.kernel_model(kernel_id))

    @web.authenticated
    @authorized
    async def put(self, kernel_id: str) -> None:
        self.manager.rest.require_kernel(kernel_id)  # 404 before anything else
        body = self.json_body(rest_schemas.SWITCH_KERNEL)
        placement = self.manager.rest.parse_placement(body, self.manager.placement(kernel_id))
        wait = self.get_argument("wait", "1") not in ("0", "false", "no")
        with backend_errors():
            await self.manager.moves.switch(kernel_id, placement, wait=wait)
        self.write_json(self.manager.rest.kernel_model(kernel_id), 200 if wait else 202)


class InstancesHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        kernel_id = self.get_argument("kernel_id", None)
        self.write_json(self.manager.rest.instance_models(kernel_id))


class InstanceHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self, instance_id: str) -> None:
        self.write_json(self.manager.rest.instance_model(instance_id))

    @web.authenticated
    @authorized
    async def delete(self, instance_id: str) -> None:
        with backend_errors():
            await self.manager.launches.terminate_instance(self.manager.rest.record(instance_id))
        self.set_status(204)
        self.finish()


class InterruptHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def post(self, instance_id: str) -> None:
        record = self.manager.rest.record(instance_id)  # 404 before anything else
        body = self.json_body(rest_schemas.INTERRUPT)
        with backend_errors():
            model = await self.manager.notices.interrupt(record, body["notice_seconds"])
        self.write_json(model, 202)


class RestoredHandler(LowCostHandler):
    """Called by a resumed kernel (its ``%lowcost`` client) to say what came back."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        self.manager.rest.require_kernel(kernel_id)  # 404 before anything else
        body = self.json_body(rest_schemas.RESTORED)
        self.write_json(self.manager.reports.restored(kernel_id, body), 201)


class CheckpointStatusHandler(LowCostHandler):
    """Called by a kernel (its checkpoint code) when a checkpoint fails, and when they
    work again: the server emits it, JupyterLab shows it."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        self.manager.rest.require_kernel(kernel_id)  # 404 before anything else
        body = self.json_body(rest_schemas.CHECKPOINT_STATUS)
        self.write_json(self.manager.reports.checkpoint_status(kernel_id, body), 201)


class JobsHandler(LowCostHandler):
    """``jupyter lowcost run`` and ``jupyter lowcost jobs``: make a job, list them."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(self.manager.jobs.models())

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(rest_schemas.START_JOB)
        try:
            # (in a worker thread: validating a large notebook takes a while)
            notebook = await asyncio.to_thread(jobs_notebook.read, body["notebook"])
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from err
        parameters = body.get("parameters") or {}
        for name in parameters:
            problem = jobs_notebook.check_parameter_name(name)
            if problem is not None:
                raise web.HTTPError(400, problem)
        kernel_name = jobs_notebook.kernel_name(
            body.get("kernel_name"),
            notebook,
            self.kernel_manager.default_kernel_name,
            self.kernel_spec_manager.find_kernel_specs(),
        )
        try:
            spec = await ensure_async(self.kernel_spec_manager.get_kernel_spec(kernel_name))
        except NoSuchKernel as err:
            known = ", ".join(sorted(self.kernel_spec_manager.find_kernel_specs()))
            raise web.HTTPError(
                400, f"no kernelspec named {kernel_name!r}; installed: {known}"
            ) from err
        check_launchable(spec)
        placement = self.manager.rest.parse_placement(body, None)
        path = body.get("path") or None
        output_path = body.get("output_path") or None
        await self._check_job_paths(path, output_path)
        job = await self.manager.jobs.create(
            notebook,
            body.get("name") or (path.rsplit("/", 1)[-1] if path else "notebook.ipynb"),
            kernel_name,
            placement,
            parameters,
            path,
            output_path,
        )
        self.set_header("Location", url_path_join(self.base_url, "lowcost/api/jobs", job.id))
        self.write_json(job.to_model(), 201)

    async def _check_job_paths(self, path: str | None, output_path: str | None) -> None:
        """A job's ``path`` and ``output_path``: paths of this server's contents, in a
        folder that exists, not hidden (unless the contents manager allows it, as Jupyter's
        own save does); the output a notebook other than the job's own, where nothing
        but a regular file is (a FIFO would block the server at the first save)."""
        for what, value in (("path", path), ("output_path", output_path)):
            if value is None:
                continue
            problem = jobs_contents.path_problem(value)
            if problem is not None:
                raise web.HTTPError(400, f"{what} {value!r} {problem}")
        cm = self.contents_manager
        if output_path is not None:
            if not output_path.endswith(".ipynb"):
                raise web.HTTPError(400, f"output_path {output_path!r} must end with .ipynb")
            if path is not None and jobs_contents.same_path(cm, output_path, path):
                raise web.HTTPError(
                    400, "output_path is the notebook's own path: it would be overwritten"
                )
        for what, value in (("path", path), ("output_path", output_path)):
            if value is not None:
                await self._check_contents_path(what, value)
        if output_path is None:
            return
        try:
            problem = jobs_contents.file_problem(cm, output_path)
        except (OSError, ValueError, web.HTTPError) as err:
            raise web.HTTPError(
                400, f"output_path {output_path!r} is not a path of this server: {err}"
            ) from err
        if problem is not None:
            raise web.HTTPError(
                400, f"output_path {output_path!r} {problem}: a notebook cannot be written there"
            )

    async def _check_contents_path(self, what: str, path: str) -> None:
        """A path of this server's contents whose folder exists, and that Jupyter's own
        contents API does not refuse as hidden."""
        folder = path.strip("/").rsplit("/", 1)[0] if "/" in path.strip("/") else ""
        try:
            exists = await ensure_async(self.contents_manager.dir_exists(folder))
            hidden = exists and await jobs_contents.hidden(self.contents_manager, path)
        except (OSError, ValueError, web.HTTPError) as err:
            raise web.HTTPError(
                400, f"{what} {path!r} is not a path of this server: {err}"
            ) from err
        if not exists:
            raise web.HTTPError(400, f"{what} {path!r}: no folder {folder!r} on this server")
        if hidden:
            raise web.HTTPError(
                400,
                f"{what} {path!r} is hidden (a name in it starts with a dot): this server's "
                "contents manager does not allow hidden files (ContentsManager.allow_hidden)",
            )


class JobHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.write_json(self.manager.jobs.job(job_id).to_model())

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        """``jupyter lowcost cancel``: the job stops, its output notebook stays."""
        job = await self.manager.jobs.cancel(job_id)
        self.write_json(job.to_model())


class JobOutputHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """The executed notebook so far (every completed cell's outputs)."""
        self.write_json(self.manager.jobs.output(job_id))


class JobLogHandler(LowCostHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """``jupyter lowcost logs``: the job's log from byte ``offset`` on."""
        try:
            offset = int(self.get_argument("offset", "0"))
        except ValueError as err:
            raise web.HTTPError(400, "offset must be an integer (a byte offset)") from err
        if not 0 <= offset <= MAX_LOG_OFFSET:  # (no log is longer; a seek would overflow)
            digits = len(str(abs(offset)))
            sign = "negative " if offset < 0 else ""
            shown = str(offset) if digits <= 24 else f"a {sign}number of {digits} digits"
            raise web.HTTPError(
                400, f"offset must be between 0 and {MAX_LOG_OFFSET} (a byte offset), not {shown}"
            )
        try:
            answer = self.manager.jobs.log(job_id, offset)
        except OSError as err:  # (a seek further than this file system's largest file)
            if err.errno not in (errno.EINVAL, errno.EOVERFLOW, errno.EFBIG):
                raise
            raise web.HTTPError(400, f"offset {offset} is past the end of the job's log") from err
        self.write_json(answer)


default_handlers = [
    (rf"{API}/instance-types", InstanceTypesHandler),
    (rf"{API}/status", StatusHandler),
    (rf"{API}/kernels", KernelsHandler),
    (rf"{API}/kernels/(?P<kernel_id>[\w-]+)", KernelHandler),
    (rf"{API}/kernels/(?P<kernel_id>[\w-]+)/restored", RestoredHandler),
    (rf"{API}/kernels/(?P<kernel_id>[\w-]+)/checkpoint", CheckpointStatusHandler),
    (rf"{API}/instances", InstancesHandler),
    (rf"{API}/instances/(?P<instance_id>\w+)", InstanceHandler),
    (rf"{API}/instances/(?P<instance_id>\w+)/interrupt", InterruptHandler),
    (rf"{API}/jobs", JobsHandler),
    (rf"{API}/jobs/(?P<job_id>\w+)", JobHandler),
    (rf"{API}/jobs/(?P<job_id>\w+)/output", JobOutputHandler),
    (rf"{API}/jobs/(?P<job_id>\w+)/log", JobLogHandler),
]
