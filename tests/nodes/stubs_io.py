"""Stand-ins for the ComfyUI pieces the live preview and scribble pad nodes use (see stubs.py).

`ui.PreviewImage` records the images instead of writing PNGs to the temp folder,
`PromptServer.instance.send_progress_text` records the texts, `comfy_execution.utils` holds the
executing (prompt id, node id) context, and folder_paths gains its input/temp/output folders with
ComfyUI's annotated names ("name.png [temp]"). Signatures follow ComfyUI 0.3.64.
"""

from __future__ import annotations

import contextvars
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def preview_image_class(state) -> type:
    """ui.PreviewImage(image, animated=False, cls=None, **kwargs); images go to state.previews."""

    class PreviewImage:
        def __init__(self, image, animated=False, cls=None, **kwargs):
            state.previews.append(image)
            self.values = [{"filename": f"ComfyUI_temp_stub_{len(state.previews):05}_.png", "subfolder": "",
                            "type": "temp"}]
            self.animated = animated

        def as_dict(self):
            return {"images": self.values, "animated": (self.animated,)}

    return PreviewImage


class PromptServerStub:
    """PromptServer.instance: send_progress_text(text, node_id, sid=None) appends to state.texts."""

    def __init__(self, state):
        self.state = state

    def send_progress_text(self, text, node_id, sid=None):
        self.state.texts.append((text, node_id))


@dataclass(frozen=True)
class ExecutionContext:
    prompt_id: str
    node_id: str
    list_index: Any = None


def execution_utils() -> types.ModuleType:
    """comfy_execution.utils with its context variable and get_executing_context()."""
    utils = types.ModuleType("comfy_execution.utils")
    var = contextvars.ContextVar("current_executing_context", default=None)
    utils.ExecutionContext, utils.current_executing_context = ExecutionContext, var
    utils.get_executing_context = lambda: var.get(None)
    return utils


def add_io_folders(fp: types.ModuleType, root: Path) -> None:
    """input/, temp/, output/ folders under `root` and get/exists_annotated_filepath."""
    dirs = {kind: root / kind for kind in ("input", "temp", "output")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    fp.get_input_directory = lambda: str(dirs["input"])
    fp.get_temp_directory = lambda: str(dirs["temp"])
    fp.get_output_directory = lambda: str(dirs["output"])

    def get_annotated_filepath(name, default_dir=None):
        for kind, folder in dirs.items():
            if name.endswith(f" [{kind}]"):
                return str(folder / name[: -len(kind) - 3])
        return str(Path(default_dir or dirs["input"]) / name)

    fp.get_annotated_filepath = get_annotated_filepath
    fp.exists_annotated_filepath = lambda name: Path(get_annotated_filepath(name)).exists()
