/**
 * The REST API's shapes, generated from the server's schemas
 * (jupyter_lowcost/server/rest_responses.py and rest_schemas.py): do not edit; run
 * `python -m jupyter_lowcost.server.typescript labextension/src/rest.ts` after a change.
 */

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
export type InstanceState = 'pending' | 'running' | 'notice' | 'interrupted' | 'expired' | 'terminated' | 'failed';

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
  notice_warning: string | null;
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

/** A variable a resume did not bring back, with its type and why. */
export interface INotRestored {
  name: string;
  type: string;
  why: string;
}

/** What a resume brought back (`GET kernels/<id>`, and the checkpoint event's data). */
export interface IRestored {
  /** The kernel that resumed. */
  kernel_id: string;
  /** The checkpoint it restored. */
  checkpoint_id: string;
  /** When that checkpoint was taken (ISO 8601, UTC). */
  taken_at: string | null;
  /** How many variables came back. */
  variables: number;
  /** Their size in bytes, as saved. */
  bytes: number;
  not_restored: INotRestored[];
  /** How many variables did not come back. */
  not_restored_count: number;
  /** The cell the kernel is back at: the last cell (execution count) whose changes the checkpoint holds whole (null: the checkpoint does not say). */
  execution_count: number | null;
  /** The cell the checkpoint was taken in the middle of (a notice's checkpoint while a cell ran), or null. */
  taken_during: number | null;
  /** The last cell started before the instance was lost (null: unknown); the changes of the cells after execution_count up to this one are lost. */
  last_execution_count: number | null;
  /** In plain words, e.g. "resumed from the checkpoint taken 11 s before the interruption, at cell [12]: the changes of cells [13]–[14] are lost; 14 variables, 2.1 GB; not restored: gen (generator)". */
  message: string;
}

/** Whether the kernel's checkpoints work (`GET kernels/<id>`, and the checkpoint-status event's data). */
export interface ICheckpointStatus {
  /** The kernel whose checkpoints failed or work again. */
  kernel_id: string;
  /** False when a checkpoint failed; true when they work again. */
  ok: boolean;
  /** Why the checkpoint failed (null when ok). */
  error: string | null;
  /** When failing, the checkpoint an interruption would resume from (null: none); when ok, the checkpoint just written. */
  checkpoint_id: string | null;
  /** In plain words, e.g. "checkpoint failed: could not write the checkpoint in ...: No space left on device; an interruption now resumes from checkpoint 00000012". */
  message: string;
}

/** `GET kernels/<id>` (and `PUT`): the placement, the current instance, the history. */
export interface IKernelPlacement {
  kernel_id: string;
  placement: IPlacement | null;
  instance: IInstance | null;
  moving: boolean;
  restored: IRestored | null;
  checkpoint_status: ICheckpointStatus | null;
  history: IInstance[];
}

/** `GET status`. */
export interface IStatus {
  backend: string;
  backends_installed: string[];
  version: string;
  /** What the backend says of its room (slots, GPUs; partitions). */
  capacity: Record<string, unknown>;
  lifetime_cap_seconds: number;
  recovery_policy: string;
  /** When kernels checkpoint their variables: cell, interval:<s>, notice or off. */
  checkpoint_policy: string;
  live_instances: number;
  /** The folder the server's contents are in (where `jupyter lowcost run` can have a job write its output); null when not on disk. */
  root_dir: string | null;
  /** What this demo server does that a real one does not (`LowCostApp.demo`); null on a real server. */
  demo: string | null;
}

/** `POST kernels`: the standard kernel model, and its instance. */
export interface IStartedKernel {
  /** jupyter_server's kernel model. */
  kernel: Record<string, unknown>;
  instance: IInstance | null;
}

/** The data of one instance event (schema `.../jupyter_lowcost/instance/v1`). */
export interface IInstanceEvent {
  /** The instance's id, as in GET lowcost/api/instances/<id>. */
  instance_id: string;
  /** The kernel running on the instance. */
  kernel_id: string | null;
  state: InstanceState;
  /** Why, in words a person understands. */
  reason: string;
  /** For `notice`, when the instance will be taken away (ISO 8601, UTC). */
  deadline: string | null;
  /** The instance type. */
  instance_type: string;
  /** The tier of the instance. */
  tier: 'low-cost' | 'regular';
  /** On `interrupted` and `expired`: what happens to the kernel, by the server's recovery policy. relaunch: restarted on a new low-cost instance; fallback: restarted on a regular instance; none: shut down. Null on other transitions. */
  recovery: 'relaunch' | 'fallback' | 'none' | null;
}

/** States of a job (`jupyter lowcost run`). */
export type JobState = 'queued' | 'running' | 'resuming' | 'succeeded' | 'failed' | 'cancelled';

/** An interruption of a job: the cell it hit, the instance, how it ended, why, when. */
export interface IJobInterruption {
  cell: number;
  instance_id: string | null;
  state: string;
  reason: string;
  at: string | null;
}

/** The error of a job's failing cell. */
export interface IJobError {
  cell: number;
  ename: string;
  evalue: string;
  traceback: string[];
}

/** A job: `POST jobs`, `GET jobs`, `GET jobs/<id>`, `DELETE jobs/<id>` (and the job event's data). */
export interface IJob {
  /** The job's id. */
  id: string;
  /** The notebook's name. */
  name: string;
  state: JobState;
  /** What the job is doing, or why it ended, in words. */
  reason: string;
  /** The kernelspec it runs on. */
  kernel_name: string;
  /** The instance type it asked for. */
  instance_type: string;
  /** True for a low-cost (preemptible) instance. */
  low_cost: boolean;
  /** low-cost or regular. */
  tier: string;
  /** The parameters injected after the cell tagged parameters. */
  parameters: Record<string, unknown>;
  /** The notebook's path on the server (its folder is the kernel's working directory). */
  path: string | null;
  /** Where on the server the output notebook is saved after every cell. */
  output_path: string | null;
  /** When it was made (ISO 8601, UTC). */
  created: string | null;
  /** When it first started. */
  started: string | null;
  /** When it ended. */
  finished: string | null;
  /** Seconds since it started (to its end once ended). */
  elapsed_seconds: number;
  /** Its kernel (one id for its whole life). */
  kernel_id: string | null;
  /** The instance it runs on now (the last one). */
  instance_id: string | null;
  /** How many code cells it runs. */
  cells_total: number;
  /** How many have completed. */
  cells_done: number;
  /** The number (from 1) of the cell running now. */
  current_cell: number | null;
  /** The first line of that cell (at most 80 characters). */
  current_source: string | null;
  /** What its instances cost so far, in dollars. */
  cost: number;
  /** What low-cost instances saved against regular ones, in dollars. */
  saved: number;
  interruptions: IJobInterruption[];
  error: IJobError | null;
}

/** `GET jobs/<id>/log?offset=N`: the log from byte N on, where it ends, the job's state. */
export interface IJobLog {
  text: string;
  offset: number;
  state: JobState;
}

/** POST kernels */
export interface IStartKernelRequest {
  name?: string;
  instance_type?: string;
  low_cost?: boolean;
  path?: string | null;
}

/** PUT kernels/<kernel_id> */
export interface ISwitchKernelRequest {
  low_cost?: boolean;
  instance_type?: string;
}

/** POST instances/<instance_id>/interrupt */
export interface IInterruptRequest {
  notice_seconds: number;
}
