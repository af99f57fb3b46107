#!/bin/sh
# The batch script of every jupyter-lowcost Slurm job (jupyter_lowcost/backends/slurm.py): it
# runs its arguments, `python -m jupyter_lowcost.launcher`, as the Slurm job's main process, so
# that Slurm's SIGTERM (preemption, time limit, scancel) reaches the launcher directly.
exec "$@"
