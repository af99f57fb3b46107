/**
 * The new-notebooks plugin: a notebook made with File > New > Notebook starts low-cost,
 * on the default instance type, when the settings say so (`newNotebooksLowCost`).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { NotebookPanel } from '@jupyterlab/notebook';

import { ILowCostState } from '../tokens';

export const newNotebooksPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-lowcost:new-notebooks',
  description: 'New notebooks start on a low-cost instance when the settings say so.',
  autoStart: true,
  requires: [ILowCostState],
  activate: (app: JupyterFrontEnd, state: ILowCostState) => {
    // For the page's life, as the command it follows.
    app.commands.commandExecuted.connect((_, args) => {
      if (args.id !== 'notebook:create-new' || !state.settings.newNotebooksLowCost) {
        return;
      }
      void Promise.resolve(args.result)
        .then(panel => moveWhenConnected(state, panel))
        .catch(error => console.warn('jupyter-lowcost: new notebook not moved', error));
    });
  }
};

/** Move a new notebook's kernel to the default low-cost type once JupyterLab is connected. */
async function moveWhenConnected(state: ILowCostState, panel: unknown): Promise<void> {
  const { store, mover, settings } = state;
  if (!(panel instanceof NotebookPanel) || (await store.status) === null) {
    return;
  }
  await panel.sessionContext.ready;
  // Move only once JupyterLab is connected: a websocket that is still opening while the
  // kernel moves would wait for the old instance.
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel) {
    return;
  }
  await kernel.info;
  const types = await store.catalog();
  const type = types.some(t => t.name === settings.defaultInstanceType)
    ? settings.defaultInstanceType
    : types[0].name;
  await mover.moveTo(panel, true, type);
}
