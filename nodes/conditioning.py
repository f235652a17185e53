"""Text encode node: prompt -> standard CONDITIONING [[embeds (1, 300, 2304), {"attention_mask": (1, 300)}]]."""

from __future__ import annotations

from comfy_api.latest import io

import comfy.model_management as mm

from ..sana_sprint_core.constants import PROMPT_CACHE_ENTRIES
from ..sana_sprint_core.text_cache import PromptCache
from ..sana_sprint_core.text_encoder import encode_prompt
from .comfy_model import MASK_KEY
from .loaders import TextEncoderType
from .timing import timed

# Shared by every SanaSprintTextEncode node of the process: a prompt seen before (by any node, with
# the same encoder file, dtype, device and options) costs no Gemma forward.
PROMPT_CACHE = PromptCache(PROMPT_CACHE_ENTRIES)


class SanaSprintTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintTextEncode",
            display_name="SANA-Sprint Text Encode",
            category="SanaSprint/conditioning",
            description="Encodes a prompt with Gemma-2 the way SANA-Sprint was trained (complex human "
                        "instruction prefix, 300 tokens, last hidden state) into a CONDITIONING that holds "
                        "the embeddings and their attention mask. Repeated prompts come from a cache.",
            inputs=[
                TextEncoderType.Input("text_encoder", tooltip="Gemma-2 from SanaSprintTextEncoderLoader."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="",
                                tooltip="The prompt. Longer than 300 tokens is cut (a warning is logged)."),
                io.Boolean.Input("complex_human_instruction", default=True,
                                 tooltip="Prepend SANA's complex human instruction (CHI) as in training. "
                                         "Leave on unless you know the model was trained without it."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Text embeddings with 'attention_mask' in the dict.")],
        )

    @classmethod
    def execute(cls, text_encoder, text, complex_human_instruction) -> io.NodeOutput:
        with timed("text_encode"):
            encoder = text_encoder.load()
            embeds, mask = encode_prompt(encoder, text, chi=complex_human_instruction, cache=PROMPT_CACHE)
            out = mm.intermediate_device()
            embeds, mask = embeds.to(out), mask.to(out)
        return io.NodeOutput([[embeds, {MASK_KEY: mask}]])
