import assert from "node:assert/strict";
import { test } from "node:test";

import { LiveQueue, RUN_REMOVED } from "../../web/lib/live_queue.js";
import { fakeTimers, settle } from "./fake_timers.mjs";

/** A LiveQueue over a fake graph (its key) and a fake server that records what it is asked. */
function harness({ debounceMs = 300, maxWaitMs = 0, idleGraceMs = 1000 } = {}) {
  const timers = fakeTimers();
  const h = { timers, key: "g0", submits: [], interrupts: [], errors: [], running: [], nextId: 1 };
  h.submitImpl = async () => `p${h.nextId++}`;
  h.interruptImpl = async () => undefined;
  h.q = new LiveQueue({
    snapshot: async () => (h.key === null ? null : { key: h.key, payload: h.key }),
    submit: async (payload) => {
      h.submits.push(payload);
      const id = await h.submitImpl(payload);
      if (id) h.running.push(id);
      return id;
    },
    interrupt: async (id) => {
      h.interrupts.push(id);
      return h.interruptImpl(id);
    },
    debounceMs, maxWaitMs, idleGraceMs, timers,
    onError: (err) => h.errors.push(err),
  });
  h.edit = async (key, ms = debounceMs) => {
    h.key = key;
    h.q.changed();
    timers.advance(ms);
    await settle();
  };
  h.serverFinishes = async () => {
    const id = h.running.shift();
    await h.q.finished(id);
    await settle();
    return id;
  };
  return h;
}

test("while disabled, changes send nothing", async () => {
  const h = harness();
  await h.edit("g1");
  assert.deepEqual(h.submits, []);
  assert.equal(h.q.describe(), "off");
});

test("enabling sends the current graph at once; an unchanged graph is not sent again", async () => {
  const h = harness();
  await h.q.setEnabled(true);
  assert.deepEqual(h.submits, ["g0"]);
  await h.serverFinishes();
  await h.edit("g0"); // e.g. a node was moved: same prompt
  assert.deepEqual(h.submits, ["g0"]);
  assert.equal(h.q.stats.unchanged, 1);
});

test("a burst of typing becomes one run after the quiet time", async () => {
  const h = harness();
  await h.q.setEnabled(true);
  await h.serverFinishes();
  for (const key of ["a", "ab", "abc", "abcd"]) await h.edit(key, 100);
  assert.deepEqual(h.submits, ["g0"]);
  h.timers.advance(200);
  await settle();
  assert.deepEqual(h.submits, ["g0", "abcd"]);
});

test("a change during a run interrupts it once and sends one run with the newest graph when it ends", async () => {
  const h = harness();
  await h.q.setEnabled(true); // p1 runs g0
  await h.edit("g1");
  assert.deepEqual(h.interrupts, ["p1"]);
  assert.equal(h.q.describe(), "cancelling stale run");
  await h.edit("g2");
  await h.edit("g3");
  assert.deepEqual(h.interrupts, ["p1"]); // the stale run is interrupted once
  assert.deepEqual(h.submits, ["g0"]); // nothing else is queued while it stops
  await h.serverFinishes(); // p1 ends (interrupted)
  assert.deepEqual(h.submits, ["g0", "g3"]);
  assert.equal(h.q.inFlight.id, "p2");
  await h.serverFinishes();
  assert.equal(h.q.describe(), "idle");
  assert.deepEqual(h.submits, ["g0", "g3"]);
});

test("a stale run removed from the server's queue unstarted is replaced at once, without waiting for its end", async () => {
  const h = harness();
  h.interruptImpl = async () => RUN_REMOVED;
  await h.q.setEnabled(true); // p1 queued for g0 (waiting behind another job)
  await h.edit("g1");
  assert.deepEqual(h.interrupts, ["p1"]);
  assert.deepEqual(h.submits, ["g0", "g1"]); // no end of p1 was reported, none will be
  assert.equal(h.q.inFlight.id, "p2");
  assert.equal(h.q.describe(), "running");
  await h.q.finished("p1"); // a late end of the removed run changes nothing
  assert.equal(h.q.inFlight.id, "p2");
  h.interruptImpl = async () => undefined; // p2 is executing: a plain interrupt
  await h.edit("g2"); // interrupted as usual, replaced only when it ends
  assert.deepEqual(h.interrupts, ["p1", "p2"]);
  assert.deepEqual(h.submits, ["g0", "g1"]);
  await h.q.finished("p2");
  await settle();
  assert.deepEqual(h.submits, ["g0", "g1", "g2"]);
});

