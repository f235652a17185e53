// Every shipped UI workflow in ComfyUI's real frontend, driven by tests/e2e/test_browser_workflows.py.
//
//   node tests/e2e/browser_workflows.mjs --url http://127.0.0.1:PORT --plan plan.json --out DIR \
//        --playwright /path/with/node_modules --chromium /usr/bin/chromium
//
// plan.json: {"workflows": [{"name", "title", "file", "run": bool, "widgets": {node id: {widget: value}}}],
//             "templates": {"module": pack folder, "names": [...]}}
// For each workflow: load it as the template browser does (app.loadGraphData), take
// app.graphToPrompt() (what Queue would send), the node boxes as drawn (title bar included) and the
// zoom at which the whole graph fits the window; screenshot the fitted graph as its thumbnail
// (DIR/<name>.jpg); with "run", set the given widgets (CI-sized values), press Queue, wait for the
// prompt to finish and take the boxes again (previews and images have been added to the nodes by
// then). Then opens Workflow -> Browse Templates, selects the pack and reads every card (title,
// description, whether its thumbnail loaded) and screenshots the dialog (DIR/templates.png).
// Prints one JSON line with what it saw; the Python test makes the checks.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { RUN_TIMEOUT_MS, VIEWPORT, args, runMain, withComfyPage } from "./browser_page.mjs";

const THUMBNAIL = { width: 864, height: 678 }; // the canvas then is 800 x 600: 4:3 like the cards (256 x 192)
const FIT_MARGIN = 40; // screen pixels kept free around the fitted graph

/** Node boxes in graph units, title bar included, plus the fit of the whole graph into `viewport`. */
async function layout(page, viewport) {
  return page.evaluate(([vw, vh, margin]) => {
    const { app } = window.comfyAPI.app;
    const title = window.LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = app.graph.nodes.map((n) => ({
      id: n.id, type: n.type, x: n.pos[0], y: n.pos[1] - title, w: n.size[0], h: n.size[1] + title,
    }));
    const left = Math.min(...boxes.map((b) => b.x));
    const top = Math.min(...boxes.map((b) => b.y));
    const right = Math.max(...boxes.map((b) => b.x + b.w));
    const bottom = Math.max(...boxes.map((b) => b.y + b.h));
    const canvas = app.canvas.canvas.getBoundingClientRect();
    const scale = Math.min((canvas.width - 2 * margin) / (right - left), (canvas.height - 2 * margin) / (bottom - top));
    return { boxes, extent: [left, top, right, bottom], fitScale: scale, canvas: [canvas.width, canvas.height],
      viewport: [vw, vh], lowQualityScale: app.canvas._lowQualityZoomThreshold,
      drawn: app.graph.nodes.map((n) => ({ id: n.id, min: n.computeSize() })) };
  }, [viewport.width, viewport.height, FIT_MARGIN]);
}

/** Zooms and pans the canvas so that the whole graph is centred at `scale`, and redraws. */
async function showAll(page, seen) {
  await page.evaluate(([extent, scale, canvasSize]) => {
    const { app } = window.comfyAPI.app;
    const [left, top, right, bottom] = extent;
    const { ds } = app.canvas;
    ds.scale = scale;
    ds.offset = [canvasSize[0] / (2 * scale) - (left + right) / 2, canvasSize[1] / (2 * scale) - (top + bottom) / 2];
    app.canvas.deselectAll?.();
    app.graph.setDirtyCanvas(true, true);
  }, [seen.extent, seen.fitScale, seen.canvas]);
  await page.waitForTimeout(300);
}

async function load(page, name, graph) {
  await page.evaluate(async ([title, g]) => {
    const { app } = window.comfyAPI.app;
    await app.loadGraphData(g, true, true, title, { showMissingModelsDialog: false, showMissingNodesDialog: false });
  }, [name, graph]);
  await page.waitForTimeout(300); // DOM widgets and sizes settle on the next frames
}

/** Sets widget values by node id and widget name (the CI-sized values of a training run). */
async function setWidgets(page, widgets) {
  await page.evaluate((values) => {
    const { app } = window.comfyAPI.app;
    for (const [id, byName] of Object.entries(values)) {
      const node = app.graph.getNodeById(Number(id));
      for (const [name, value] of Object.entries(byName)) {
        const widget = node.widgets.find((w) => w.name === name);
        if (!widget) throw new Error(`node ${id} has no widget ${name}`);
        widget.value = value;
      }
    }
  }, widgets);
}

