"""jupyter-scheduler's job UI ("Create Job", the Jobs panel) runs low-cost jobs (issue 31).

Only ``defaults`` is imported unless jupyter-scheduler is installed and loads the rest:
``LowCostApp`` sets (``defaults.apply_defaults``, where the user set nothing)
``SchedulerApp.scheduler_class`` to :class:`~.scheduler.LowCostScheduler` and
``SchedulerApp.environment_manager_class`` to :class:`~.environments.LowCostEnvironments`
and ``SchedulerApp.job_files_manager_class`` to :class:`~.downloads.RootJobFilesManager`;
jupyter-scheduler's ``SchedulerApp.initialize_settings`` builds them. (This package's
``__init__`` imports nothing, so that ``defaults`` needs no jupyter-scheduler.) Without the
``jupyter_lowcost`` extension enabled (no manager in this process) both behave as
jupyter-scheduler's own classes.

Modules: ``defaults`` (the classes above), ``environments`` (the compute types),
``downloads`` (Download under the server's root), ``checks`` (a notebook made into a job's
arguments, with the ``POST lowcost/api/jobs`` checks), ``links`` (which row is which of our
jobs), ``states`` (our job's state written into its row), ``outputs`` (the staging files
Download copies), ``rows`` (rows kept current, reconciled at start, rows for
``jupyter lowcost run`` jobs), ``scheduler`` (the Scheduler subclass).
"""
