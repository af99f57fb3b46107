/**
 * The switch plugin: the Low-cost switch as a notebook toolbar item (`lowcost-switch`,
 * placed by `schema/plugin.json`, so users can move or hide it in the settings).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { IToolbarWidgetRegistry } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';

import { LowCostSwitch } from '../switch';
import { ILowCostState } from '../tokens';

export const switchPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-lowcost:switch',
  description: "The Low-cost switch of the notebooks' toolbar.",
  autoStart: true,
  requires: [ILowCostState, IToolbarWidgetRegistry],
  activate: (app: JupyterFrontEnd, state: ILowCostState, toolbars: IToolbarWidgetRegistry) => {
    toolbars.addFactory<NotebookPanel>(
      'Notebook',
      'lowcost-switch',
      panel => new LowCostSwitch(panel, state.store, state.mover)
    );
  }
};
