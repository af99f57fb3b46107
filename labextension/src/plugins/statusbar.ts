/**
 * The status bar plugin: the item that says where the current notebook's kernel runs,
 * the time left and the cost, when JupyterLab has a status bar.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { LowCostStatusItem } from '../statusbar';
import { ILowCostState } from '../tokens';

/** The item's id in the status bar, as it was when one plugin did everything. */
const STATUS_ITEM_ID = 'jupyter-lowcost:plugin';

export const statusBarPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-lowcost:status-bar',
  description: 'The Low-cost status bar item: where the kernel runs, the time left, the cost.',
  autoStart: true,
  requires: [ILowCostState, INotebookTracker, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    state: ILowCostState,
    tracker: INotebookTracker,
    statusBar: IStatusBar
  ) => {
    const item = new LowCostStatusItem(tracker, state.store);
    statusBar.registerStatusItem(STATUS_ITEM_ID, {
      item,
      align: 'left',
      rank: 4,
      isActive: () => item.active,
      activeStateChanged: item.activeChanged
    });
  }
};
