/**
 * How durations, prices and instances are written in the switch, the dialog, the status
 * bar and the notifications (one place, so they all say the same thing the same way).
 */
import { IInstance, IInstanceType } from './api';

/** `$1.15`; small amounts keep a third digit (`$0.004`). */
export function money(amount: number): string {
  if (amount > 0 && amount < 0.01) {
    return `$${amount.toFixed(3)}`;
  }
  return `$${amount.toFixed(2)}`;
}

/** `23:59:07` for long spans, `4:07` under an hour, `7 s` under a minute. */
export function clock(seconds: number): string {
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  if (h > 0) {
    return `${h}:${two(m)}:${two(s)}`;
  }
  if (m > 0) {
    return `${m}:${two(s)}`;
  }
  return `${s} s`;
}

/** `24 hours`, `90 minutes`, `45 seconds`: a configured span in words. */
export function span(seconds: number): string {
  if (seconds >= 3600 && seconds % 3600 === 0) {
    const h = seconds / 3600;
    return `${h} hour${h === 1 ? '' : 's'}`;
  }
  if (seconds >= 60 && seconds % 60 === 0) {
    const m = seconds / 60;
    return `${m} minute${m === 1 ? '' : 's'}`;
  }
  if (seconds >= 3600) {
    return `${(seconds / 3600).toFixed(1)} hours`;
  }
  return `${Math.round(seconds)} seconds`;
}

/** `A100-80G: $1.15/h instead of $3.09/h, 63% less`. */
export function priceLine(type: IInstanceType): string {
  return (
    `${type.name}: ${money(type.price_low_cost)}/h instead of ` +
    `${money(type.price_regular)}/h, ${Math.round(type.discount_percent)}% less`
  );
}

/** `low-cost T4` or `regular T4`. */
export function placementName(instance: { instance_type: string; low_cost: boolean }): string {
  return `${instance.low_cost ? 'low-cost' : 'regular'} ${instance.instance_type}`;
}

/** Seconds from now until an ISO timestamp (negative once passed); null for null. */
export function secondsUntil(iso: string | null): number | null {
  if (!iso) {
    return null;
  }
  return (Date.parse(iso) - Date.now()) / 1000;
}

/**
 * Cost and savings of `instance` now, extrapolated from the last model the server sent
 * (the server's figures at `fetchedAt`, plus the hourly prices since then while live).
 */
export function costNow(instance: IInstance, fetchedAt: number): { cost: number; savings: number } {
  const live = ['pending', 'running', 'notice'].includes(instance.state);
  const hours = live && instance.started ? (Date.now() - fetchedAt) / 3.6e6 : 0;
  return {
    cost: instance.cost + hours * instance.price_per_hour,
    savings: instance.savings + hours * (instance.regular_price_per_hour - instance.price_per_hour)
  };
}
