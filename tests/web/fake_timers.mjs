// A manual clock for the scheduler tests: timers fire only when the test advances time.

export function fakeTimers() {
  let now = 0;
  let nextId = 1;
  const pending = new Map(); // id -> {at, fn}
  return {
    set(fn, ms) {
      const id = nextId++;
      pending.set(id, { at: now + ms, fn });
      return id;
    },
    clear(id) {
      pending.delete(id);
    },
    now: () => now,
    /** Moves the clock forward, firing due timers in time order. */
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let first = null;
        for (const [id, t] of pending) if (t.at <= end && (!first || t.at < first[1].at)) first = [id, t];
        if (!first) break;
        pending.delete(first[0]);
        now = first[1].at;
        first[1].fn();
      }
      now = end;
    },
    count: () => pending.size,
  };
}

/** Lets queued promise callbacks run. */
export async function settle(rounds = 10) {
  for (let i = 0; i < rounds; i++) await Promise.resolve();
}
