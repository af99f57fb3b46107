/**
 * Notifications a person sees as toasts: the interruption notice with a live countdown,
 * the interruption, the recovery, the warnings before the lifetime cap, the cloud's early
 * warning of a risk, an instance whose launcher cannot read the cloud's notice (said once),
 * and checkpoints that fail (a full disk) or work again.
 *
 * Made once by the notifier plugin. It only speaks of kernels of notebooks open in this
 * window, and names the notebook in every message.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';

import { ICheckpointStatusEvent, IInstanceEvent, IRestoredEvent } from './api';
import { clock, placementName, secondsUntil } from './format';
import { LowCostStore } from './store';
import { expectRecoveryRestart } from './jupyterlabPrivate';

/** What the notifier needs from the settings, read at each tick. */
export interface INotifierSettings {
  /** Seconds before the lifetime cap at which to warn (e.g. 3600 and 600). */
  capWarnings: number[];
}

const RECOVERING: Record<string, string> = {
  relaunch: 'Restarting the kernel on a new low-cost instance…',
  fallback: 'Restarting the kernel on a regular instance…',
  none: 'The kernel is stopped (recovery policy: none).'
};

interface INotice {
  toast: string;
  deadline: string | null;
  /** `the low-cost T4 instance of nb.ipynb` */
  what: string;
  reason: string;
}

/**
 * Show a toast. Toasts show 140 characters, so the message leads with what happened and
 * the full story (the server's reason included) is one click away, under Details.
 */
function show(
  type: Notification.TypeOptions,
  message: string,
  details: string,
  autoClose: number | false
): string {
  return Notification.emit(message, type, {
    autoClose,
    actions: [
      {
        label: 'Details',
        callback: event => {
          event.preventDefault(); // keep the toast
          void showDialog({
            title: 'Low-cost instance',
            body: details,
            buttons: [Dialog.okButton()]
          });
        }
      }
    ]
  });
}

export class Notifier implements IDisposable {
  constructor(
    private _tracker: INotebookTracker,
    private _store: LowCostStore,
    private _settings: () => INotifierSettings
  ) {
    _store.instanceEvent.connect(this._onEvent, this);
    _store.restored.connect(this._onRestored, this);
    _store.checkpointStatus.connect(this._onCheckpointStatus, this);
    _store.changed.connect(this._onChanged, this);
    // The notices' countdowns and the cap warnings follow the clock; not while the page
    // is hidden (the next tick once it shows again catches up).
    this._clock = new Poll({
      factory: async () => this._tick(),
      frequency: { interval: 1000, backoff: false },
      name: 'jupyter-lowcost:notifier-clock',
      standby: 'when-hidden'
    });
  }

  get isDisposed(): boolean {
    return this._clock.isDisposed;
  }

