"""Minimal stand-ins for the ComfyUI modules the nodes import, for CI without a ComfyUI checkout.

As in ComfyUI's own unit tests (tests-unit/), modules are replaced in `sys.modules`; here every one
the pack touches, because CI has no checkout. Signatures follow ComfyUI 0.3.64 (comfy_api_notes.md):
e.g. `Int.Input` has no `extra_dict`, `Combo.Input(id, options, ...)`, `ModelPatcher(model,
load_device, offload_device, size=0, weight_inplace_update=False)`. Behaviour is reduced to what
the nodes rely on; the real integration is proven by tests/e2e against a real ComfyUI.
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.nodes import stubs_io, stubs_training

# --------------------------------------------------------------------------------------------------
# comfy_api.latest (io, ui, ComfyExtension)


class _Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}


class _WidgetInput(_Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input


class _Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _io_type(io_type: str, widget_input: type | None = None) -> type:
    """A ComfyType class with nested Input/Output whose `io_type` is set."""
    base_in = widget_input or _Input
    cls = type(io_type, (), {"io_type": io_type})
    cls.Input = type("Input", (base_in,), {"io_type": io_type, "is_widget": widget_input is not None})
    cls.Output = type("Output", (_Output,), {"io_type": io_type})
    return cls


class _IntInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate


class _FloatInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round


class _StringInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts


class _BooleanInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 label_on=None, label_off=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)


class _ComboInput(_WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options, self.control_after_generate = options, control_after_generate


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        for group in (self.inputs or [], self.outputs or []):
            ids = [i.id for i in group if i.id is not None]
            if len(ids) != len(set(ids)):
                raise ValueError(f"{self.node_id}: duplicate ids {ids}")


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class Hidden(str, enum.Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class ComfyNode:
    hidden = None  # ComfyUI sets a HiddenHolder on the per-run clone; None on the class itself

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError


class ComfyExtension:
    async def on_load(self) -> None:
        return None

    async def get_node_list(self) -> list:
        raise NotImplementedError


def Custom(io_type: str) -> type:
    return _io_type(io_type)


def _make_io() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    io.Schema, io.NodeOutput, io.ComfyNode, io.Custom = Schema, NodeOutput, ComfyNode, Custom
    io.Hidden = Hidden
    io.Int, io.Float = _io_type("INT", _IntInput), _io_type("FLOAT", _FloatInput)
    io.String, io.Boolean = _io_type("STRING", _StringInput), _io_type("BOOLEAN", _BooleanInput)
    io.Combo = _io_type("COMBO", _ComboInput)
    for name, kind in (("Model", "MODEL"), ("Latent", "LATENT"), ("Conditioning", "CONDITIONING"),
                       ("Image", "IMAGE"), ("Mask", "MASK"), ("Sampler", "SAMPLER"), ("Sigmas", "SIGMAS"),
                       ("Noise", "NOISE"), ("Guider", "GUIDER"), ("Vae", "VAE"), ("Clip", "CLIP")):
        setattr(io, name, _io_type(kind))
    return io


# --------------------------------------------------------------------------------------------------
# comfy.model_management, comfy.utils, comfy.ops


class InterruptProcessingException(Exception):
    pass


@dataclass
class ManagementState:
    """What the fake model management was asked (inspected by tests)."""

    loads: list = field(default_factory=list)  # (patcher, memory_required)
    interrupt: bool = False
    progress: list = field(default_factory=list)  # (value, total, preview)
    on_progress: Any = None  # called with (value, total) after each update, like the server's hook
    previews: list = field(default_factory=list)  # image tensors given to ui.PreviewImage
    texts: list = field(default_factory=list)  # (text, node_id) sent with PromptServer.send_progress_text


STATE = ManagementState()
CPU = torch.device("cpu")


def _make_model_management() -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    for name in ("get_torch_device", "unet_offload_device", "text_encoder_device", "text_encoder_offload_device",
                 "vae_device", "vae_offload_device", "intermediate_device"):
        setattr(mm, name, lambda: CPU)
    mm.InterruptProcessingException = InterruptProcessingException

    def unet_dtype(device=None, model_params=0, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32],
                   weight_dtype=None):
        return torch.float32

    def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=[torch.float16, torch.bfloat16,
                                                                          torch.float32]):
        # ComfyUI's answer on the CPU (no fp16, no bf16): fp32 computes as stored, anything else in fp32
        return None if weight_dtype in (torch.float32, torch.float64) else torch.float32

    def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
        return False

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        for patcher in models:
            STATE.loads.append((patcher, memory_required))
            patcher.model.to(patcher.load_device)
            patcher.model.device = patcher.load_device  # as ModelPatcher.patch_model does

    def interrupt_current_processing(value=True):
        STATE.interrupt = value

    def processing_interrupted():
        return STATE.interrupt

    def throw_exception_if_processing_interrupted():
        if STATE.interrupt:
            STATE.interrupt = False
            raise InterruptProcessingException()

    for fn in (unet_dtype, unet_manual_cast, should_use_bf16, load_models_gpu, interrupt_current_processing,
               processing_interrupted, throw_exception_if_processing_interrupted):
        setattr(mm, fn.__name__, fn)
    return mm


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current, self.node_id = total, 0, node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        STATE.progress.append((self.current, self.total, preview))
        if STATE.on_progress is not None:
            STATE.on_progress(self.current, self.total)

    def update(self, value):
        self.update_absolute(self.current + value)


def _make_ops() -> types.ModuleType:
    ops = types.ModuleType("comfy.ops")

    class disable_weight_init:  # noqa: N801  (ComfyUI's name)
        class Linear(torch.nn.Linear):
            comfy_cast_weights = False

        class Conv2d(torch.nn.Conv2d):
            comfy_cast_weights = False

    class manual_cast(disable_weight_init):  # noqa: N801  (weights cast to the input's dtype at use, as ComfyUI's)
        class Linear(torch.nn.Linear):
            comfy_cast_weights = True

            def forward(self, x):
                bias = None if self.bias is None else self.bias.to(x.dtype)
                return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)

        class Conv2d(torch.nn.Conv2d):
            comfy_cast_weights = True

            def forward(self, x):
                bias = None if self.bias is None else self.bias.to(x.dtype)
                return self._conv_forward(x, self.weight.to(x.dtype), bias)

    def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False,
                        fp8_optimizations=False, scaled_fp8=None):
        return disable_weight_init if compute_dtype is None or weight_dtype == compute_dtype else manual_cast

    ops.disable_weight_init, ops.manual_cast, ops.pick_operations = disable_weight_init, manual_cast, pick_operations
    return ops


# --------------------------------------------------------------------------------------------------
# comfy.model_base, comfy.supported_models_base, comfy.latent_formats, comfy.conds, model_patcher


class LatentFormat:
    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors = None
    latent_rgb_factors_bias = None
    taesd_decoder_name = None

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor


class CONDRegular:
    def __init__(self, cond):
        self.cond = cond


class CONDConstant(CONDRegular):
    """One object for the whole batch (ComfyUI passes `.cond` through unbatched)."""


class ModelType(enum.Enum):
    EPS = 1
    V_PREDICTION = 2
    FLOW = 8


class FlowConstSampling:
    """ModelSamplingDiscreteFlow + CONST of ComfyUI (model_sampling.py), reduced to shift/multiplier."""

    def __init__(self, settings: dict):
        self.shift = settings.get("shift", 1.0)
        self.multiplier = settings.get("multiplier", 1000)

    def timestep(self, sigma):
        return sigma * self.multiplier

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image


class BASE:
    unet_config = {}
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}
    sampling_settings = {}
    latent_format = LatentFormat
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    memory_usage_factor = 2.0
    manual_cast_dtype = None
    custom_operations = None
    scaled_fp8 = None
    optimizations = {"fp8": False}

    def __init__(self, unet_config):
        self.unet_config = unet_config.copy()  # the ARGUMENT, as in ComfyUI
        self.sampling_settings = self.sampling_settings.copy()
        self.latent_format = self.latent_format()
        self.optimizations = self.optimizations.copy()
        for k, v in self.unet_extra_config.items():
            self.unet_config[k] = v

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, model_type=ModelType.EPS, device=None, unet_model=None):
        super().__init__()
        if not model_config.unet_config.get("disable_unet_model_creation", False):
            raise TypeError("the stub cannot build a UNetModel; set disable_unet_model_creation")
        if model_type != ModelType.FLOW:
            raise NotImplementedError("the stub models FLOW only")
        self.latent_format = model_config.latent_format
        self.model_config = model_config
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        self.model_type = model_type
        self.model_sampling = FlowConstSampling(model_config.sampling_settings)

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return self._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        raise NotImplementedError

    def get_dtype(self):
        return self.diffusion_model.dtype

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

    def extra_conds(self, **kwargs):
        return {}


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        if not hasattr(self.model, "device"):
            self.model.device = offload_device
        elif self.model.device is None:
            self.model.device = offload_device
        self.load_device, self.offload_device, self.size = load_device, offload_device, size
        self.model_options = {"transformer_options": {}}
        self.object_patches = {}

    def clone(self):
        n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size)
        n.model_options = {k: (v.copy() if isinstance(v, dict) else v) for k, v in self.model_options.items()}
        n.object_patches = self.object_patches.copy()
        return n

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        return getattr(self.model, name)


class KSAMPLER:
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):
        self.sampler_function, self.extra_options, self.inpaint_options = sampler_function, extra_options, inpaint_options


# --------------------------------------------------------------------------------------------------
# folder_paths


def _make_folder_paths(models_dir: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    names = ("checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "vae_approx", "controlnet")
    fp.folder_names_and_paths = {n: ([str(models_dir / n)], fp.supported_pt_extensions) for n in names}
    fp.folder_names_and_paths["custom_nodes"] = ([str(models_dir.parent / f"{models_dir.name}_custom_nodes")], set())

    def get_folder_paths(folder_name):
        return fp.folder_names_and_paths[folder_name][0][:]  # KeyError for unknown names, as ComfyUI

    def get_filename_list(folder_name):
        roots, exts = fp.folder_names_and_paths[folder_name]
        found = set()
        for root in roots:
            base = Path(root)
            if base.is_dir():
                found |= {p.relative_to(base).as_posix() for p in base.rglob("*")
                          if p.is_file() and (not exts or p.suffix.lower() in exts)}
        return sorted(found)

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        """New names get an empty extension set (every file listed); a known path moves first only if default."""
        paths = fp.folder_names_and_paths.setdefault(folder_name, ([], set()))[0]
        if full_folder_path in paths:
            if is_default:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        else:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    fp.get_folder_paths, fp.get_filename_list, fp.add_model_folder_path = (
        get_folder_paths, get_filename_list, add_model_folder_path)
    stubs_io.add_io_folders(fp, models_dir.parent / f"{models_dir.name}_io")
    return fp


# --------------------------------------------------------------------------------------------------


def build_modules(models_dir: Path) -> dict[str, types.ModuleType]:
    """Every stub module by its import name; install with patch.dict(sys.modules, ...)."""
    mods = {name: types.ModuleType(name) for name in (
        "comfy_api", "comfy_api.latest", "comfy", "comfy.utils", "comfy.conds", "comfy.latent_formats",
        "comfy.model_base", "comfy.supported_models_base", "comfy.model_patcher", "comfy.samplers", "server",
        "comfy_execution")}
    io = _make_io()
    latest = mods["comfy_api.latest"]
    latest.io, latest.ui, latest.ComfyExtension = io, types.ModuleType("comfy_api.latest.ui"), ComfyExtension
    latest.ui.PreviewImage = stubs_io.preview_image_class(STATE)
    mods["comfy_api"].latest = latest
    mods["comfy.model_management"] = _make_model_management()
    mods["comfy.ops"] = _make_ops()
    mods["comfy.utils"].ProgressBar = ProgressBar
    mods["comfy.conds"].CONDRegular, mods["comfy.conds"].CONDConstant = CONDRegular, CONDConstant
    mods["comfy.latent_formats"].LatentFormat = LatentFormat
    mods["comfy.model_base"].BaseModel, mods["comfy.model_base"].ModelType = BaseModel, ModelType
    mods["comfy.supported_models_base"].BASE = BASE
    mods["comfy.model_patcher"].ModelPatcher = ModelPatcher
    mods["comfy.samplers"].KSAMPLER = KSAMPLER
    mods["server"].PromptServer = type("PromptServer", (), {"instance": stubs_io.PromptServerStub(STATE)})
    mods["comfy_execution.utils"] = stubs_io.execution_utils()
    mods["comfy_execution"].utils = mods["comfy_execution.utils"]
    for name, module in mods.items():
        if name.startswith("comfy."):
            setattr(mods["comfy"], name.split(".", 1)[1], module)
    mods["folder_paths"] = _make_folder_paths(models_dir)
    stubs_training.install(mods, _io_type)  # comfy.lora, patches, LOSS_MAP (training nodes)
    return mods


def reset_state() -> None:
    STATE.loads.clear()
    STATE.progress.clear()
    STATE.interrupt = False
    STATE.on_progress = None
    STATE.previews.clear()
    STATE.texts.clear()
    stubs_training.reset()


__all__ = ["build_modules", "reset_state", "STATE", "InterruptProcessingException"]
