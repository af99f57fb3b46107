/**
 * jupyter-lowcost's JupyterLab plugin: wires the store, the switch (a notebook toolbar
 * item, so users can move or hide it in settings), the status bar item, the notifier, the
 * commands (in the command palette: toggle low-cost, show the status), and the settings
 * (`schema/plugin.json`).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  IToolbarWidgetRegistry,
  Notification,
  showDialog
} from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { Widget } from '@lumino/widgets';
import { IStatusBar } from '@jupyterlab/statusbar';

import { IStatus, requestAPI } from './api';
import { messageOf, Mover } from './mover';
import { Notifier } from './notifier';
import { span } from './format';
import { LowCostStatusItem, statusText } from './statusbar';
import { LowCostStore } from './store';
import { LowCostSwitch } from './switch';

const PLUGIN_ID = 'jupyter-lowcost:plugin';

/** The commands, in the command palette under "Low-cost". */
export const CommandIDs = {
  toggle: 'lowcost:toggle',
  showStatus: 'lowcost:show-status'
};

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
  optional: [ISettingRegistry, IStatusBar, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    toolbarRegistry: IToolbarWidgetRegistry,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null
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

    addCommands(app, tracker, store, mover, palette);

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
      void Promise.resolve(args.result)
        .then(async (panel: unknown) => {
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
        })
        .catch(error => console.warn('jupyter-lowcost: new notebook not moved', error));
    });
  }
};

/**
 * The commands: what the switch does, and what the status bar says at more length, for
 * the notebook in front (the palette, keyboard shortcuts a user binds, menus).
 */
function addCommands(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  store: LowCostStore,
  mover: Mover,
  palette: ICommandPalette | null
): void {
  const kernelIdOf = (panel: NotebookPanel | null) => panel?.sessionContext.session?.kernel?.id;
  app.commands.addCommand(CommandIDs.toggle, {
    label: 'Run Kernel on a Low-cost Instance',
    caption:
      "Move the current notebook's kernel to a low-cost (preemptible) instance, or back to a regular one",
    isEnabled: () => {
      const kernelId = kernelIdOf(tracker.currentWidget);
      return !!kernelId && !(store.get(kernelId)?.moving ?? false);
    },
    isToggled: () => {
      const kernelId = kernelIdOf(tracker.currentWidget);
      return !!kernelId && (store.get(kernelId)?.placement?.low_cost ?? false);
    },
    execute: async () => {
      const panel = tracker.currentWidget;
      if (panel) {
        await mover.toggle(panel);
      }
    }
  });
  app.commands.addCommand(CommandIDs.showStatus, {
    label: 'Show Low-cost Status',
    caption: "Where the current notebook's kernel runs, its cost, and the server's backend",
    execute: async () => {
      if ((await store.status) === null) {
        Notification.error(store.statusError?.message ?? 'jupyter-lowcost is not available', {
          autoClose: false
        });
        return;
      }
      let status: IStatus;
      try {
        status = await requestAPI<IStatus>('status'); // now, not as the page loaded
      } catch (error) {
        Notification.error(messageOf(error), { autoClose: false });
        return;
      }
      const panel = tracker.currentWidget;
      const kernelId = kernelIdOf(panel);
      const view = kernelId ? await store.refresh(kernelId) : undefined;
      const body = document.createElement('div');
      body.className = 'jp-LowCost-statusDialog';
      const lines = [
        panel
          ? `${panel.title.label}: ${statusText(view) || "the kernel runs on the Jupyter server's machine"}`
          : 'No notebook is open.',
        `Backend: ${status.backend}, ${status.live_instances} live instance(s)`,
        status.lifetime_cap_seconds > 0
          ? `Low-cost instances stop after ${span(status.lifetime_cap_seconds)}; recovery: ${status.recovery_policy}; checkpoints: ${status.checkpoints}`
          : `Recovery: ${status.recovery_policy}; checkpoints: ${status.checkpoints}`
      ];
      if (status.demo) {
        lines.push(status.demo);
      }
      for (const line of lines) {
        body.append(Object.assign(document.createElement('p'), { textContent: line }));
      }
      await showDialog({
        title: 'Low-cost status',
        body: new Widget({ node: body }),
        buttons: [Dialog.okButton({ label: 'Close' })]
      });
    }
  });
  store.changed.connect(() => app.commands.notifyCommandChanged(CommandIDs.toggle));
  tracker.currentChanged.connect(() => app.commands.notifyCommandChanged(CommandIDs.toggle));
  if (palette) {
    for (const command of [CommandIDs.toggle, CommandIDs.showStatus]) {
      palette.addItem({ command, category: 'Low-cost' });
    }
  }
}

export default plugin;
