"""jupyter-scheduler's Download, writing where its own file list looks: under the server's
root folder.

Who calls it: jupyter-scheduler's ``GET /scheduler/jobs/<id>/download_files`` route, through
``SchedulerApp.job_files_manager_class`` (set by :mod:`.defaults` where the user set none).
jupyter-scheduler 2.12's own ``JobFilesManager`` hands its copying process a path relative
to the root folder, which that process resolves against the server's working directory
(jupyter-scheduler#568): a server started from another folder than its root wrote the files
where neither JupyterLab's file browser nor the job's "files" list finds them. This class
gives the same process the absolute path; everything else is jupyter-scheduler's.
"""

from __future__ import annotations

from multiprocessing import Process

from jupyter_scheduler.job_files_manager import Downloader, JobFilesManager
from jupyter_server.utils import ensure_async


class RootJobFilesManager(JobFilesManager):
    """Copies a job's files from the staging area to ``<root>/jobs/<stem>-<job id>/``."""

    async def copy_from_staging(self, job_id: str, redownload: bool | None = False) -> None:
        scheduler = self.scheduler
        job = await ensure_async(scheduler.get_job(job_id, False))
        staging_paths = await ensure_async(scheduler.get_staging_paths(job))
        copying = Downloader(
            output_formats=job.output_formats,
            output_filenames=scheduler.get_job_filenames(job),
            staging_paths=staging_paths,
            output_dir=scheduler.get_local_output_path(model=job),  # absolute, under the root
            redownload=redownload,
            include_staging_files=job.package_input_folder,
        )
        Process(target=copying.download).start()
