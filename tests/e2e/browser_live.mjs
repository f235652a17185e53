// Browser end to end of live mode, driven by tests/e2e/test_browser_live.py (which starts ComfyUI).
//
//   node tests/e2e/browser_live.mjs --url http://127.0.0.1:PORT --workflow workflows/x.json \
//        --playwright /path/with/node_modules --chromium /usr/bin/chromium --screenshot out.png \
//        [--busy-prompt busy.json]
//
// Opens ComfyUI in headless Chromium (playwright-core), loads the live workflow, switches "Live"
// on, types into the prompt and draws on a scribble pad, and checks that a new image appears in
// the live preview nodes each time without the Queue button being used. With --busy-prompt (an API
// prompt that keeps the server busy for seconds), it then queues that prompt and types twice: the
// live run waiting behind it goes stale and must be deleted from the server's queue, and the newest
// text runs once the busy prompt is done. Prints one JSON line with what it saw; exits non-zero on a
// failed check.

import { readFileSync } from "node:fs";

import { RUN_TIMEOUT_MS, args, check, runMain, withComfyPage } from "./browser_page.mjs";

/** The image file a live preview node shows now ("" if none). */
async function shownImage(page, nodeId) {
  return page.evaluate((id) => window.comfyAPI.app.app.nodeOutputs[String(id)]?.images?.[0]?.filename ?? "", nodeId);
}

async function waitForNewImage(page, nodeId, previous, what) {
  await page.waitForFunction(
    ([id, prev]) => {
      const name = window.comfyAPI.app.app.nodeOutputs[String(id)]?.images?.[0]?.filename ?? "";
      return name !== "" && name !== prev;
    },
    [nodeId, previous], { timeout: RUN_TIMEOUT_MS, polling: 100 });
  const name = await shownImage(page, nodeId);
  check(name !== previous, `${what}: a new image in node ${nodeId}`);
  return name;
}

async function loadWorkflow(page, workflow) {
  return page.evaluate(async (graph) => {
    const { app } = window.comfyAPI.app;
    await app.loadGraphData(graph, true, true, "live test", {
      showMissingModelsDialog: false, showMissingNodesDialog: false,
    });
    const find = (type) => app.graph.nodes.find((n) => n.comfyClass === type)?.id;
    return { live: find("SanaSprintLivePreview"), encode: find("SanaSprintTextEncode"), pad: find("SanaSprintScribblePad") };
  }, workflow);
}

/** Adds a scribble pad wired to a second live preview (for a workflow without a pad of its own). */
async function addScribbleBranch(page) {
  return page.evaluate(() => {
    const { app } = window.comfyAPI.app;
    const { LiteGraph } = window;
    const pad = LiteGraph.createNode("SanaSprintScribblePad");
    pad.pos = [40, 620];
    app.graph.add(pad);
    for (const name of ["width", "height"]) pad.widgets.find((w) => w.name === name).value = 256;
    pad.setSize([420, 520]);
    const live = LiteGraph.createNode("SanaSprintLivePreview");
    live.pos = [500, 620];
    app.graph.add(live);
    live.setSize([360, 420]);
    pad.connect(0, live, 0);
    app.graph.setDirtyCanvas(true, true);
    return { pad: pad.id, live: live.id };
  });
}

/** Waits until the live run in flight is executing on the server (not just queued there), so that the
 * next edit meets a running prompt, which is interrupted (a queued one would be deleted instead). */
async function untilExecuting(page) {
  const deadline = Date.now() + RUN_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const state = await page.evaluate(async () => {
      const id = window.SanaSprintLive.queue.inFlight?.id;
      if (!id) return "done"; // already finished: the check after typing reports it
      const queue = await (await fetch("/queue")).json();
      return queue.queue_running.some((item) => item[1] === id) ? "running" : "waiting";
    });
    if (state !== "waiting") return;
    await page.waitForTimeout(20);
  }
  throw new Error("the live run never started on the server");
}

async function liveToggle(page, nodeId) {
  await page.evaluate(() => window.SanaSprintLive.refresh()); // labels each switch with its node id
  return page.locator(`input.sana-live-toggle[data-node-id="${nodeId}"]`);
}

