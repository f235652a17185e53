// Graph helpers for live mode, on plain data: the API-format prompt that app.graphToPrompt() makes
// ({id: {class_type, inputs, _meta}}, links as [source id, output slot]) and the UI-format link
// list ([link id, from node, from slot, to node, to slot, type]). No DOM, no ComfyUI imports.

/** Whether an API input value is a link [source node id, output slot]. */
export function isLink(value) {
  return Array.isArray(value) && value.length === 2 && typeof value[0] === "string" && Number.isInteger(value[1]);
}

/** The part of `prompt` that the nodes `targets` depend on (the targets and everything upstream). */
export function upstreamPrompt(prompt, targets) {
  const keep = {};
  const stack = targets.map(String).filter((id) => id in prompt);
  while (stack.length) {
    const id = stack.pop();
    if (id in keep) continue;
    keep[id] = prompt[id];
    for (const value of Object.values(prompt[id].inputs ?? {})) {
      if (isLink(value) && value[0] in prompt && !(value[0] in keep)) stack.push(value[0]);
    }
  }
  return keep;
}

function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = canonical(value[key]);
    return out;
  }
  return value;
}

/**
 * A string that equals for two prompts exactly when running them computes the same thing: node
 * order does not matter and titles (`_meta`) are left out.
 */
export function promptKey(prompt) {
  const nodes = {};
  for (const id of Object.keys(prompt)) {
    nodes[id] = { class_type: prompt[id].class_type, inputs: prompt[id].inputs ?? {} };
  }
  return JSON.stringify(canonical(nodes));
}

/** Ids (strings) of the nodes reachable downstream of `sourceId` through `links`, itself included. */
export function downstreamNodes(links, sourceId) {
  const next = new Map();
  for (const link of links ?? []) {
    if (!link) continue;
    const [, from, , to] = link;
    if (!next.has(String(from))) next.set(String(from), []);
    next.get(String(from)).push(String(to));
  }
  const seen = new Set();
  const stack = [String(sourceId)];
  while (stack.length) {
    const id = stack.pop();
    if (seen.has(id)) continue;
    seen.add(id);
    for (const to of next.get(id) ?? []) stack.push(to);
  }
  return seen;
}
