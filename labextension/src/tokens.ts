/**
 * The token of the state every plugin of jupyter-lowcost shares: the REST client, the
 * store of placements, the mover and the user's settings. The state plugin
 * (`plugins/state.ts`) provides it; the others require it.
 */
import { Token } from '@lumino/coreutils';

import type { LowCostAPI } from './api';
import type { IMoverSettings, Mover } from './mover';
import type { INotifierSettings } from './notifier';
import type { LowCostStore } from './store';

/** The extension's settings (`schema/plugin.json`), as the plugins read them. */
export interface ILowCostSettings extends IMoverSettings, INotifierSettings {
  /** Move the kernel of every new notebook to a low-cost instance as it starts. */
  newNotebooksLowCost: boolean;
}

/** What the plugins share: one of each per page. */
export interface ILowCostState {
  /** The client of `lowcost/api/`, with the page's server settings (made once). */
  readonly api: LowCostAPI;
  /** What the page knows of the server's placements, kept current from its events. */
  readonly store: LowCostStore;
  /** Moves a notebook's kernel (the switch, the toggle command, new notebooks). */
  readonly mover: Mover;
  /**
   * The user's settings: the defaults until the settings plugin has loaded them, then
   * kept current by it. Read them when needed, not once.
   */
  readonly settings: ILowCostSettings;
}

export const ILowCostState = new Token<ILowCostState>(
  'jupyter-lowcost:ILowCostState',
  "jupyter-lowcost's shared state: the REST client, the store of placements, the mover and the settings."
);
