"""The environment variables of jupyter-lowcost, in one place.

Who sets what: the server's manager sets the kernel's variables when it launches an
instance (``server/instances/launches.py``); the Slurm backend passes them on through the job;
the launcher (``instance/``) and the kernel side (``kernel/``) read them. Tests and users
may set the last group. Stdlib only: every layer imports this module.
"""

from __future__ import annotations

# -- set by the server for the launcher (instance side) --------------------------------
#: host:port of the server's launch channel.
CHANNEL = "JUPYTER_LOWCOST_CHANNEL"
#: A file where a restarted server writes its launch channel's address.
CHANNEL_FILE = "JUPYTER_LOWCOST_CHANNEL_FILE"
#: The instance's id, as the server knows it.
INSTANCE_ID = "JUPYTER_LOWCOST_INSTANCE_ID"
#: The one-use secret the launcher proves itself with on its first connection.
LAUNCH_SECRET = "JUPYTER_LOWCOST_LAUNCH_SECRET"
#: Seconds a launcher whose server went away waits for one to come back ("0": its cap).
ORPHAN_TIMEOUT = "JUPYTER_LOWCOST_ORPHAN_TIMEOUT"
#: "1": a SIGTERM to the launcher is an interruption notice (Slurm's preemption).
SIGTERM_NOTICE = "JUPYTER_LOWCOST_SIGTERM_NOTICE"
#: "1": after that SIGTERM, the instance ends as soon as the idle kernel's notice
#: checkpoint is written (a pod, which its deletion ends anyway).
SIGTERM_LEAVE_WHEN_SAVED = "JUPYTER_LOWCOST_SIGTERM_LEAVE_WHEN_SAVED"

# -- set by the server for the kernel (kernel side) ------------------------------------
#: The server's URL, its token, and the kernel's id: what ``%lowcost`` calls back with.
URL = "JUPYTER_LOWCOST_URL"
TOKEN = "JUPYTER_LOWCOST_TOKEN"
KERNEL_ID = "JUPYTER_LOWCOST_KERNEL_ID"
#: The kernel's checkpoint directory, when checkpoints are written and how.
CHECKPOINT_DIR = "JUPYTER_LOWCOST_CHECKPOINT_DIR"
CHECKPOINTS = "JUPYTER_LOWCOST_CHECKPOINTS"
#: "1": this start resumes the kernel from its latest checkpoint; a checkpoint id: from
#: that one (a job resumes from the checkpoint after its last completed cell).
RESTORE = "JUPYTER_LOWCOST_RESTORE"
#: The job the kernel runs cells for (``jupyter lowcost run``): its IPython history stays
#: in memory, and its checkpoints (when on) are taken after every cell and only there, so
#: that each is the state after a completed cell.
JOB = "JUPYTER_LOWCOST_JOB"
#: The notebook the kernel runs for (named in checkpoints).
NOTEBOOK = "JUPYTER_LOWCOST_NOTEBOOK"
#: The kernel's previous checkpoints failed (a full disk): it says so on start.
CHECKPOINTS_FAILING = "JUPYTER_LOWCOST_CHECKPOINTS_FAILING"

# -- set by users and tests ------------------------------------------------------------
#: "0": a checkpoint store made with ``watch_writes=True`` (the store's default; kernels
#: make theirs without) does not watch writes to large arrays (it rehashes them instead).
WATCH_WRITES = "JUPYTER_LOWCOST_WATCH_WRITES"
#: The root of the sysfs the cloud notices' ``auto`` reads the machine's DMI data from
#: (default ``/sys``): tests point it at a folder that looks like a cloud VM's.
SYSFS = "JUPYTER_LOWCOST_SYSFS"
