/**
 * The REST API of the jupyter-lowcost server extension (`{base_url}lowcost/api/`), typed.
 *
 * Every module that talks to the server goes through `requestAPI`, so that errors always
 * carry the server's own message, and a missing server extension is recognised in one place.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One entry of `GET instance-types`. */
export interface IInstanceType {
  name: string;
  gpu: string;
  gpu_count: number;
  vcpus: number;
  memory_gb: number;
  price_regular: number;
  price_low_cost: number;
  discount_percent: number;
  low_cost_lifetime_cap_seconds: number;
}

/** States of an instance, as the server's records name them. */
export type InstanceState =
  | 'pending'
  | 'running'
  | 'notice'
  | 'interrupted'
  | 'expired'
  | 'terminated'
  | 'failed';

/** One instance, as served by `GET instances` and `GET kernels/<id>`. */
export interface IInstance {
  id: string;
  kernel_id: string | null;
  instance_type: string;
  low_cost: boolean;
  tier: string;
  backend: string;
  state: InstanceState;
  reason: string;
  created: string | null;
  started: string | null;
  ended: string | null;
  expires: string | null;
  notice_deadline: string | null;
  recovery: string | null;
  seconds_left: number | null;
  price_per_hour: number;
  regular_price_per_hour: number;
  cost: number;
  savings: number;
}

/** A kernel's placement: where it is asked to run. */
export interface IPlacement {
  instance_type: string;
  low_cost: boolean;
  tier: string;
}

/** `GET kernels/<id>`. */
export interface IKernelPlacement {
  kernel_id: string;
  placement: IPlacement | null;
  instance: IInstance | null;
  moving: boolean;
}

/** `GET status`. */
export interface IStatus {
  backend: string;
  version: string;
  lifetime_cap_seconds: number;
  recovery_policy: string;
  /** When kernels checkpoint their variables: cell, interval:<s>, notice or off. */
  checkpoints: string;
  live_instances: number;
  /** What this demo server does that a real one does not (`LowCostApp.demo`); null on a real server. */
  demo: string | null;
}

/** The data of a "resumed from a checkpoint" event (schema `.../checkpoint/v1`). */
export interface IRestoredEvent {
  kernel_id: string;
  checkpoint_id: string;
  taken_at: string | null;
  variables: number;
  bytes: number;
  not_restored: { name: string; type: string; why: string }[];
  message: string;
}

export const RESTORED_SCHEMA_ID =
  'https://events.jupyter.org/jupyter_lowcost/checkpoint/v1';

/** The data of a "checkpoints failed / work again" event (schema `.../checkpoint-status/v1`). */
export interface ICheckpointStatusEvent {
  kernel_id: string;
  ok: boolean;
  error: string | null;
  checkpoint_id: string | null;
  message: string;
}

export const CHECKPOINT_STATUS_SCHEMA_ID =
  'https://events.jupyter.org/jupyter_lowcost/checkpoint-status/v1';

/** The data of one instance event (schema `.../jupyter_lowcost/instance/v1`). */
export interface IInstanceEvent {
  instance_id: string;
  kernel_id: string | null;
  state: InstanceState;
  reason: string;
  deadline: string | null;
  instance_type: string;
  tier: string;
  recovery: string | null;
}

export const EVENT_SCHEMA_ID =
  'https://events.jupyter.org/jupyter_lowcost/instance/v1';

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
 * Call `lowcost/api/<path>` with the page's server settings (token, XSRF), and return
 * the decoded JSON. Throws `LowCostAPIError` with the server's message on any error.
 */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'lowcost/api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
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
      (body && (body.message || body.reason)) ||
      `${response.status} ${response.statusText}`;
    throw new LowCostAPIError(response.status, message);
  }
  return body as T;
}

/** `PUT kernels/<id>`: move a kernel; resolves when it runs on its new instance. */
export function moveKernel(
  kernelId: string,
  lowCost: boolean,
  instanceType: string
): Promise<IKernelPlacement> {
  return requestAPI<IKernelPlacement>(`kernels/${kernelId}`, {
    method: 'PUT',
    body: JSON.stringify({ low_cost: lowCost, instance_type: instanceType })
  });
}
