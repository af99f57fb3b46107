"""Jobs: a notebook's code cells run in order on a low-cost kernel, resumed after every
interruption at the first cell that did not complete (``jupyter lowcost run``).

- :mod:`.notebook`: parameters, outputs as they come, the output notebook's metadata;
- :mod:`.execution`: one cell on the job's kernel, and noticing the kernel's loss;
- :mod:`.runner`: one job's life, cell after cell; its pieces :mod:`.kernel` (start,
  client, release), :mod:`.interruptions` (resumes), :mod:`.cell_checkpoints` (a cell
  is done once its checkpoint is on disk; the next cell does not wait for it),
  :mod:`.restore_points` (which checkpoint comes back) and :mod:`.progress` (record, log,
  output notebook);
- :mod:`.admission`: the line in which jobs wait for room; :mod:`.output` the output
  notebook's writes; :mod:`.resume` what a resume did not bring back;
- :mod:`.service`: every job of the server (the REST API's ``jobs`` routes).

What a job is on disk is :mod:`jupyter_lowcost.storage.jobs`.
"""