test("changing back to the running graph within the quiet time neither interrupts nor re-sends", async () => {
  const h = harness();
  await h.q.setEnabled(true);
  h.key = "g1";
  h.q.changed();
  h.timers.advance(100);
  await h.edit("g0");
  assert.deepEqual(h.interrupts, []);
  await h.serverFinishes();
  assert.deepEqual(h.submits, ["g0"]);
});

test("changing away and back during a run still ends with an uninterrupted run of that graph", async () => {
  const h = harness();
  await h.q.setEnabled(true); // p1 runs g0
  await h.edit("g1"); // p1 is now stale: interrupted
  await h.edit("g0"); // back to g0, but p1 will not finish it
  await h.serverFinishes();
  assert.deepEqual(h.submits, ["g0", "g0"]);
  assert.deepEqual(h.interrupts, ["p1"]);
});

test("ends of other prompts are ignored", async () => {
  const h = harness();
  await h.q.setEnabled(true);
  await h.q.finished("someone-else");
  assert.equal(h.q.inFlight.id, "p1");
  await h.edit("g1");
  assert.deepEqual(h.submits, ["g0"]);
});

test("a run that ends before its submit call returns does not block the queue", async () => {
  const h = harness();
  h.submitImpl = async () => {
    const id = `p${h.nextId++}`;
    await h.q.finished(id); // e.g. every node was cached: done before the HTTP answer arrives
    return id;
  };
  await h.q.setEnabled(true);
  assert.equal(h.q.inFlight, null);
  await h.edit("g1");
  assert.deepEqual(h.submits, ["g0", "g1"]);
});

test("a rejected graph is not sent again until it changes", async () => {
  const h = harness();
  h.submitImpl = async () => null; // 400 from /prompt
  await h.q.setEnabled(true);
  await h.edit("g0");
  assert.deepEqual(h.submits, ["g0"]);
  assert.equal(h.q.stats.rejected, 1);
  h.submitImpl = async () => "p9";
  await h.edit("g1");
  assert.deepEqual(h.submits, ["g0", "g1"]);
  assert.equal(h.q.inFlight.id, "p9");
});

test("a failing submit is reported and leaves the queue free", async () => {
  const h = harness();
  h.submitImpl = async () => {
    throw new Error("network down");
  };
  await h.q.setEnabled(true);
  assert.equal(h.errors.length, 1);
  assert.match(String(h.errors[0]), /network down/);
  assert.equal(h.q.inFlight, null);
  assert.equal(h.q.submitting, false);
});

test("an empty server queue frees a run whose end was missed, but only after the grace time", async () => {
  const h = harness({ idleGraceMs: 1000 });
  await h.q.setEnabled(true);
  await h.edit("g1"); // dirty: waits for p1
  h.timers.advance(500); // 800 ms after the submit
  await h.q.serverIdle();
  assert.equal(h.q.inFlight.id, "p1");
  h.timers.advance(200);
  await h.q.serverIdle();
  await settle();
  assert.deepEqual(h.submits, ["g0", "g1"]);
});

test("disabling drops the pending run and sends nothing more", async () => {
  const h = harness();
  await h.q.setEnabled(true);
  await h.edit("g1");
  await h.q.setEnabled(false);
  await h.serverFinishes();
  await h.edit("g2");
  assert.deepEqual(h.submits, ["g0"]);
});

test("random edits and run ends: never two runs of ours at once, and the last run has the final graph", async () => {
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let trial = 0; trial < 100; trial++) {
    const h = harness({ maxWaitMs: 900 });
    h.submitImpl = async () => {
      assert.equal(h.running.length, 0, "a second run was queued while one was on the server");
      return `p${h.nextId++}`;
    };
    await h.q.setEnabled(true);
    for (let step = 0; step < 60; step++) {
      const r = rand();
      if (r < 0.5) await h.edit(`k${Math.floor(rand() * 6)}`, Math.floor(rand() * 400));
      else if (r < 0.8 && h.running.length) await h.serverFinishes();
      else {
        h.timers.advance(Math.floor(rand() * 500));
        await settle();
      }
      for (const id of h.interrupts) assert.ok(id.startsWith("p"));
    }
    h.timers.advance(2000);
    await settle();
    while (h.running.length) {
      await h.serverFinishes();
      h.timers.advance(2000);
      await settle();
    }
    assert.equal(h.submits.at(-1), h.key, `trial ${trial}: last run ${h.submits.at(-1)} != graph ${h.key}`);
    assert.ok(!h.interrupts.includes(`p${h.nextId - 1}`), `trial ${trial}: the final graph's run was interrupted`);
    assert.equal(new Set(h.interrupts).size, h.interrupts.length, "a run was interrupted twice");
  }
});
