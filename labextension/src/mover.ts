/**
 * Moving a notebook's kernel: the switch's two flows (ask, then move with progress), and
 * the move of new notebooks when the settings say they start low-cost.
 *
 * Made once by the state plugin and shared (`ILowCostState`): the switches and the toggle
 * command call `toggle`; the new-notebooks plugin calls `moveTo`.
 */
import { Notification, showErrorMessage } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';

import { IInstanceEvent, LowCostAPI, LowCostAPIError } from './api';
import { askLowCost, askRegular } from './dialog';
import { money, placementName } from './format';
import { LowCostStore } from './store';

/** What the mover needs from the settings, read at each move. */
export interface IMoverSettings {
  defaultInstanceType: string;
}

export class Mover {
  constructor(
    private _store: LowCostStore,
    private _api: LowCostAPI,
    private _settings: () => IMoverSettings
  ) {}

  /** The switch was clicked: ask, then move the panel's kernel the other way. */
  async toggle(panel: NotebookPanel): Promise<void> {
    const kernelId = panel.sessionContext.session?.kernel?.id;
    const status = await this._store.status;
    if (!kernelId || status === null) {
      return;
    }
    const view = this._store.get(kernelId) ?? (await this._store.refresh(kernelId));
    if (view?.moving) {
      return;
    }
    try {
      const types = await this._store.catalog();
      if (view?.placement?.low_cost) {
        const name = view.placement.instance_type;
        if (
          await askRegular(
            types.find(t => t.name === name),
            name,
            status
          )
        ) {
          await this.moveTo(panel, false, name);
        }
        return;
      }
      const preferred = view?.placement?.instance_type || this._settings().defaultInstanceType;
      const chosen = await askLowCost(types, status, preferred);
      if (chosen !== null) {
        await this.moveTo(panel, true, chosen);
      }
    } catch (error) {
      Notification.error(messageOf(error), { autoClose: false });
    }
  }

  /**
   * Move the panel's kernel, showing progress in a notification until the kernel answers
   * on its new instance (or the server's error if it cannot). Resolves to true on success.
   */
  async moveTo(panel: NotebookPanel, lowCost: boolean, instanceType: string): Promise<boolean> {
    const kernelId = panel.sessionContext.session?.kernel?.id;
    if (!kernelId) {
      return false;
    }
    const target = placementName({ instance_type: instanceType, low_cost: lowCost });
    const path = panel.context.path;
    const starting = `${path}: starting a ${target} instance; the kernel restarts there.`;
    const id = Notification.emit(starting, 'in-progress', { autoClose: false });
    const onEvent = (_: LowCostStore, event: IInstanceEvent) => {
      if (event.kernel_id === kernelId && event.state === 'pending' && event.reason) {
        Notification.update({ id, message: `${path}: ${event.reason}` });
      }
    };
    this._store.instanceEvent.connect(onEvent);
    this._store.setMoving(kernelId, true);
    const reconnected = reconnection(panel);
    try {
      const model = await this._api.moveKernel(kernelId, lowCost, instanceType);
      await reconnected;
      const price = model.instance ? ` at ${money(model.instance.price_per_hour)}/h` : '';
      Notification.update({
        id,
        type: 'success',
        message: `${path}: the kernel now runs on a ${target} instance${price}.`,
        autoClose: 5000
      });
      return true;
    } catch (error) {
      // A new toast rather than an update: an error must stay until it is read.
      // Toasts show 140 characters: the server's message first, all of it in Details.
      Notification.dismiss(id);
      const full = `${path}: could not move the kernel to a ${target} instance: ${messageOf(error)}`;
      Notification.error(`Kernel not moved: ${messageOf(error)}`, {
        autoClose: false,
        actions: [
          {
            label: 'Details',
            callback: () => void showErrorMessage('The kernel was not moved', full)
          }
        ]
      });
      return false;
    } finally {
      this._store.instanceEvent.disconnect(onEvent);
      this._store.setMoving(kernelId, false);
      await this._store.refresh(kernelId).catch(() => undefined);
    }
  }
}

/**
 * Resolves once the panel's kernel connection has gone through the restart the server
 * announces after a move (it reconnects to the kernel's new instance) and the kernel there
 * has answered,
 * or after `timeoutMs` if that never shows (the move is then reported all the same).
 */
function reconnection(panel: NotebookPanel, timeoutMs = 30000): Promise<void> {
  return new Promise(resolve => {
    const context = panel.sessionContext;
    let restarted = false;
    const check = () => {
      const kernel = context.session?.kernel;
      if (!kernel) {
        return;
      }
      if (
        kernel.connectionStatus !== 'connected' ||
        kernel.status === 'restarting' ||
        kernel.status === 'autorestarting'
      ) {
        restarted = true;
      } else if (restarted) {
        // Connected again: ready once the kernel on the new instance has answered.
        void kernel.info.then(done, done);
      }
    };
    const done = () => {
      window.clearTimeout(timer);
      context.statusChanged.disconnect(check);
      context.connectionStatusChanged.disconnect(check);
      resolve();
    };
    const timer = window.setTimeout(done, timeoutMs);
    context.statusChanged.connect(check);
    context.connectionStatusChanged.connect(check);
  });
}

/** The message to show for anything a request threw. */
export function messageOf(error: unknown): string {
  if (error instanceof LowCostAPIError) {
    return error.message;
  }
  return error instanceof Error ? error.message : String(error);
}
