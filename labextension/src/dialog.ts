/**
 * The two questions the switch asks: "move this kernel to a low-cost instance?" (with the
 * instance type picker, the prices and the rules) and "move it back to a regular one?".
 * Called by `Mover` (`mover.ts`); each resolves to the user's answer, null for Cancel.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IInstanceType, IStatus } from './api';
import { money, priceLine, span } from './format';

const RECOVERY: Record<string, string> = {
  relaunch:
    'After an interruption, the kernel is restarted on a new low-cost instance, from its ' +
    'latest checkpoint.',
  fallback:
    'After an interruption, the kernel is restarted on a regular instance, from its latest ' +
    'checkpoint.',
  none: 'After an interruption, the kernel is stopped.'
};

/** `after each cell`, `every 5 minutes`, `at interruption notices`. */
function CHECKPOINTS(mode: string): string {
  if (mode === 'cell') {
    return 'after each cell';
  }
  if (mode.startsWith('interval:')) {
    return `at most every ${span(Number(mode.split(':')[1]))}`;
  }
  return 'at interruption notices and moves';
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** The body of the "turn on" dialog: the type picker, its price, and the rules. */
class LowCostBody extends Widget implements Dialog.IBodyWidget<string> {
  constructor(types: IInstanceType[], status: IStatus, selected: string) {
    super();
    this.addClass('jp-LowCost-dialog');
    const picker = element('label', 'jp-LowCost-picker');
    picker.append(element('span', 'jp-LowCost-pickerLabel', 'Instance type'));
    this._select = element('select', 'jp-mod-styled jp-LowCost-select');
    this._select.setAttribute('aria-label', 'Instance type');
    for (const type of types) {
      const option = document.createElement('option');
      option.value = type.name;
      option.textContent =
        `${type.name} (${type.gpu_count} x ${type.gpu}): ` +
        `${money(type.price_low_cost)}/h instead of ${money(type.price_regular)}/h, ` +
        `${Math.round(type.discount_percent)}% less`;
      this._select.append(option);
    }
    this._select.value = types.some(t => t.name === selected) ? selected : types[0].name;
    picker.append(this._select);

    const price = element('p', 'jp-LowCost-price');
    const showPrice = () => {
      const type = types.find(t => t.name === this._select.value) ?? types[0];
      price.textContent = priceLine(type);
    };
    this._select.addEventListener('change', showPrice);
    showPrice();

    const rules = element('ul', 'jp-LowCost-rules');
    const cap = status.lifetime_cap_seconds;
    for (const rule of [
      'Low-cost instances can be interrupted at any time, even in the first minutes. ' +
        'You get a notice, often only 30 seconds to 2 minutes, before the instance is taken away.',
      cap > 0
        ? `They always shut down after ${span(cap)} (this server's lifetime cap), ` +
          'even without an interruption.'
        : 'This server sets no lifetime cap, but your provider may still stop them.',
      "What is in the kernel's memory is lost on an interruption unless it was " +
        'checkpointed. ' +
        (status.checkpoint_policy === 'off'
          ? 'This server does not checkpoint kernels.'
          : `This server checkpoints the kernel's variables ${CHECKPOINTS(status.checkpoint_policy)}, ` +
            'so an interruption costs at most the work since then.'),
      RECOVERY[status.recovery_policy] ?? '',
      status.checkpoint_policy === 'off'
        ? 'Confirming restarts the kernel now, on the new instance: its variables are not kept.'
        : 'Confirming restarts the kernel now, on the new instance; its variables come along.'
    ]) {
      if (rule) {
        rules.append(element('li', 'jp-LowCost-rule', rule));
      }
    }
    if (status.demo) {
      this.node.append(element('p', 'jp-LowCost-demo', status.demo));
    }
    this.node.append(picker, price, rules);
  }

  getValue(): string {
    return this._select.value;
  }

  private _select: HTMLSelectElement;
}

/** Ask to move a kernel to a low-cost instance; the chosen type, or null. */
export async function askLowCost(
  types: IInstanceType[],
  status: IStatus,
  selected: string
): Promise<string | null> {
  const result = await showDialog({
    title: 'Run this notebook on a low-cost instance?',
    body: new LowCostBody(types, status, selected),
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Switch to low-cost' })],
    focusNodeSelector: 'select'
  });
  return result.button.accept ? result.value : null;
}

/** Ask to move a kernel back to a regular instance of `type`; true to go ahead. */
export async function askRegular(
  type: IInstanceType | undefined,
  name: string,
  status: IStatus
): Promise<boolean> {
  const price = type ? ` at ${money(type.price_regular)}/h` : '';
  const variables =
    status.checkpoint_policy === 'off'
      ? 'Its variables are not kept.'
      : 'Its variables come along.';
  const body = element('div', 'jp-LowCost-dialog');
  body.append(
    element(
      'p',
      '',
      `The kernel restarts on a regular ${name} instance${price}, which is not ` +
        `interrupted and has no lifetime cap. ${variables}`
    )
  );
  const result = await showDialog({
    title: 'Move this notebook back to a regular instance?',
    body: new Widget({ node: body }),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Move to regular' })]
  });
  return result.button.accept;
}
