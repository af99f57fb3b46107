/**
 * The notifier plugin: the toasts of interruptions, recoveries, the lifetime cap and the
 * checkpoints (`Notifier`), and, once per page, why the server extension cannot be used.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';

import { Notifier } from '../notifier';
import { ILowCostState } from '../tokens';

export const notifierPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-lowcost:notifier',
  description: 'The Low-cost notifications: interruptions, recoveries, the cap, checkpoints.',
  autoStart: true,
  requires: [ILowCostState, INotebookTracker],
  activate: (app: JupyterFrontEnd, state: ILowCostState, tracker: INotebookTracker) => {
    const { store } = state;
    // For the page's life, as the store it listens to.
    new Notifier(tracker, store, () => state.settings);
    void store.status.then(status => {
      if (status === null && store.statusError) {
        // Said once per page, not once per notebook.
        Notification.error(store.statusError.message, { autoClose: false });
      }
    });
  }
};