  /** Stop the clock and every connection made with `this`. */
  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._clock.dispose();
    Signal.clearData(this);
  }

  private _panelOf(kernelId: string | null): NotebookPanel | null {
    if (!kernelId) {
      return null;
    }
    return this._tracker.find(p => p.sessionContext.session?.kernel?.id === kernelId) ?? null;
  }

  private _onEvent(_: LowCostStore, event: IInstanceEvent): void {
    const panel = this._panelOf(event.kernel_id);
    if (!panel) {
      return;
    }
    const path = panel.context.path;
    const kind = placementName({
      instance_type: event.instance_type,
      low_cost: event.tier === 'low-cost'
    });
    const what = `the ${kind} instance of ${path}`;
    const kernelId = event.kernel_id as string;
    switch (event.state) {
      case 'notice': {
        this._endNotice(event.instance_id);
        const notice: INotice = { toast: '', deadline: event.deadline, what, reason: event.reason };
        notice.toast = show(
          'warning',
          this._noticeText(notice),
          `${capitalize(what)} will be taken away at ${event.deadline}: ${event.reason}.`,
          false
        );
        this._notices.set(event.instance_id, notice);
        break;
      }
      case 'interrupted':
      case 'expired': {
        this._endNotice(event.instance_id);
        const happened = event.state === 'expired' ? 'reached its lifetime cap' : 'was interrupted';
        const next = RECOVERING[event.recovery ?? 'none'] ?? '';
        show(
          'error',
          `${capitalize(what)} ${happened}. ${next}`,
          `${capitalize(what)} ${happened}: ${event.reason}. ${next}`,
          false
        );
        if (event.recovery && event.recovery !== 'none') {
          this._recovering.set(kernelId, event.instance_id);
          expectRecoveryRestart(panel);
        }
        break;
      }
      case 'running': {
        if (event.reason.startsWith('early warning: ')) {
          // The cloud warns of a risk (AWS's rebalance recommendation): no notice yet.
          const risk = event.reason.slice('early warning: '.length);
          show(
            'warning',
            `${capitalize(what)} may be interrupted soon.`,
            `${capitalize(what)}: ${risk}.`,
            20000
          );
          break;
        }
        if (event.reason.startsWith('warning: ')) {
          this._warnNoNotices(event.instance_id, what, event.reason.slice('warning: '.length));
          break;
        }
        const lost = this._recovering.get(kernelId);
        if (lost && lost !== event.instance_id) {
          this._recovering.delete(kernelId);
          const how =
            event.tier === 'low-cost'
              ? `relaunched on a new ${kind} instance`
              : `fell back to a regular ${event.instance_type} instance`;
          const restored = this._restoredFor.get(kernelId);
          this._restoredFor.delete(kernelId);
          const what = restored
            ? `${cellsToRunAgain(restored)}${plural(restored.variables, 'variable')} restored${
                restored.not_restored_count ? `, ${restored.not_restored_count} not` : ''
              }`
            : 'its variables were not kept';
          const message = `The kernel of ${path} ${how}; ${what}.`;
          const details = restored
            ? `The kernel ${how} (${event.reason}) and ${restored.message}.`
            : `${message} ${event.reason}.`;
          show('success', message, details, 10000);
        }
        break;
      }
      case 'failed': {
        if (this._recovering.has(kernelId)) {
          this._recovering.delete(kernelId);
          const message = `The kernel of ${path} could not be restarted: ${event.reason}`;
          show('error', message, message, false);
        }
        break;
      }
      case 'terminated':
        this._endNotice(event.instance_id);
        break;
    }
  }

  /**
   * A kernel's view changed: an instance whose launcher already said it cannot read the
   * cloud's notice (before this page was opened, or while its notebook was closed) is
   * said as its event would have.
   */
  private _onChanged(_: LowCostStore, kernelId: string): void {
    const instance = this._store.get(kernelId)?.instance;
    const panel = this._panelOf(kernelId);
    if (!panel || !instance?.notice_warning || instance.state !== 'running') {
      return;
    }
    const what = `the ${placementName(instance)} instance of ${panel.context.path}`;
    this._warnNoNotices(instance.id, what, instance.notice_warning);
  }

  /** Say once per instance that its launcher cannot read the cloud's notice, and why. */
  private _warnNoNotices(instanceId: string, what: string, why: string): void {
    if (this._noticeWarned.has(instanceId)) {
      return;
    }
    this._noticeWarned.add(instanceId);
    show(
      'warning',
      `${capitalize(what)} cannot get interruption notices: interruptions will come without ` +
        'warning.',
      `${capitalize(what)}: ${why}.`,
      false
    );
  }

  private _onCheckpointStatus(_: LowCostStore, event: ICheckpointStatusEvent): void {
    const panel = this._panelOf(event.kernel_id);
    if (!panel) {
      return;
    }
    const path = panel.context.path;
    const previous = this._checkpointToasts.get(event.kernel_id);
    if (previous) {
      Notification.dismiss(previous);
      this._checkpointToasts.delete(event.kernel_id);
    }
    if (event.ok) {
      show('success', `${path}: checkpoints work again.`, `${path}: ${event.message}.`, 5000);
      return;
    }
    const kept = event.checkpoint_id
      ? `An interruption now resumes from checkpoint ${event.checkpoint_id}.`
      : 'An interruption now loses the variables.';
    this._checkpointToasts.set(
      event.kernel_id,
      show(
        'error',
        `${path}: a checkpoint of the variables failed. ${kept}`,
        `${path}: ${event.message}.`,
        false
      )
    );
  }

  private _onRestored(_: LowCostStore, event: IRestoredEvent): void {
    const panel = this._panelOf(event.kernel_id);
    if (!panel || (event.variables === 0 && event.not_restored_count === 0)) {
      return;
    }
    if (this._recovering.has(event.kernel_id)) {
      // Said with the recovery, once the kernel runs again.
      this._restoredFor.set(event.kernel_id, event);
      return;
    }
    const more = event.not_restored_count - event.not_restored.length;
    const lost = event.not_restored_count
      ? `; not restored: ${event.not_restored.map(s => s.name).join(', ')}` +
        (more > 0 ? ` and ${more} more` : '')
      : '';
    show(
      'info',
      `${panel.context.path}: ${plural(event.variables, 'variable')} came along to the new ` +
        `instance${lost}.`,
      `The kernel of ${panel.context.path} ${event.message}.`,
      8000
    );
  }

  private _noticeText(notice: INotice): string {
    const left = secondsUntil(notice.deadline);
    const when = left === null ? 'soon' : `in ${clock(Math.max(0, left))}`;
    return `Interruption ${when}: ${notice.what} is being taken back.`;
  }

  private _endNotice(instanceId: string): void {
    const notice = this._notices.get(instanceId);
    if (notice) {
      Notification.dismiss(notice.toast);
      this._notices.delete(instanceId);
    }
  }

  private _tick(): void {
    for (const notice of this._notices.values()) {
      Notification.update({ id: notice.toast, message: this._noticeText(notice) });
    }
    this._warnBeforeCap();
  }

  /** Warn once per threshold as a live low-cost instance crosses it. */
  private _warnBeforeCap(): void {
    const thresholds = [...this._settings().capWarnings].sort((a, b) => a - b);
    this._tracker.forEach(panel => {
      const kernelId = panel.sessionContext.session?.kernel?.id;
      const instance = kernelId ? this._store.get(kernelId)?.instance : null;
      if (!instance || !instance.low_cost || instance.state !== 'running') {
        return;
      }
      const left = secondsUntil(instance.expires);
      if (left === null || left <= 0) {
        return;
      }
      const lifetime =
        instance.started && instance.expires
          ? (Date.parse(instance.expires) - Date.parse(instance.started)) / 1000
          : Infinity;
      const warned = this._capWarned.get(instance.id) ?? new Set<number>();
      this._capWarned.set(instance.id, warned);
      // The smallest threshold crossed and not yet warned; larger ones are then moot.
      const crossed = thresholds.filter(t => left <= t && t < lifetime && !warned.has(t));
      if (crossed.length === 0) {
        return;
      }
      crossed.forEach(t => warned.add(t));
      const message =
        `The ${placementName(instance)} instance of ${panel.context.path} shuts down in ` +
        `${aboutSpan(left)} (its lifetime cap).`;
      show(
        'warning',
        message,
        `${message} Low-cost instances always stop at the cap; save what you need, or ` +
          'move the kernel to a regular instance with the Low-cost switch.',
        false
      );
    });
  }

  private _notices = new Map<string, INotice>();
  private _recovering = new Map<string, string>();
  private _restoredFor = new Map<string, IRestoredEvent>();
  /** Kernel id -> the toast saying its checkpoints fail. */
  private _checkpointToasts = new Map<string, string>();
  private _capWarned = new Map<string, Set<number>>();
  /** Instances whose launcher was said to get no interruption notices. */
  private _noticeWarned = new Set<string>();
  private _clock: Poll;
}

/** `about 10 minutes`, `about 1 hour`, `45 s`: a time left, in words. */
function aboutSpan(seconds: number): string {
  if (seconds < 60) {
    return clock(seconds);
  }
  if (seconds < 3000) {
    const m = Math.round(seconds / 60);
    return `about ${m} minute${m === 1 ? '' : 's'}`;
  }
  const h = Math.round(seconds / 3600);
  return `about ${h} hour${h === 1 ? '' : 's'}`;
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/**
 * "run cells [13]–[14] again; ": the cells whose changes the restored checkpoint misses
 * (it was taken before them, or during the first of them), as the server's report says;
 * "" when none are, or the kernel could not tell.
 */
function cellsToRunAgain(restored: IRestoredEvent): string {
  const back = restored.execution_count ?? null;
  const during = restored.taken_during ?? null;
  const last = restored.last_execution_count ?? null;
  if (back === null) {
    return '';
  }
  const first = during ?? back + 1;
  const end = Math.max(first, last ?? 0);
  if (during === null && (last === null || last <= back)) {
    return '';
  }
  const cells = first === end ? `cell [${first}]` : `cells [${first}]–[${end}]`;
  return `run ${cells} again; `;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