async function runs(page) {
  return page.evaluate(() => ({ ...window.SanaSprintLive.queue.stats }));
}

/** Step 4: a stale live run still waiting behind someone else's prompt is deleted from the queue. */
async function busyServer(page, ids, busyPrompt, result) {
  await page.waitForFunction(() => window.SanaSprintLive.queue.inFlight === null, null, { timeout: RUN_TIMEOUT_MS });
  const before = await runs(page);
  const shown = await shownImage(page, ids.live);
  const queueNow = () => page.evaluate(async () => (await fetch("/queue")).json());
  result.busyId = await page.evaluate(async (prompt) => {
    const res = await fetch("/prompt", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, client_id: "busy-test" }) });
    return (await res.json()).prompt_id;
  }, busyPrompt);
  const prompt = page.locator(".dom-widget textarea").first();
  await prompt.click();
  await prompt.press("End");
  await page.keyboard.type(" at night", { delay: 40 });
  await page.waitForFunction(() => window.SanaSprintLive.queue.inFlight !== null, null,
    { timeout: RUN_TIMEOUT_MS, polling: 20 });
  result.staleId = await page.evaluate(() => window.SanaSprintLive.queue.inFlight.id);
  const waiting = await queueNow();
  check(waiting.queue_pending.some((item) => item[1] === result.staleId),
    "the live run waits behind the busy prompt");
  await page.keyboard.type(" with fog", { delay: 40 });
  await page.waitForFunction((stale) => {
    const f = window.SanaSprintLive.queue.inFlight;
    return f !== null && f.id !== stale;
  }, result.staleId, { timeout: RUN_TIMEOUT_MS, polling: 20 });
  const replaced = await queueNow();
  const held = [...replaced.queue_running, ...replaced.queue_pending].map((item) => item[1]);
  check(held.includes(result.busyId), "the stale run was replaced while the busy prompt was still on the server");
  check(!held.includes(result.staleId), "the stale run left the server's queue");
  result.afterBusy = await waitForNewImage(page, ids.live, shown, "typing while the server is busy");
  const after = await runs(page);
  result.busyRuns = { submitted: after.submitted - before.submitted, interrupted: after.interrupted - before.interrupted };
  result.finalText = await page.evaluate((id) => window.comfyAPI.app.app.graph.getNodeById(id).widgets
    .find((w) => w.name === "text").value, ids.encode);
}

