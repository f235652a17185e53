// Headless Chromium on a ComfyUI page, for the browser tests (browser_live.mjs, browser_workflows.mjs).

import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const HEADLESS_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
export const RUN_TIMEOUT_MS = 120000;
// The window a user is assumed to have (issue 13): every workflow must fit it at a readable zoom.
export const VIEWPORT = { width: 1600, height: 1000 };

/** `--key value` pairs of the command line; `required` keys must be present. */
export function args(required) {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  for (const key of required) {
    if (!out[key]) throw new Error(`missing --${key}`);
  }
  return out;
}

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

/** Opens ComfyUI at `url` in a fresh profile; calls `body(page, errors)` and closes everything after. */
export async function withComfyPage(opt, ready, body) {
  const require = createRequire(join(resolve(opt.playwright), "noop.js"));
  const { chromium } = require("playwright-core");
  const profile = mkdtempSync(join(tmpdir(), "sana-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: opt.chromium, headless: true, args: HEADLESS_FLAGS, viewport: VIEWPORT,
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.stack ?? String(e)));
    await page.goto(opt.url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(ready, null, { timeout: RUN_TIMEOUT_MS });
    return await body(page, errors);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

export function runMain(main) {
  main().catch((err) => {
    console.error(err?.stack ?? String(err));
    process.exit(1);
  });
}
