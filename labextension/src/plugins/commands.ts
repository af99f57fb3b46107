/**
 * The commands plugin: what the switch does, and what the status bar says at more length,
 * for the notebook in front (the command palette under "Low-cost", keyboard shortcuts a
 * user binds, menus).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, Notification, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { IStatus } from '../api';
import { span } from '../format';
import { messageOf } from '../mover';
import { statusText } from '../statusbar';
import { ILowCostState } from '../tokens';

/** The commands, in the command palette under "Low-cost". */
export const CommandIDs = {
  toggle: 'lowcost:toggle',
  showStatus: 'lowcost:show-status'
};

export const commandsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-lowcost:commands',
  description: 'The Low-cost commands: toggle low-cost, show the status.',
  autoStart: true,
  requires: [ILowCostState, INotebookTracker],
  optional: [ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    state: ILowCostState,
    tracker: INotebookTracker,
    palette: ICommandPalette | null
  ) => {
    addToggle(app, state, tracker);
    app.commands.addCommand(CommandIDs.showStatus, {
      label: 'Show Low-cost Status',
      caption: "Where the current notebook's kernel runs, its cost, and the server's backend",
      execute: () => showStatus(state, tracker)
    });
    if (palette) {
      for (const command of [CommandIDs.toggle, CommandIDs.showStatus]) {
        palette.addItem({ command, category: 'Low-cost' });
      }
    }
  }
};

function kernelIdOf(panel: NotebookPanel | null): string | undefined {
  return panel?.sessionContext.session?.kernel?.id;
}

/** The toggle: enabled and checked as the store says, for the notebook in front. */
function addToggle(app: JupyterFrontEnd, state: ILowCostState, tracker: INotebookTracker): void {
  const { store, mover } = state;
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
  // For the page's life, as the command.
  const changed = () => app.commands.notifyCommandChanged(CommandIDs.toggle);
  store.changed.connect(changed);
  tracker.currentChanged.connect(changed);
}

/** The status dialog: the notebook in front, the server's backend and policies, now. */
async function showStatus(state: ILowCostState, tracker: INotebookTracker): Promise<void> {
  const { api, store } = state;
  if ((await store.status) === null) {
    Notification.error(store.statusError?.message ?? 'jupyter-lowcost is not available', {
      autoClose: false
    });
    return;
  }
  let status: IStatus;
  try {
    status = await api.status(); // now, not as the page loaded
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
      ? `Low-cost instances stop after ${span(status.lifetime_cap_seconds)}; recovery: ${status.recovery_policy}; checkpoints: ${status.checkpoint_policy}`
      : `Recovery: ${status.recovery_policy}; checkpoints: ${status.checkpoint_policy}`
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
