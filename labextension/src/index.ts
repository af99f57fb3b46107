/**
 * jupyter-lowcost's JupyterLab extension, as a list of small plugins around one shared
 * state (`ILowCostState`, provided by the state plugin): the switch (a notebook toolbar
 * item), the status bar item, the notifier, the commands, the settings
 * (`schema/plugin.json`) and the move of new notebooks.
 */
import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { commandsPlugin } from './plugins/commands';
import { newNotebooksPlugin } from './plugins/newNotebooks';
import { notifierPlugin } from './plugins/notifier';
import { settingsPlugin } from './plugins/settings';
import { statePlugin } from './plugins/state';
import { statusBarPlugin } from './plugins/statusbar';
import { switchPlugin } from './plugins/switch';

export { CommandIDs } from './plugins/commands';
export { ILowCostState } from './tokens';

const plugins: JupyterFrontEndPlugin<any>[] = [
  statePlugin,
  settingsPlugin,
  switchPlugin,
  statusBarPlugin,
  notifierPlugin,
  commandsPlugin,
  newNotebooksPlugin
];

export default plugins;
