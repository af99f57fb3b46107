/**
 * The Low-cost switch of a notebook's toolbar, with the instance type beside it.
 *
 * Made by the toolbar factory the switch plugin registers (`Notebook` / `lowcost-switch`),
 * one per notebook panel. It shows the server's placement of the panel's kernel, as kept by the
 * store, and asks the mover to change it when clicked.
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { INSTALL_HINT } from './api';
import { Mover } from './mover';
import { LowCostStore } from './store';

export class LowCostSwitch extends Widget {
  constructor(
    private _panel: NotebookPanel,
    private _store: LowCostStore,
    private _mover: Mover
  ) {
    super();
    this.addClass('jp-LowCost-switchItem');
    this._button = document.createElement('button');
    this._button.className = 'jp-LowCost-switch';
    this._button.setAttribute('role', 'switch');
    this._button.setAttribute('aria-label', 'Low-cost');
    this._button.setAttribute('aria-checked', 'false');
    const track = document.createElement('span');
    track.className = 'jp-LowCost-track';
    track.append(Object.assign(document.createElement('span'), { className: 'jp-LowCost-thumb' }));
    const label = document.createElement('span');
    label.className = 'jp-LowCost-label';
    label.textContent = 'Low-cost';
    this._button.append(track, label);
    this._type = document.createElement('span');
    this._type.className = 'jp-LowCost-type';
    this.node.append(this._button, this._type);

    this._button.addEventListener('click', () => {
      void this._mover.toggle(this._panel);
    });
    // Connected with `this`: Widget.dispose disconnects them (Signal.clearData), so a
    // closed notebook's switch stops listening to the store.
    _store.changed.connect(this._onChanged, this);
    _panel.sessionContext.kernelChanged.connect(this._refresh, this);
    _panel.sessionContext.connectionStatusChanged.connect(this._onConnection, this);
    this._refresh();
  }

  private get _kernelId(): string | undefined {
    return this._panel.sessionContext.session?.kernel?.id;
  }

  private _refresh(): void {
    this._render();
    const kernelId = this._kernelId;
    if (kernelId) {
      this._store.refresh(kernelId).catch(error => {
        this._type.textContent = '';
        this._button.title = String(error.message ?? error);
      });
    }
  }

  private _onConnection(): void {
    // The server makes clients reconnect when the kernel has moved to a new instance
    // (a move, a recovery): ask where it runs now.
    const kernel = this._panel.sessionContext.session?.kernel;
    if (kernel?.connectionStatus !== 'connected') {
      return;
    }
    this._refresh();
    if (kernel.status === 'unknown') {
      // After a reconnect JupyterLab shows "Unknown" until the kernel reports a tracked
      // status; a silent empty execution (no history, no cell hooks) makes it say "Idle".
      void kernel.info.then(() =>
        kernel
          .requestExecute({ code: '', silent: true, store_history: false, stop_on_error: false })
          .done.catch(() => undefined)
      );
    }
  }

  private _onChanged(_: LowCostStore, kernelId: string): void {
    if (kernelId === this._kernelId) {
      this._render();
    }
  }

  private _render(): void {
    void this._store.status.then(status => {
      if (this.isDisposed) {
        return;
      }
      if (status === null) {
        this._button.disabled = true;
        this._button.title = INSTALL_HINT;
        this._type.textContent = '';
        return;
      }
      const kernelId = this._kernelId;
      const view = kernelId ? this._store.get(kernelId) : undefined;
      const on = view?.placement?.low_cost ?? false;
      this._button.setAttribute('aria-checked', on ? 'true' : 'false');
      this._button.disabled = !kernelId || (view?.moving ?? false);
      this.toggleClass('jp-mod-on', on);
      this.toggleClass('jp-mod-moving', view?.moving ?? false);
      const type = view?.placement?.instance_type;
      this._type.textContent = view?.moving ? `${type ?? ''} moving…`.trim() : (type ?? 'local');
      this._button.title = !kernelId
        ? 'Start a kernel to choose where it runs'
        : on
          ? `The kernel runs on a low-cost ${type} instance: click to move it to a regular one`
          : "Run this notebook's kernel on a low-cost instance";
    });
  }

  private _button: HTMLButtonElement;
  private _type: HTMLSpanElement;
}
