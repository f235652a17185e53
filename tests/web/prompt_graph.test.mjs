import assert from "node:assert/strict";
import { test } from "node:test";

import { downstreamNodes, isLink, promptKey, upstreamPrompt } from "../../web/lib/prompt_graph.js";

// loaders 1-3, encode 4, latent 5, sampler 6, decode 7, live preview 9, plus an unrelated SaveImage 8
// and a note-like node 10 that nothing uses.
function prompt() {
  return {
    "1": { class_type: "SanaSprintDiTLoader", inputs: { model_name: "m", weight_dtype: "auto" }, _meta: { title: "DiT" } },
    "2": { class_type: "SanaSprintTextEncoderLoader", inputs: { text_encoder_name: "g", weight_dtype: "auto" } },
    "3": { class_type: "SanaSprintVAELoader", inputs: { vae_name: "v", weight_dtype: "auto" } },
    "4": { class_type: "SanaSprintTextEncode", inputs: { text_encoder: ["2", 0], text: "a cat", complex_human_instruction: true } },
    "5": { class_type: "SanaSprintEmptyLatent", inputs: { width: 1024, height: 1024, batch_size: 1, aspect_ratio: "custom" } },
    "6": { class_type: "SanaSprintSampler", inputs: { model: ["1", 0], positive: ["4", 0], latent_image: ["5", 0], seed: 7 } },
    "7": { class_type: "SanaSprintVAEDecode", inputs: { samples: ["6", 0], vae: ["3", 0], tiled: "auto" } },
    "8": { class_type: "SaveImage", inputs: { images: ["7", 0], filename_prefix: "x" } },
    "9": { class_type: "SanaSprintLivePreview", inputs: { images: ["7", 0] } },
    "10": { class_type: "SanaSprintEmptyLatent", inputs: { width: 64, height: 64, batch_size: 1, aspect_ratio: "custom" } },
  };
}

test("links are [source id string, integer slot]", () => {
  assert.ok(isLink(["4", 0]));
  assert.ok(!isLink([4, 0]));
  assert.ok(!isLink(["4", 0.5]));
  assert.ok(!isLink(["4", 0, 1]));
  assert.ok(!isLink("4"));
  assert.ok(!isLink({ __value__: [1, 2] }));
});

test("the live preview's upstream part leaves out other outputs and unused nodes", () => {
  const part = upstreamPrompt(prompt(), ["9"]);
  assert.deepEqual(Object.keys(part).sort(), ["1", "2", "3", "4", "5", "6", "7", "9"]);
  assert.deepEqual(Object.keys(upstreamPrompt(prompt(), [9, "missing"])).length, 8);
  assert.deepEqual(upstreamPrompt(prompt(), []), {});
});

test("the key ignores node order and titles but not values or links", () => {
  const a = prompt();
  const reordered = Object.fromEntries(Object.entries(prompt()).reverse());
  reordered["1"]._meta = { title: "renamed" };
  assert.equal(promptKey(upstreamPrompt(reordered, ["9"])), promptKey(upstreamPrompt(a, ["9"])));

  const text = prompt();
  text["4"].inputs.text = "a dog";
  assert.notEqual(promptKey(upstreamPrompt(text, ["9"])), promptKey(upstreamPrompt(a, ["9"])));

  const relinked = prompt();
  relinked["6"].inputs.latent_image = ["10", 0];
  assert.notEqual(promptKey(upstreamPrompt(relinked, ["9"])), promptKey(upstreamPrompt(a, ["9"])));

  const unrelated = prompt();
  unrelated["8"].inputs.filename_prefix = "y"; // SaveImage is not upstream of the live preview
  assert.equal(promptKey(upstreamPrompt(unrelated, ["9"])), promptKey(upstreamPrompt(a, ["9"])));
});

test("downstream nodes follow UI links from a node", () => {
  // [link id, from, from slot, to, to slot, type]
  const links = [[1, 2, 0, 4, 0, "T"], [2, 4, 0, 6, 1, "C"], [3, 6, 0, 7, 0, "L"], [4, 7, 0, 9, 0, "I"],
    [5, 7, 0, 8, 0, "I"], [6, 5, 0, 6, 2, "L"], null];
  assert.deepEqual([...downstreamNodes(links, 6)].sort(), ["6", "7", "8", "9"]);
  assert.deepEqual([...downstreamNodes(links, "9")], ["9"]);
  assert.ok(!downstreamNodes(links, 6).has("5"));
});
