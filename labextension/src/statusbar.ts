/**
 * The status bar item: where the current notebook's kernel runs, the time left before the
 * lifetime cap (live), the cost so far and the money saved; notices and interruptions as
 * they happen. Registered by the status bar plugin when JupyterLab has a status bar.
 */
import { INotebookTracker } from '@jupyterlab/notebook';
import { Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { clock, costNow, money, secondsUntil } from './format';
import { IKernelView, LowCostStore } from './store';

/** The text of the item for a kernel's view; empty when it has no placement. */
export function statusText(view: IKernelView | undefined): string {
  if (!view?.placement) {
    return '';
  }
  const tier = view.placement.low_cost ? 'Low-cost' : 'Regular';
  const head = `${tier} ${view.placement.instance_type}`;
  const instance = view.instance;
  if (view.moving && (!instance || instance.state !== 'pending')) {
    return `${head} · moving…`;
  }
  if (!instance) {
    return `${head} · no instance`;
  }
  switch (instance.state) {
    case 'pending':
      return `${head} · starting…`;
    case 'notice': {
      const left = secondsUntil(instance.notice_deadline);
      return `${head} · interruption in ${clock(left ?? 0)}`;
    }
    case 'interrupted':
    case 'expired': {
      const what = instance.state === 'expired' ? 'reached its cap' : 'interrupted';
      return instance.recovery && instance.recovery !== 'none'
        ? `${head} · ${what}, resuming…`
        : `${head} · ${what}`;
    }
    case 'failed':
    case 'terminated':
      return `${head} · ${instance.state}`;
    default: {
      const { cost, savings } = costNow(instance, view.fetchedAt);
      const left = secondsUntil(instance.expires);
      const parts = [head];
      if (left !== null) {
        parts.push(`${clock(left)} left`);
      }
      parts.push(instance.low_cost ? `${money(cost)}, saved ${money(savings)}` : money(cost));
      return parts.join(' · ');
    }
  }
}

export class LowCostStatusItem extends Widget {
  constructor(
    private _tracker: INotebookTracker,
    private _store: LowCostStore
  ) {
    super();
    this.addClass('jp-LowCost-status');
    this.node.setAttribute('role', 'status');
    this.node.setAttribute('aria-label', 'Low-cost instance');
    // Connected with `this`: Widget.dispose disconnects them (Signal.clearData).
    _tracker.currentChanged.connect(this._follow, this);
    _store.changed.connect(this._onChanged, this);
    // The time left and the costs move every second; not while the page is hidden.
    this._clock = new Poll({
      factory: async () => this.render(),
      frequency: { interval: 1000, backoff: false },
      name: 'jupyter-lowcost:status-bar-clock',
      standby: 'when-hidden'
    });
    this._follow();
    void _store.status.then(status => {
      if (this.isDisposed) {
        return;
      }
      this._demo = status?.demo ?? null;
      this.render();
    });
  }

  /** Emitted when the item starts or stops having something to show. */
  readonly activeChanged = new Signal<this, void>(this);

  /** Whether the current notebook's kernel has a placement (the status bar asks). */
  get active(): boolean {
    return this._text !== '';
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._clock.dispose();
    super.dispose();
  }

  render(): void {
    const kernelId = this._kernelId();
    const view = kernelId ? this._store.get(kernelId) : undefined;
    const placed = statusText(view);
    // A demo server's short cap and random interruptions are not what a cloud does: say so.
    const text = placed && this._demo ? `Demo · ${placed}` : placed;
    const wasActive = this.active;
    this._text = text;
    if (this.node.textContent !== text) {
      this.node.textContent = text;
    }
    this.toggleClass('jp-mod-notice', view?.instance?.state === 'notice');
    const reason = view?.instance?.reason || text;
    this.node.title = this._demo ? `${reason}\n${this._demo}` : reason;
    if (wasActive !== this.active) {
      this.activeChanged.emit();
    }
  }

  private _kernelId(): string | undefined {
    return this._tracker.currentWidget?.sessionContext.session?.kernel?.id;
  }

  /**
   * The current notebook changed: show its kernel, and follow its kernel changes (a
   * connection made once per notebook, ended by the notebook's or this item's disposal).
   */
  private _follow(): void {
    const panel = this._tracker.currentWidget;
    if (panel) {
      panel.sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    }
    this._refresh();
  }

  private _onKernelChanged(): void {
    this._refresh();
  }

  private _refresh(): void {
    this.render();
    const kernelId = this._kernelId();
    if (kernelId && !this._store.get(kernelId)) {
      this._store.refresh(kernelId).catch(() => undefined);
    }
  }

  private _onChanged(_: LowCostStore, kernelId: string): void {
    if (kernelId === this._kernelId()) {
      this.render();
    }
  }

  private _text = '';
  private _demo: string | null = null;
  private _clock: Poll;
}
