/**
 * The settings plugin: loads the user's settings (`schema/plugin.json`, keyed to this
 * plugin's id) into the shared state, and keeps them current as the user edits them.
 * Without a settings registry, the other plugins keep the defaults.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { ILowCostSettings, ILowCostState } from '../tokens';

/** The schema's plugin: its id is the settings' key (`jupyter-lowcost:plugin`). */
const PLUGIN_ID = 'jupyter-lowcost:plugin';

export const settingsPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    "The Low-cost settings: the default instance type, the cap's warnings, new notebooks.",
  autoStart: true,
  requires: [ILowCostState, ISettingRegistry],
  activate: (app: JupyterFrontEnd, state: ILowCostState, registry: ISettingRegistry) => {
    registry
      .load(PLUGIN_ID)
      .then(loaded => {
        const read = () =>
          Object.assign(state.settings, loaded.composite as unknown as ILowCostSettings);
        read();
        // For the page's life, as the settings themselves.
        loaded.changed.connect(read);
      })
      .catch(error => console.warn('jupyter-lowcost: settings not loaded', error));
  }
};
