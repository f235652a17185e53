// Live mode's run scheduler: re-queue on change, cancel stale runs, coalesce to one pending run.
// No DOM and no ComfyUI imports: the caller injects how to snapshot the graph, submit a run and
// interrupt one (web/sana_sprint_live.js wires these to app.graphToPrompt, api.queuePrompt and
// api.interrupt), and reports when runs end.
//
// Rules:
// - A change is debounced (a typing or drawing burst becomes one run).
// - A snapshot whose key equals the last submitted one is not sent again (moving a node, changing a
//   node that the live outputs do not depend on, or an invalid graph that was already rejected).
// - At most one run of ours is on the server. A change during it marks the queue dirty and
//   interrupts that (now stale) run once; when it ends, one run with the newest graph is sent
//   (even if the graph changed back: the interrupted run did not finish it). However many changes
//   arrive meanwhile, only that one run is pending.
// - A stale run that never started (it was still waiting in the server's queue and `interrupt`
//   removed it, answering RUN_REMOVED) reports no end: the newest graph is sent at once.

import { debounce } from "./debounce.js";

/** What `interrupt` answers when the run was taken out of the server's queue before it started. */
export const RUN_REMOVED = "removed";

const DEFAULT_TIMERS = {
  set: (fn, ms) => setTimeout(fn, ms),
  clear: (handle) => clearTimeout(handle),
  now: () => Date.now(),
};

export class LiveQueue {
  /**
   * @param {object} deps
   * @param {() => Promise<{key: string, payload: any} | null>} deps.snapshot the graph as a
   *   comparable key plus what `submit` needs; null when there is nothing to run.
   * @param {(payload: any) => Promise<string | null>} deps.submit queues a run; its prompt id, or
   *   null when the server rejected it.
   * @param {(promptId: string) => Promise<any>} deps.interrupt cancels the run with this id;
   *   RUN_REMOVED when it had not started and will report no end (else anything).
   * @param {number} deps.debounceMs quiet time that ends a burst of changes.
   * @param {number} [deps.maxWaitMs] longest wait in a burst (0 = none).
   * @param {number} [deps.idleGraceMs] see serverIdle().
   * @param {(err: any) => void} [deps.onError] a failed submit or interrupt.
   * @param {(queue: LiveQueue) => void} [deps.onState] after every state change.
   */
  constructor({ snapshot, submit, interrupt, debounceMs, maxWaitMs = 0, idleGraceMs = 1000,
    timers = DEFAULT_TIMERS, onError = () => {}, onState = () => {} }) {
    this.snapshot = snapshot;
    this.submitRun = submit;
    this.interruptRun = interrupt;
    this.timers = timers;
    this.idleGraceMs = idleGraceMs;
    this.onError = onError;
    this.onState = onState;
    this.enabled = false;
    this.inFlight = null; // {id, at, interrupted}
    this.dirty = false;
    this.submitting = false;
    this.lastKey = null;
    this.stats = { submitted: 0, interrupted: 0, unchanged: 0, rejected: 0 };
    this._finishedEarly = new Set();
    this._flushing = null;
    this._again = false;
    this._debounced = debounce(() => this.flush(), debounceMs, { maxWaitMs, timers });
  }

  /** Turns live mode on (an immediate check, so a run starts at once) or off (nothing new is sent). */
  setEnabled(on) {
    this.enabled = Boolean(on);
    this._debounced.cancel();
    if (!this.enabled) this.dirty = false;
    this.onState(this);
    return this.enabled ? this.flush() : Promise.resolve();
  }

  /** Something changed: check again once the burst of changes is over. */
  changed() {
    if (this.enabled) this._debounced();
  }

  /** Whether a debounced check is waiting. */
  pending() {
    return this._debounced.pending();
  }

  /** Checks now (serialised: a call during a check makes that check run once more). */
  flush() {
    if (this._flushing) {
      this._again = true;
      return this._flushing;
    }
    this._flushing = (async () => {
      try {
        do {
          this._again = false;
          await this._flushOnce();
        } while (this._again);
      } finally {
        this._flushing = null;
      }
    })();
    return this._flushing;
  }

  async _flushOnce() {
    if (!this.enabled) return;
    const snap = await this.snapshot();
    if (!snap || !this.enabled) return;
    if (snap.key === this.lastKey) {
      this.stats.unchanged++;
      return;
    }
    if (this.inFlight) {
      this.dirty = true;
      if (!this.inFlight.interrupted) {
        this.inFlight.interrupted = true;
        this.lastKey = null; // its graph was not finished: whatever the graph is then, run it
        this.stats.interrupted++;
        this.onState(this);
        const id = this.inFlight.id;
        const outcome = await this._call(() => this.interruptRun(id));
        if (outcome === RUN_REMOVED && this.inFlight?.id === id) this._removed();
      }
      return;
    }
    await this._submit(snap);
  }

  /** The stale run left the server's queue unstarted: no end will come, so the newest graph goes now. */
  _removed() {
    this.inFlight = null;
    this.dirty = false;
    this._again = true; // the running flush checks once more and submits
    this.onState(this);
  }

  async _submit(snap) {
    this.lastKey = snap.key; // a rejected graph is not re-sent until it changes
    this.submitting = true;
    this.onState(this);
    const id = await this._call(() => this.submitRun(snap.payload));
    this.submitting = false;
    const early = this._finishedEarly;
    this._finishedEarly = new Set();
    if (id === null || id === undefined) {
      this.stats.rejected++;
    } else {
      this.stats.submitted++;
      if (!early.has(id)) this.inFlight = { id, at: this.timers.now(), interrupted: false };
    }
    this.onState(this);
  }

  async _call(fn) {
    try {
      return await fn();
    } catch (err) {
      this.onError(err);
      return null;
    }
  }

  /** A run ended (success, error or interrupt). Sends the pending run if changes came meanwhile. */
  finished(promptId) {
    if (this.inFlight && this.inFlight.id === promptId) {
      this.inFlight = null;
      this.onState(this);
      if (this.dirty) {
        this.dirty = false;
        return this.flush();
      }
    } else if (this.submitting) {
      this._finishedEarly.add(promptId); // it ended before its submit call returned
    }
    return Promise.resolve();
  }

  /** The server's queue is empty: a run older than idleGraceMs whose end was missed is over. */
  serverIdle() {
    if (this.inFlight && this.timers.now() - this.inFlight.at >= this.idleGraceMs) {
      return this.finished(this.inFlight.id);
    }
    return Promise.resolve();
  }

  /** Short state for the node's status line. */
  describe() {
    if (!this.enabled) return "off";
    if (this.submitting) return "queueing";
    if (this.inFlight) return this.dirty ? "cancelling stale run" : "running";
    return this.pending() ? "waiting for changes to settle" : "idle";
  }
}
