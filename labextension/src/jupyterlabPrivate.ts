/**
 * Where the front end leans on JupyterLab beyond its public API: every such use is here,
 * with why, so that an upgrade of JupyterLab is checked in one file.
 */
import { NotebookPanel } from '@jupyterlab/notebook';

/**
 * JupyterLab says "The kernel for nb.ipynb appears to have died. It will restart
 * automatically." (a dialog to click away) whenever the server restarts a kernel on its
 * own, as the recovery of a taken instance does. Here it would be wrong twice: the toasts
 * already say what happened, and the kernel's variables come back from its checkpoint.
 * NotebookPanel shows that dialog only for the first of a series of automatic restarts;
 * marking the series as begun (its private `_autorestarting` flag, which it clears at the
 * kernel's next status) keeps the dialog away. JupyterLab has no public way to do this.
 * Where the flag is missing (another JupyterLab), the dialog shows as before.
 */
export function expectRecoveryRestart(panel: NotebookPanel): void {
  const flags = panel as unknown as { _autorestarting?: boolean };
  if (typeof flags._autorestarting === 'boolean') {
    flags._autorestarting = true;
  }
}
