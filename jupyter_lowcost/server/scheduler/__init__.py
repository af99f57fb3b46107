"""jupyter-scheduler's job UI ("Create Job", the Jobs panel) runs low-cost jobs (issue 31).

Nothing here is imported unless jupyter-scheduler is installed and loads it: the
``SchedulerApp`` section of ``jupyter-config/jupyter_server_config.d/jupyter_lowcost.json``
names :class:`~.scheduler.LowCostScheduler` (its ``scheduler_class``) and
:class:`~.environments.LowCostEnvironments` (its ``environment_manager_class``);
jupyter-scheduler's ``SchedulerApp.initialize_settings`` builds them. Without the
``jupyter_lowcost`` extension enabled (no manager in this process) both behave as
jupyter-scheduler's own classes.

Modules: ``environments`` (the compute types), ``checks`` (a notebook made into a job's
arguments, with the ``POST lowcost/api/jobs`` checks), ``links`` (which row is which of our
jobs), ``states`` (our job's state written into its row), ``outputs`` (the staging files
Download copies), ``rows`` (rows kept current, reconciled at start, rows for
``jupyter lowcost run`` jobs), ``scheduler`` (the Scheduler subclass).
"""

from .environments import LowCostEnvironments
from .scheduler import LowCostScheduler

__all__ = ["LowCostEnvironments", "LowCostScheduler"]
