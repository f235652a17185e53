// Trailing debounce with an optional maximum wait. No DOM: timers are injectable for tests.

const DEFAULT_TIMERS = {
  set: (fn, ms) => setTimeout(fn, ms),
  clear: (handle) => clearTimeout(handle),
  now: () => Date.now(),
};

/**
 * Returns `trigger(...args)`: calls `fn(...args)` (the latest arguments) once calls pause for
 * `waitMs`, or `maxWaitMs` after the first call of a burst if calls never pause (0 = no limit).
 * `trigger.cancel()` drops a pending call, `trigger.flush()` runs it now, `trigger.pending()`
 * tells whether one is waiting.
 */
export function debounce(fn, waitMs, { maxWaitMs = 0, timers = DEFAULT_TIMERS } = {}) {
  let handle = null;
  let firstAt = 0;
  let lastArgs = [];

  const fire = () => {
    handle = null;
    const args = lastArgs;
    lastArgs = [];
    fn(...args);
  };

  const trigger = (...args) => {
    lastArgs = args;
    const now = timers.now();
    if (handle === null) {
      firstAt = now;
    } else {
      timers.clear(handle);
    }
    let delay = waitMs;
    if (maxWaitMs > 0) delay = Math.max(0, Math.min(waitMs, firstAt + maxWaitMs - now));
    handle = timers.set(fire, delay);
  };
  trigger.cancel = () => {
    if (handle !== null) timers.clear(handle);
    handle = null;
    lastArgs = [];
  };
  trigger.flush = () => {
    if (handle === null) return;
    timers.clear(handle);
    fire();
  };
  trigger.pending = () => handle !== null;
  return trigger;
}
