import assert from "node:assert/strict";
import { test } from "node:test";

import { debounce } from "../../web/lib/debounce.js";
import { fakeTimers } from "./fake_timers.mjs";

function setup(wait, opts = {}) {
  const timers = fakeTimers();
  const calls = [];
  const d = debounce((...args) => calls.push({ at: timers.now(), args }), wait, { ...opts, timers });
  return { timers, calls, d };
}

test("a burst of triggers gives one call with the latest arguments, after the quiet time", () => {
  const { timers, calls, d } = setup(300);
  d("a");
  timers.advance(100);
  d("ab");
  timers.advance(299);
  assert.equal(calls.length, 0);
  d("abc");
  timers.advance(299);
  assert.equal(calls.length, 0);
  timers.advance(1);
  assert.deepEqual(calls, [{ at: 699, args: ["abc"] }]);
  assert.equal(d.pending(), false);
});

test("maxWait fires during a burst that never pauses, then starts a new burst", () => {
  const { timers, calls, d } = setup(300, { maxWaitMs: 1000 });
  for (let t = 0; t < 2500; t += 100) {
    d(t);
    timers.advance(100);
  }
  // fired at 1000 (the burst began at 0) and 2000 (the next burst began with the trigger at 1000)
  assert.deepEqual(calls.map((c) => c.at), [1000, 2000]);
  assert.deepEqual(calls.map((c) => c.args[0]), [900, 1900]);
});

test("cancel drops the pending call and flush runs it at once", () => {
  const { timers, calls, d } = setup(300);
  d(1);
  d.cancel();
  timers.advance(1000);
  assert.equal(calls.length, 0);
  d(2);
  d.flush();
  assert.deepEqual(calls, [{ at: 1000, args: [2] }]);
  timers.advance(1000);
  assert.equal(calls.length, 1);
  d.flush(); // nothing pending: no call
  assert.equal(calls.length, 1);
});
