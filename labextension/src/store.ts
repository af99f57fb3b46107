/**
 * What this page knows of the server's placements: one view per kernel, kept current from
 * the server's instance events and `GET kernels/<id>`.
 *
 * The state plugin makes one store and shares it (`ILowCostState`); the switches, the
 * status bar item, the notifier and the commands read it and listen to `changed` (a
 * kernel's view changed) and `instanceEvent` (an event as it arrived, before any request:
 * that is what keeps notices fast).
 */
import { Event } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  CHECKPOINT_STATUS_SCHEMA_ID,
  EVENT_SCHEMA_ID,
  ICheckpointStatusEvent,
  IInstance,
  IInstanceEvent,
  IInstanceType,
  IKernelPlacement,
  IPlacement,
  IRestoredEvent,
  IStatus,
  LowCostAPI,
  LowCostAPIError,
  RESTORED_SCHEMA_ID
} from './api';

/** One kernel as the page sees it. */
export interface IKernelView {
  kernelId: string;
  placement: IPlacement | null;
  instance: IInstance | null;
  /** A move asked by this page or by the server (`moving`) is under way. */
  moving: boolean;
  /** `Date.now()` when `instance` came from the server (costs are extrapolated from it). */
  fetchedAt: number;
}

export class LowCostStore implements IDisposable {
  constructor(
    events: Event.IManager,
    private _api: LowCostAPI
  ) {
    events.stream.connect(this._onEvent, this);
    this.status = this._loadStatus();
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Stop listening to the server's events, and disconnect every listener of the store. */
  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    Signal.clearData(this);
  }

  /** The server's status, or null when the server extension is missing. */
  readonly status: Promise<IStatus | null>;

  /** The error met while loading the status (shown once by the notifier plugin), if any. */
  statusError: LowCostAPIError | null = null;

  /** A kernel's view changed; the argument is its kernel id. */
  get changed(): ISignal<this, string> {
    return this._changed;
  }

  /** An instance event, as received. */
  get instanceEvent(): ISignal<this, IInstanceEvent> {
    return this._instanceEvent;
  }

  /** A kernel resumed from a checkpoint (what came back). */
  get restored(): ISignal<this, IRestoredEvent> {
    return this._restored;
  }

  /** A kernel's checkpoints failed (a full disk), or work again. */
  get checkpointStatus(): ISignal<this, ICheckpointStatusEvent> {
    return this._checkpointStatus;
  }

  /** The catalog of instance types (fetched once, again after a failure). */
  catalog(): Promise<IInstanceType[]> {
    if (!this._catalog) {
      this._catalog = this._api.instanceTypes();
      this._catalog.catch(() => (this._catalog = null));
    }
    return this._catalog;
  }

  get(kernelId: string): IKernelView | undefined {
    return this._views.get(kernelId);
  }

  /** Mark a move started or ended by this page. */
  setMoving(kernelId: string, moving: boolean): void {
    const view = this._views.get(kernelId) ?? this._empty(kernelId);
    view.moving = moving;
    if (moving) {
      this._movingHere.add(kernelId);
    } else {
      this._movingHere.delete(kernelId);
    }
    this._views.set(kernelId, view);
    this._changed.emit(kernelId);
  }

  /**
   * Fetch `GET kernels/<id>` and update the view. Answers that arrive out of order are
   * dropped (only the newest request for a kernel is applied). Errors other than "no such
   * kernel" propagate to the caller.
   */
  async refresh(kernelId: string): Promise<IKernelView | undefined> {
    if ((await this.status) === null) {
      return undefined;
    }
    const serial = (this._serials.get(kernelId) ?? 0) + 1;
    this._serials.set(kernelId, serial);
    let model: IKernelPlacement | null = null;
    try {
      model = await this._api.kernel(kernelId);
    } catch (error) {
      if (!(error instanceof LowCostAPIError && error.status === 404)) {
        throw error;
      }
    }
    if (this._serials.get(kernelId) !== serial) {
      return this._views.get(kernelId);
    }
    if (model === null) {
      this._views.delete(kernelId);
    } else {
      this._views.set(kernelId, {
        kernelId,
        placement: model.placement,
        instance: model.instance,
        moving: model.moving || this._movingHere.has(kernelId),
        fetchedAt: Date.now()
      });
    }
    this._changed.emit(kernelId);
    return this._views.get(kernelId);
  }

  private async _loadStatus(): Promise<IStatus | null> {
    try {
      return await this._api.status();
    } catch (error) {
      this.statusError = error as LowCostAPIError;
      return null;
    }
  }

  private _empty(kernelId: string): IKernelView {
    return {
      kernelId,
      placement: null,
      instance: null,
      moving: false,
      fetchedAt: Date.now()
    };
  }

  private _onEvent(_: Event.IManager, emission: Event.Emission): void {
    if (emission.schema_id === RESTORED_SCHEMA_ID) {
      this._restored.emit(emission as unknown as IRestoredEvent);
      return;
    }
    if (emission.schema_id === CHECKPOINT_STATUS_SCHEMA_ID) {
      this._checkpointStatus.emit(emission as unknown as ICheckpointStatusEvent);
      return;
    }
    if (emission.schema_id !== EVENT_SCHEMA_ID) {
      return;
    }
    const event = emission as unknown as IInstanceEvent;
    // Apply what the event says at once, so the status bar follows within the event's
    // own latency; the refresh below brings the rest (expiry, costs, placement).
    const kernelId = event.kernel_id;
    if (kernelId) {
      const view = this._views.get(kernelId);
      if (view?.instance && view.instance.id === event.instance_id) {
        view.instance = {
          ...view.instance,
          state: event.state,
          reason: event.reason,
          notice_deadline: event.deadline,
          recovery: event.recovery
        };
        this._changed.emit(kernelId);
      }
    }
    this._instanceEvent.emit(event);
    if (kernelId && this._views.has(kernelId)) {
      this.refresh(kernelId).catch(error =>
        console.warn('jupyter-lowcost: could not refresh the kernel', error)
      );
    }
  }

  private _isDisposed = false;
  private _views = new Map<string, IKernelView>();
  private _serials = new Map<string, number>();
  private _movingHere = new Set<string>();
  private _catalog: Promise<IInstanceType[]> | null = null;
  private _changed = new Signal<this, string>(this);
  private _instanceEvent = new Signal<this, IInstanceEvent>(this);
  private _restored = new Signal<this, IRestoredEvent>(this);
  private _checkpointStatus = new Signal<this, ICheckpointStatusEvent>(this);
}