/** Presses Queue (app.queuePrompt, what the Run button calls) and waits until the prompt has finished. */
async function queueAndWait(page) {
  const history = () => page.evaluate(async () => (await fetch("/history")).json());
  const known = new Set(Object.keys(await history()));
  await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1));
  const deadline = Date.now() + 5 * RUN_TIMEOUT_MS;
  let outcome = null;
  while (outcome === null) {
    if (Date.now() > deadline) throw new Error("the queued workflow did not finish in time");
    await page.waitForTimeout(500);
    const fresh = Object.entries(await history()).filter(([id]) => !known.has(id));
    const done = fresh.find(([, h]) => h.status?.completed || h.status?.status_str === "error");
    if (done) outcome = { id: done[0], status: done[1].status.status_str, messages: done[1].status.messages };
  }
  await page.waitForTimeout(1500); // the frontend adds image previews to the nodes while it draws them
  await page.evaluate(() => window.comfyAPI.app.app.graph.setDirtyCanvas(true, true));
  await page.waitForTimeout(500);
  return outcome;
}

async function templateCards(page, templates, screenshot) {
  await page.evaluate(() => window.comfyAPI.app.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const nav = page.getByText(templates.module, { exact: true }).first();
  await nav.waitFor({ state: "visible", timeout: RUN_TIMEOUT_MS });
  await nav.click();
  const first = page.locator(`[data-testid="template-workflow-${templates.names[0]}"]`);
  await first.waitFor({ state: "visible", timeout: RUN_TIMEOUT_MS });
  const cards = [];
  for (const name of templates.names) { // thumbnails load lazily, once a card is scrolled into view
    const card = page.locator(`[data-testid="template-workflow-${name}"]`);
    if ((await card.count()) === 0) {
      cards.push({ name, found: false });
      continue;
    }
    await card.scrollIntoViewIfNeeded();
    await page.waitForFunction((n) => {
      const img = document.querySelector(`[data-testid="template-workflow-${CSS.escape(n)}"] img`);
      return img && img.complete && img.naturalWidth > 0;
    }, name, { timeout: RUN_TIMEOUT_MS }).catch(() => {});
    cards.push(await card.evaluate((el, n) => {
      const img = el.querySelector("img");
      return { name: n, found: true, title: el.querySelector("h3")?.textContent.trim(),
        description: el.querySelector("p")?.textContent.trim(),
        image: img ? { width: img.naturalWidth, height: img.naturalHeight } : null };
    }, name));
  }
  await first.scrollIntoViewIfNeeded();
  await page.waitForTimeout(500);
  await page.screenshot({ path: screenshot });
  await page.keyboard.press("Escape");
  return cards;
}

async function main() {
  const opt = args(["url", "plan", "out", "playwright", "chromium"]);
  const plan = JSON.parse(readFileSync(opt.plan, "utf8"));
  const ready = () => window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types?.SanaSprintSampler;
  const result = await withComfyPage(opt, ready, async (page, errors) => {
    const seen = { workflows: {} };
    for (const workflow of plan.workflows) {
      const graph = JSON.parse(readFileSync(workflow.file, "utf8"));
      await load(page, workflow.title, graph);
      const entry = { prompt: (await page.evaluate(() => window.comfyAPI.app.app.graphToPrompt())).output };
      entry.loaded = await layout(page, { width: page.viewportSize().width, height: page.viewportSize().height });
      await page.setViewportSize(THUMBNAIL);
      await page.waitForTimeout(300);
      const small = await layout(page, THUMBNAIL);
      await showAll(page, small);
      // the canvas alone (no menus or side bars over it): what the card shows, at 4:3
      const jpeg = await page.evaluate(() => window.comfyAPI.app.app.canvas.canvas.toDataURL("image/jpeg", 0.85));
      writeFileSync(join(opt.out, `${workflow.name}.jpg`), Buffer.from(jpeg.split(",")[1], "base64"));
      await page.setViewportSize(VIEWPORT);
      await page.waitForTimeout(300);
      if (workflow.run) {
        await setWidgets(page, workflow.widgets ?? {});
        entry.run = await queueAndWait(page);
        entry.afterRun = await layout(page, VIEWPORT);
        await showAll(page, entry.afterRun);
        await page.screenshot({ path: join(opt.out, `${workflow.name}_after_run.png`) });
      }
      seen.workflows[workflow.name] = entry;
    }
    seen.cards = await templateCards(page, plan.templates, join(opt.out, "templates.png"));
    seen.pageErrors = errors.filter((e) => e.includes("/extensions/"));
    return seen;
  });
  console.log(JSON.stringify(result));
}

runMain(main);
