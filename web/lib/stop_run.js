// How live mode cancels its stale run on a ComfyUI server. ComfyUI's /interrupt stops only the
// prompt that is executing; a prompt still waiting behind another job (a long queue of someone
// else's renders) would run to the end later. So a waiting prompt is deleted from the queue, and
// the caller learns that it will report no end (RUN_REMOVED); a running one is interrupted.
// `api` is the frontend's ComfyApi or a stand-in: getQueue() -> {Running, Pending} lists of
// {prompt: [number, prompt_id, ...]}, deleteItem("queue", id), interrupt(id).

import { RUN_REMOVED } from "./live_queue.js";

const holds = (items, promptId) => (items ?? []).some((item) => item.prompt?.[1] === promptId);

/** Cancels prompt `promptId`; RUN_REMOVED when it was taken out of the queue unstarted, else "interrupted". */
export async function stopRun(api, promptId) {
  if (holds((await api.getQueue()).Pending, promptId)) {
    await api.deleteItem("queue", promptId);
    const after = await api.getQueue();
    if (!holds(after.Pending, promptId) && !holds(after.Running, promptId)) return RUN_REMOVED;
  }
  await api.interrupt(promptId); // running, or it started while we looked
  return "interrupted";
}
