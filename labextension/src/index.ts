/**
 * jupyter-lowcost's JupyterLab plugin: wires the store, the switch (a notebook toolbar
 * item, so users can move or hide it in settings), the status bar item, the notifier, and
 * the settings (`schema/plugin.json`).
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IToolbarWidgetRegistry, Notification } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { Mover } from './mover';
import { Notifier } from './notifier';
import { LowCostStatusItem } from './statusbar';
import { LowCostStore } from './store';
import { LowCostSwitch } from './switch';

const PLUGIN_ID = 'jupyter-lowcost:plugin';

/** The settings, with their defaults until the registry answers. */
interface ISettings {
  defaultInstanceType: string;
  capWarnings: number[];
  newNotebooksLowCost: boolean;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The Low-cost switch, status bar item and interruption notifications.',
  autoStart: true,
  requires: [INotebookTracker, IToolbarWidgetRegistry],
  optional: [ISettingRegistry, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    toolbarRegistry: IToolbarWidgetRegistry,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null
  ) => {
    const settings: ISettings = {
      defaultInstanceType: '',
      capWarnings: [3600, 600],
      newNotebooksLowCost: false
    };
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          const read = () => Object.assign(settings, loaded.composite as unknown as ISettings);
          read();
          loaded.changed.connect(read);
        })
        .catch(error => console.warn('jupyter-lowcost: settings not loaded', error));
    }

    const store = new LowCostStore(app.serviceManager.events);
    const mover = new Mover(store, () => settings);
    new Notifier(tracker, store, () => settings);

    toolbarRegistry.addFactory<NotebookPanel>(
      'Notebook',
      'lowcost-switch',
      panel => new LowCostSwitch(panel, store, mover)
    );

    if (statusBar) {
      const item = new LowCostStatusItem(tracker, store);
      statusBar.registerStatusItem(PLUGIN_ID, {
        item,
        align: 'left',
        rank: 4,
        isActive: () => item.active,
        activeStateChanged: item.activeChanged
      });
    }

    void store.status.then(status => {
      if (status === null && store.statusError) {
        // Said once per page, not once per notebook.
        Notification.error(store.statusError.message, { autoClose: false });
      }
    });

    // New notebooks start low-cost when the settings say so.
    app.commands.commandExecuted.connect((_, args) => {
      if (args.id !== 'notebook:create-new' || !settings.newNotebooksLowCost) {
        return;
      }
      void Promise.resolve(args.result).then(async (panel: unknown) => {
        if (!(panel instanceof NotebookPanel) || (await store.status) === null) {
          return;
        }
        await panel.sessionContext.ready;
        // Move only once JupyterLab is connected: a websocket that is still opening
        // while the kernel moves would wait for the old instance.
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
      }).catch(error => console.warn('jupyter-lowcost: new notebook not moved', error));
    });
  }
};

export default plugin;