async function main() {
  const opt = args(["url", "workflow", "playwright", "chromium", "screenshot"]);
  // the app, our extension, and the node definitions from /object_info
  const ready = () => window.comfyAPI?.app?.app?.graph && window.SanaSprintLive
    && window.LiteGraph?.registered_node_types?.SanaSprintLivePreview;
  await withComfyPage(opt, ready, async (page, errors) => {
    const result = {};
      const ids = await loadWorkflow(page, JSON.parse(readFileSync(opt.workflow, "utf8")));
      check(ids.live !== undefined && ids.encode !== undefined, "the workflow has a live preview and a prompt");
      await page.evaluate(() => {
        const { ds } = window.comfyAPI.app.app.canvas;
        ds.scale = 0.7;
        ds.offset = [20, 20];
      });

      // 1. Live on: the graph runs without Queue being pressed.
      await (await liveToggle(page, ids.live)).check();
      result.first = await waitForNewImage(page, ids.live, "", "Live switched on");

      // 2. Type into the prompt: one new image after the typing burst, earlier runs coalesced.
      const before = await runs(page);
      const prompt = page.locator(".dom-widget textarea").first();
      await prompt.click();
      await prompt.press("End");
      await page.keyboard.type(" under northern lights", { delay: 40 });
      result.typed = await waitForNewImage(page, ids.live, result.first, "typing into the prompt");
      const after = await runs(page);
      result.runsWhileTyping = after.submitted - before.submitted;
      check(result.runsWhileTyping >= 1 && result.runsWhileTyping <= 4, `typing 22 keys queued ${result.runsWhileTyping} runs`);
      const text = await page.evaluate((id) => window.comfyAPI.app.app.graph.getNodeById(id).widgets
        .find((w) => w.name === "text").value, ids.encode);
      check(text.endsWith(" under northern lights"), "the prompt widget holds the typed text");

      // 2b. Type again while that run is on the server: the stale run is interrupted and only the
      // newest text is run to the end.
      const beforeStale = await runs(page);
      await page.keyboard.type(", snow", { delay: 40 });
      // the run of this text: a new submission (the previous run may still count as in flight until
      // its end event arrives, just after its image)
      await page.waitForFunction((n) => window.SanaSprintLive.queue.stats.submitted > n
        && window.SanaSprintLive.queue.inFlight !== null, beforeStale.submitted, { timeout: RUN_TIMEOUT_MS, polling: 20 });
      await untilExecuting(page); // on a loaded machine the run may still wait in the server's queue
      await prompt.click(); // back into the prompt (the run's previews redraw the nodes around it)
      await prompt.press("End");
      await page.keyboard.type(" and stars", { delay: 40 });
      result.afterStale = await waitForNewImage(page, ids.live, result.typed, "typing during a run");
      await page.waitForFunction(() => window.SanaSprintLive.queue.inFlight === null, null, { timeout: RUN_TIMEOUT_MS });
      const afterStale = await runs(page);
      result.interruptedRuns = afterStale.interrupted - beforeStale.interrupted;
      result.finalText = await page.evaluate((id) => window.comfyAPI.app.app.graph.getNodeById(id).widgets
        .find((w) => w.name === "text").value, ids.encode);
      check(result.interruptedRuns === 1, `typing during a run interrupted ${result.interruptedRuns} runs `
        + `(queue ${JSON.stringify(afterStale)}, prompt now ${JSON.stringify(result.finalText)})`);

      // 3. Draw a stroke on a scribble pad feeding a second live preview.
      const branch = ids.pad !== undefined ? { pad: ids.pad, live: ids.live } : await addScribbleBranch(page);
      if (ids.pad === undefined) await (await liveToggle(page, branch.live)).check();
      const canvas = page.locator("canvas.sana-scribble-canvas").first();
      await canvas.waitFor({ state: "visible", timeout: RUN_TIMEOUT_MS });
      const shownBefore = await waitForNewImage(page, branch.live, "", "the scribble branch with Live on");
      const box = await canvas.boundingBox();
      await page.mouse.move(box.x + box.width * 0.25, box.y + box.height * 0.3);
      await page.mouse.down();
      for (let i = 1; i <= 12; i++) {
        await page.mouse.move(box.x + box.width * (0.25 + 0.04 * i), box.y + box.height * (0.3 + 0.03 * i));
      }
      await page.mouse.up();
      result.drawn = await waitForNewImage(page, branch.live, shownBefore, "drawing a stroke");
      result.scribble = await page.evaluate((id) => window.comfyAPI.app.app.graph.getNodeById(id).widgets
        .find((w) => w.name === "scribble").value, branch.pad);
      const side = await page.evaluate((id) => ["width", "height"].map((name) => window.comfyAPI.app.app.graph
        .getNodeById(id).widgets.find((w) => w.name === name).value).join("x"), branch.pad);
      check(new RegExp(`^sana_sprint/scribble_${side}_[0-9a-f]{16}\\.png$`).test(result.scribble),
        `scribble value ${result.scribble} (pad ${side})`);
      if (opt["busy-prompt"]) await busyServer(page, ids, JSON.parse(readFileSync(opt["busy-prompt"], "utf8")), result);
      result.stats = await runs(page);
      result.stepPreviews = await page.evaluate(() => ({ ...window.SanaSprintLive.stepPreviews }));
      result.liveNodes = [ids.live, branch.live];
      // errors thrown by this pack's modules (the frontend has unrelated startup errors of its own)
      result.pageErrors = errors.filter((e) => e.includes("/extensions/"));
      result.latency = await page.evaluate(() => [...document.querySelectorAll(".sana-live-latency")]
        .map((e) => e.textContent));
      await page.evaluate(() => {
        const { app } = window.comfyAPI.app;
        app.canvas.deselectAll?.();
        app.graph.setDirtyCanvas(true, true);
      });
      await page.waitForTimeout(1000); // past the debounce, so the status line is settled
      await page.screenshot({ path: opt.screenshot });
      console.log(JSON.stringify(result));
  });
}

runMain(main);
