/**
 * The state plugin: makes the page's server settings once, the REST client, the store of
 * placements and the mover, and provides them to the other plugins (`ILowCostState`).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ServerConnection } from '@jupyterlab/services';

import { LowCostAPI } from '../api';
import { Mover } from '../mover';
import { LowCostStore } from '../store';
import { ILowCostSettings, ILowCostState } from '../tokens';

/** The settings until the registry answers: the schema's defaults. */
const DEFAULT_SETTINGS: ILowCostSettings = {
  defaultInstanceType: '',
  capWarnings: [3600, 600],
  newNotebooksLowCost: false
};

export const statePlugin: JupyterFrontEndPlugin<ILowCostState> = {
  id: 'jupyter-lowcost:state',
  description: 'The REST client, the store of placements, the mover and the settings, shared.',
  autoStart: true,
  provides: ILowCostState,
  activate: (app: JupyterFrontEnd): ILowCostState => {
    const api = new LowCostAPI(ServerConnection.makeSettings());
    const store = new LowCostStore(app.serviceManager.events, api);
    const settings: ILowCostSettings = {
      ...DEFAULT_SETTINGS,
      capWarnings: [...DEFAULT_SETTINGS.capWarnings]
    };
    const mover = new Mover(store, api, () => settings);
    return { api, store, mover, settings };
  }
};
