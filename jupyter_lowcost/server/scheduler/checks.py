"""A notebook from jupyter-scheduler made into our job's arguments, with the checks of
``POST lowcost/api/jobs`` (the handler's own functions: the notebook read and validated,
the parameter names, the kernelspec found and launchable, the placement in the catalog).

Who calls it: :meth:`~.scheduler.LowCostScheduler.create_job`, synchronously (it runs on
the server's event loop, and jupyter-scheduler's TaskRunner calls it without awaiting), so
a refusal is the ``POST scheduler/jobs``'s answer, as jupyter-scheduler's own checks are.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass
from typing import Any

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_scheduler.exceptions import SchedulerError
from tornado import web

from ...storage.records import Placement
from ..instances.rest_models import check_launchable
from ..jobs import notebook as jobs_notebook
from ..manager import InstanceManager


@dataclass
class JobArguments:
    """What :meth:`Jobs.create <jupyter_lowcost.server.jobs.service.Jobs.create>` takes."""

    notebook: dict[str, Any]
    kernel_name: str
    placement: Placement
    parameters: dict[str, Any]


def parameter_value(text: str) -> Any:
    """A parameter's value: jupyter-scheduler's are strings it would inject verbatim
    (``k = 3`` is a number, ``k = 'a'`` a string); ours are values our service quotes. A
    Python literal is taken as its value, anything else as the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def refusal(err: web.HTTPError) -> SchedulerError:
    return SchedulerError(err.log_message or str(err))


def job_arguments(
    manager: InstanceManager,
    input_path: str,
    placement: Placement,
    parameters: dict[str, str] | None,
) -> JobArguments:
    """Read the staged input notebook and check it as ``POST lowcost/api/jobs`` does;
    :class:`SchedulerError` (jupyter-scheduler answers it 500 with the message, which its
    UI shows) says why not."""
    try:
        with open(input_path, encoding="utf-8") as handle:
            content = json.load(handle)
        notebook = jobs_notebook.read(content)
    except (OSError, ValueError) as err:
        raise SchedulerError(f"the notebook cannot be run as a job: {err}") from err
    values = {}
    for name, text in (parameters or {}).items():
        problem = jobs_notebook.check_parameter_name(name)
        if problem is not None or not name.isidentifier():
            raise SchedulerError(problem or f"parameter name {name!r} is not a Python name")
        values[name] = parameter_value(text)
    kernel_manager = manager.kernel_manager
    specs = kernel_manager.kernel_spec_manager
    kernel_name = jobs_notebook.kernel_name(
        None, notebook, kernel_manager.default_kernel_name, specs.find_kernel_specs()
    )
    try:
        spec = specs.get_kernel_spec(kernel_name)
    except NoSuchKernel as err:
        known = ", ".join(sorted(specs.find_kernel_specs()))
        raise SchedulerError(f"no kernelspec named {kernel_name!r}; installed: {known}") from err
    try:
        if not inspect.isawaitable(spec):  # (an async kernelspec manager: checked at start)
            check_launchable(spec)
        placement = manager.rest.parse_placement(
            {"instance_type": placement.instance_type, "low_cost": placement.low_cost}, None
        )
    except web.HTTPError as err:
        raise refusal(err) from err
    finally:
        if inspect.iscoroutine(spec):
            spec.close()
    return JobArguments(notebook, kernel_name, placement, values)
