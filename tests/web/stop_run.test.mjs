import assert from "node:assert/strict";
import { test } from "node:test";

import { RUN_REMOVED } from "../../web/lib/live_queue.js";
import { stopRun } from "../../web/lib/stop_run.js";

/** A stand-in for the frontend's api over a fake server queue; `onDelete` may change what happens. */
function fakeApi({ running = [], pending = [], onDelete } = {}) {
  const calls = [];
  const item = (id, n) => ({ prompt: [n, id, {}, {}, []] });
  const server = { running: [...running], pending: [...pending] };
  return {
    calls,
    server,
    async getQueue() {
      calls.push("getQueue");
      return { Running: server.running.map(item), Pending: server.pending.map(item) };
    },
    async deleteItem(type, id) {
      calls.push(`delete ${type} ${id}`);
      if (onDelete) onDelete(server, id);
      else server.pending = server.pending.filter((p) => p !== id);
    },
    async interrupt(id) {
      calls.push(`interrupt ${id}`);
    },
  };
}

test("a prompt waiting in the queue is deleted, not interrupted, and reported as removed", async () => {
  const api = fakeApi({ running: ["other"], pending: ["p1"] });
  assert.equal(await stopRun(api, "p1"), RUN_REMOVED);
  assert.deepEqual(api.calls, ["getQueue", "delete queue p1", "getQueue"]);
  assert.deepEqual(api.server.pending, []);
});

test("a running prompt is interrupted and not reported as removed", async () => {
  const api = fakeApi({ running: ["p1"], pending: ["later"] });
  assert.notEqual(await stopRun(api, "p1"), RUN_REMOVED);
  assert.deepEqual(api.calls, ["getQueue", "interrupt p1"]);
});

test("a prompt that starts while it is being deleted is interrupted instead", async () => {
  const api = fakeApi({
    pending: ["p1"],
    onDelete: (server) => { // the server had already taken it: the delete finds nothing
      server.pending = [];
      server.running = ["p1"];
    },
  });
  assert.notEqual(await stopRun(api, "p1"), RUN_REMOVED);
  assert.deepEqual(api.calls, ["getQueue", "delete queue p1", "getQueue", "interrupt p1"]);
});

test("a prompt the server no longer holds is interrupted (a no-op there), not reported as removed", async () => {
  const api = fakeApi({ running: ["other"] });
  assert.notEqual(await stopRun(api, "p1"), RUN_REMOVED);
  assert.deepEqual(api.calls, ["getQueue", "interrupt p1"]);
});
