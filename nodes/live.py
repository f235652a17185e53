"""Real-time nodes: the live preview (newest image + stage latencies) and the scribble pad (canvas -> IMAGE).

Both pair with the pack's frontend extension (web/): it adds the "Live" toggle to the preview node,
which re-queues the graph on every change, shows the sampler's per-step previews in the node, and
gives the pad its drawing canvas, which uploads the strokes as a PNG and stores the file name in
the `scribble` input.
"""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io, ui

import comfy.model_management as mm
import folder_paths

from ..sana_sprint_core.constants import (
    LATENT_DOWNSCALE, SCRIBBLE_PAD_DEFAULT_SIZE, SCRIBBLE_PAD_MAX_SIZE, SCRIBBLE_PAD_MIN_SIZE,
)
from ..sana_sprint_core.latency import format_latency
from ..sana_sprint_core.scribble_pad import empty_scribble, file_digest, read_scribble, scribble_outputs
from . import timing

CATEGORY = "SanaSprint/live"
# Extra keys of the nodes' UI payload (beside ComfyUI's "images"), read by web/sana_sprint_*.js.
LATENCY_KEY = "sana_latency"  # [one line of text]
TIMING_KEY = "sana_timing"  # [{"text_encode": s | None, "sampling": ..., "decode": ..., "total": s}]
BACKGROUND_KEY = "sana_background"  # [{"filename", "subfolder", "type"}] of the pad's background picture
ScribbleType = io.Custom("SANA_SCRIBBLE")


class SanaSprintLivePreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintLivePreview",
            display_name="SANA-Sprint Live Preview",
            category=CATEGORY,
            description="Shows the newest image in the node (and the sampler's per-step previews while it "
                        "runs) with the measured latency of text encode, sampling and decode. Its 'Live' "
                        "toggle re-queues the graph on every change, cancelling a stale run.",
            inputs=[io.Image.Input("images", tooltip="Images to show, e.g. from SanaSprintVAEDecode.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images) -> io.NodeOutput:
        payload = ui.PreviewImage(images, cls=cls).as_dict()
        summary = timing.current_summary()
        if summary is not None:  # shown above the image by web/sana_sprint_live.js, kept in /history
            payload[LATENCY_KEY], payload[TIMING_KEY] = [format_latency(summary)], [summary]
        return io.NodeOutput(ui=payload)


def scribble_path(name: str) -> Path:
    """The file behind a `scribble` value ("sub/x.png", or with ComfyUI's " [temp]" annotation).

    ValueError when the name leads outside ComfyUI's input, temp and output folders.
    """
    path = Path(folder_paths.get_annotated_filepath(name)).resolve()
    roots = [Path(d).resolve() for d in (folder_paths.get_input_directory(), folder_paths.get_temp_directory(),
                                         folder_paths.get_output_directory())]
    if not any(path.is_relative_to(root) for root in roots):
        raise ValueError(f"scribble file {name!r} points outside ComfyUI's input, temp and output folders")
    return path


def _side(name: str) -> io.Int.Input:
    return io.Int.Input(name, default=SCRIBBLE_PAD_DEFAULT_SIZE, min=SCRIBBLE_PAD_MIN_SIZE,
                        max=SCRIBBLE_PAD_MAX_SIZE, step=LATENT_DOWNSCALE,
                        tooltip=f"Canvas {name} in pixels (a multiple of {LATENT_DOWNSCALE}); the output has "
                                "this size.")


class SanaSprintScribblePad(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaSprintScribblePad",
            display_name="SANA-Sprint Scribble Pad",
            category=CATEGORY,
            description="A drawing canvas (brush size, eraser, undo, clear) whose strokes become an IMAGE: "
                        "white strokes on black, the scribble a HED ControlNet expects. Draw with 'Live' on "
                        "in a SANA-Sprint Live Preview node to see each stroke's image.",
            inputs=[
                ScribbleType.Input("scribble", extra_dict={"default": ""},
                                   tooltip="The canvas: its strokes are uploaded as a PNG into ComfyUI's input "
                                           "folder and this holds the file name ('' = empty canvas)."),
                _side("width"),
                _side("height"),
                io.Image.Input("image", optional=True,
                               tooltip="Optional picture shown under the canvas to trace over (after a run); "
                                       "it is not part of the output."),
            ],
            outputs=[
                io.Image.Output(tooltip="The scribble (1, height, width, 3) in [0, 1]: white strokes on black."),
                io.Mask.Output(tooltip="Stroke coverage (1, height, width) in [0, 1] (1 where drawn)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, scribble):
        if not scribble:  # empty canvas, or linked (ComfyUI passes None for links)
            return True
        path = scribble_path(scribble)
        if not path.is_file():
            return (f"scribble file {scribble!r} not found ({path}); draw on the pad again so the canvas "
                    f"uploads it, or put the PNG into ComfyUI's input folder")
        return True

    @classmethod
    def fingerprint_inputs(cls, scribble, **kwargs):
        """The file's SHA-256, so a rewritten file under the same name re-runs the pad."""
        if not scribble:
            return ""
        path = scribble_path(scribble)
        return file_digest(path) if path.is_file() else f"missing:{scribble}"

    @classmethod
    def execute(cls, scribble, width, height, image=None) -> io.NodeOutput:
        grey = read_scribble(scribble_path(scribble), width, height) if scribble else empty_scribble(width, height)
        pixels, mask = scribble_outputs(grey)
        out = mm.intermediate_device()
        payload = None
        if image is not None:
            payload = {BACKGROUND_KEY: ui.PreviewImage(image[:1], cls=cls).as_dict()["images"]}
        return io.NodeOutput(pixels.to(out), mask.to(out), ui=payload)
