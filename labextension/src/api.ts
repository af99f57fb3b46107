/**
 * The REST API of the jupyter-lowcost server extension (`{base_url}lowcost/api/`), typed
 * with the shapes generated from the server's schemas (`./rest`).
 *
 * Every module that talks to the server goes through one `LowCostAPI` (the state plugin
 * makes it, with the page's server settings made once), so that errors always carry the
 * server's own message, and a missing server extension is recognised in one place.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type {
  ICheckpointStatus,
  IInstanceType,
  IKernelPlacement,
  IRestored,
  IStatus,
  ISwitchKernelRequest
} from './rest';

export type {
  ICheckpointStatus,
  IInstance,
  IInstanceEvent,
  IInstanceType,
  IKernelPlacement,
  INotRestored,
  IPlacement,
  IRestored,
  IStartedKernel,
  IStatus,
  InstanceState,
  ISwitchKernelRequest
} from './rest';

/** The data of a "resumed from a checkpoint" event (schema `.../checkpoint/v1`). */
export type IRestoredEvent = IRestored;
/** The data of a "checkpoints failed / work again" event (schema `.../checkpoint-status/v1`). */
export type ICheckpointStatusEvent = ICheckpointStatus;

export const RESTORED_SCHEMA_ID = 'https://events.jupyter.org/jupyter_lowcost/checkpoint/v1';
export const CHECKPOINT_STATUS_SCHEMA_ID =
  'https://events.jupyter.org/jupyter_lowcost/checkpoint-status/v1';
export const EVENT_SCHEMA_ID = 'https://events.jupyter.org/jupyter_lowcost/instance/v1';

/** How to install the server extension, said wherever it is found missing. */
export const INSTALL_HINT =
  'The jupyter-lowcost server extension is not running on this Jupyter server. ' +
  'Install it with `pip install jupyter-lowcost` in the environment that runs ' +
  'JupyterLab (or enable it: `jupyter server extension enable jupyter_lowcost`), ' +
  'then restart JupyterLab.';

/** An answer of the server other than 2xx, with the server's message. */
export class LowCostAPIError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/**
 * The client of `{base_url}lowcost/api/`, made once by the state plugin with the page's
 * server settings (token, XSRF) and shared by every module that talks to the server.
 */
export class LowCostAPI {
  constructor(readonly serverSettings: ServerConnection.ISettings) {}

  /**
   * Call `lowcost/api/<path>` and return the decoded JSON. Throws `LowCostAPIError` with
   * the server's message on any error (`INSTALL_HINT` when the routes do not exist).
   */
  async request<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.serverSettings.baseUrl, 'lowcost/api', path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.serverSettings);
    } catch (error) {
      throw new LowCostAPIError(
        0,
        `The Jupyter server cannot be reached: ${(error as Error).message}`
      );
    }
    const text = await response.text();
    let body: any = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    if (!response.ok) {
      if (response.status === 404 && (body === null || !body.message)) {
        // No JSON error from our handlers: the routes themselves do not exist.
        throw new LowCostAPIError(404, INSTALL_HINT);
      }
      const message =
        (body && (body.message || body.reason)) || `${response.status} ${response.statusText}`;
      throw new LowCostAPIError(response.status, message);
    }
    return body as T;
  }

  /** `GET status`: the server's backend, policies and live instances, now. */
  status(): Promise<IStatus> {
    return this.request<IStatus>('status');
  }

  /** `GET instance-types`: the catalog. */
  instanceTypes(): Promise<IInstanceType[]> {
    return this.request<IInstanceType[]>('instance-types');
  }

  /** `GET kernels/<id>`: where a kernel runs (a 404 `LowCostAPIError` when unknown). */
  kernel(kernelId: string): Promise<IKernelPlacement> {
    return this.request<IKernelPlacement>(`kernels/${kernelId}`);
  }

  /** `PUT kernels/<id>`: move a kernel; resolves when it runs on its new instance. */
  moveKernel(kernelId: string, lowCost: boolean, instanceType: string): Promise<IKernelPlacement> {
    return this.request<IKernelPlacement>(`kernels/${kernelId}`, {
      method: 'PUT',
      body: JSON.stringify({
        low_cost: lowCost,
        instance_type: instanceType
      } satisfies ISwitchKernelRequest)
    });
  }
}
