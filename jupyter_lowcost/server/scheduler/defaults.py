"""jupyter-scheduler's classes made ours by default (no configuration by hand).

Who calls it: ``LowCostApp._link_jupyter_server_extension`` (server/app.py), as Jupyter
Server links the extensions: in sorted order, so ``jupyter_lowcost`` before
``jupyter_scheduler``, which then reads its ``SchedulerApp`` section from the server's
config. (A ``SchedulerApp`` section in ``jupyter_server_config.d/*.json`` would not do:
Jupyter Server reads only ``jpserver_extensions`` from those files.) A value the user set
(config file, command line) stays; without jupyter-scheduler the section is never read.
Imports nothing of jupyter-scheduler.
"""

from __future__ import annotations

from typing import Any

DEFAULTS = {
    "scheduler_class": "jupyter_lowcost.server.scheduler.scheduler.LowCostScheduler",
    "environment_manager_class": "jupyter_lowcost.server.scheduler.environments.LowCostEnvironments",
    # (its Download under the server's root, not the working directory: see downloads.py)
    "job_files_manager_class": "jupyter_lowcost.server.scheduler.downloads.RootJobFilesManager",
}


def apply_defaults(config: Any) -> None:
    """Set our classes in ``config.SchedulerApp`` where the user set none."""
    section = config.SchedulerApp
    for key, value in DEFAULTS.items():
        if key not in section:
            section[key] = value
