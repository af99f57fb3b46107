"""A real one-node Slurm cluster in a temporary folder, for the Slurm backend's tests.

It runs munged, slurmctld and slurmd as this user (root on CI), with two partitions:
``lowcost`` (preemptible, requeue-on-preempt) and ``ondemand`` (a higher priority tier
that preempts it). ``KillWait`` is the notice a preempted job gets between SIGTERM and
SIGKILL. Everything lives under the folder; :meth:`SlurmCluster.stop` cancels the jobs and
stops the daemons by their pids.

By hand (to try things)::

    python tests/slurm_cluster.py /tmp/slurm      # starts it, prints SLURM_CONF, waits
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jupyter_process import free_port

from jupyter_lowcost.backends.slurm import parse_oneliner

#: Seconds between a preemption's SIGTERM and SIGKILL.
KILL_WAIT = 5
CPUS = 2

INSTALL_HINT = (
    "the Slurm tests need slurmctld, slurmd, sbatch and munged: "
    "`apt-get install -y slurm-wlm munge` (.ci/run installs them)"
)

SLURM_CONF = """\
ClusterName=lowcost-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser={user}
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=5
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=bf_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
KillWait={kill_wait}
MinJobAge=300
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=lowcost Nodes=localhost Default=YES MaxTime=24:00:00 PriorityTier=1 PreemptMode=REQUEUE GraceTime=0 State=UP
PartitionName=ondemand Nodes=localhost MaxTime=24:00:00 PriorityTier=10 PreemptMode=OFF State=UP
"""


def missing_commands() -> list[str]:
    """The Slurm and munge programs this machine lacks."""
    names = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "munged"]
    return [n for n in names if not (shutil.which(n) or Path(f"/usr/sbin/{n}").exists())]


def _program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """munged + slurmctld + slurmd under ``root``; ``env`` points Slurm commands at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._pidfiles = [root / "slurmd.pid", root / "slurmctld.pid", root / "munged.pid"]

    def start(self, timeout: float = 60) -> None:
        missing = missing_commands()
        if missing:
            raise RuntimeError(f"{INSTALL_HINT}; missing: {', '.join(missing)}")
        for sub in ("state", "spool", "munge", "munge-key"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)
        (self.root / "munge-key").chmod(0o700)
        key = self.root / "munge-key" / "munge.key"
        if not key.exists():
            subprocess.run([_program("mungekey"), "--create", f"--keyfile={key}"], check=True)
        subprocess.run(
            [
                _program("munged"),
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--log-file={self.root / 'munged.log'}",
                f"--seed-file={self.root / 'munge-key' / 'seed'}",
                "--force",
            ],
            check=True,
        )
        import pwd

        self.conf.write_text(
            SLURM_CONF.format(
                user=pwd.getpwuid(os.getuid()).pw_name,
                root=self.root,
                munge_socket=self.munge_socket,
                ctld_port=free_port(),
                d_port=free_port(),
                kill_wait=KILL_WAIT,
                cpus=CPUS,
            )
        )
        env = {**os.environ, **self.env}
        subprocess.run([_program("slurmctld"), "-f", str(self.conf), "-i"], check=True, env=env)
        subprocess.run(
            [_program("slurmd"), "-f", str(self.conf), "-N", "localhost"], check=True, env=env
        )
        end = time.monotonic() + timeout
        while True:
            state = self.node_state()
            if state.startswith("idle"):
                return
            if state.startswith(("down", "drain")):
                self.command("scontrol", "update", "nodename=localhost", "state=resume")
            if time.monotonic() > end:
                raise RuntimeError(
                    f"the test Slurm node is {state or 'unknown'} after {timeout:g} s; "
                    f"see {self.root}/slurmctld.log and slurmd.log"
                )
            time.sleep(0.2)

    def command(self, *argv: str, check: bool = True) -> str:
        """Run a Slurm command against this cluster; its stdout."""
        result = subprocess.run(
            list(argv), env={**os.environ, **self.env}, capture_output=True, text=True
        )
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
        return result.stdout

    def node_state(self) -> str:
        return self.command("sinfo", "-h", "-N", "-o", "%T", check=False).strip().lower()

    def jobs(self) -> list[dict[str, str]]:
        """Every job in the queue: id, name, partition, state, time limit."""
        out = self.command("squeue", "-h", "-o", "%i|%j|%P|%T|%l")
        keys = ("id", "name", "partition", "state", "time_limit")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (empty once the job is forgotten)."""
        return parse_oneliner(
            self.command("scontrol", "show", "job", "--oneliner", job_id, check=False)
        )

    def cancel_all(self) -> None:
        """Kill every job at once (kernels take SIGTERM as a notice and wait for SIGKILL)."""
        ids = [job["id"] for job in self.jobs() if job["state"] not in ("COMPLETED", "CANCELLED")]
        if ids:
            self.command("scancel", "--full", "--signal=KILL", *ids, check=False)
            self.command("scancel", *ids, check=False)

    def stop(self) -> None:
        try:
            self.cancel_all()
            end = time.monotonic() + 15
            while (
                any(j["state"] in ("RUNNING", "COMPLETING", "PENDING") for j in self.jobs())
                and time.monotonic() < end
            ):
                time.sleep(0.2)
        except Exception:  # noqa: BLE001 - stop the daemons whatever happened
            pass
        for pidfile in self._pidfiles:
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            end = time.monotonic() + 10
            while time.monotonic() < end:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/slurm-test"))
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.pause()
    finally:
        cluster.stop()
