"""Numbers of SANA-Sprint, defined once, each with where it comes from.

Import these instead of writing the literals anywhere else.
"""

import math

# --- TrigFlow / sCM -----------------------------------------------------------------------------
# sigma_d of sCM (Lu & Song 2024) and of every SANA-Sprint config (`sigma_data: 0.5`).
SIGMA_DATA = 0.5
# Default first timestep of the sampler: pi/2 rounded up to 5 digits, as in the NVlabs configs,
# the NVlabs demo and diffusers' SCMScheduler (`max_timesteps=1.57080`). cos(T_MAX) is -3.7e-6.
T_MAX = 1.57080
# Exact end of the TrigFlow time range, s in [0, pi/2].
T_HALF_PI = math.pi / 2
# Intermediate timestep of the searched 2-step schedule (paper Sec. 4; `intermediate_timesteps=1.3`).
T_INTERMEDIATE_2STEP = 1.3
# sCM training time distribution: sigma = exp(P_mean + P_std * n), t = atan(sigma / sigma_d)
# (NVlabs `logit_normal_trigflow`; generator/sCM and discriminator settings of the Sprint yaml).
SCM_P_MEAN, SCM_P_STD = 0.2, 1.6
DISC_P_MEAN, DISC_P_STD = -0.6, 1.0
# Tangent normalisation constant c of sCM (hard-coded 0.1 in the NVlabs trainer).
TANGENT_NORM_EPS = 0.1
# Teacher CFG scales sampled per example during sCM (`scm_cfg_scale: [4, 4.5, 5]`).
SCM_CFG_SCALES = (4.0, 4.5, 5.0)

# --- DiT ------------------------------------------------------------------------------------------
# The CFG embedder sees guidance * 0.1 (`cfg_embed_scale: 0.1`; diffusers `guidance_embeds_scale`).
GUIDANCE_EMBED_SCALE = 0.1
# Default distilled guidance of the Sprint pipelines (NVlabs app and diffusers `guidance_scale=4.5`).
DEFAULT_GUIDANCE = 4.5
# Sinusoidal frequency embedding width of time and guidance (`frequency_embedding_size=256`).
TIME_FREQ_DIM = 256
# Flow-matching teachers trained with integer time feed 1000 * tau (`timestep_norm_scale_factor`).
FLOW_TIME_SCALE = 1000.0
# Additive attention bias for masked text tokens, (1 - m) * -10000 in both codebases.
MASK_BIAS = -10000.0

# --- Latent space ---------------------------------------------------------------------------------
# DC-AE f32c32 SANA 1.0/1.1 `scaling_factor`.
DCAE_SCALE = 0.41407
# DC-AE spatial compression and latent channels (f32c32).
LATENT_DOWNSCALE = 32
LATENT_CHANNELS = 32

# Largest image side the sampler, the CLI, the nodes and the trainer accept (a multiple of
# LATENT_DOWNSCALE). Why 4096: the DC-AE decoder's last stage runs 128 channels at full resolution,
# 4096^2 x 128 x 2 bytes = 4.3 GB per bf16 activation with several alive at once (~13 GB untiled; the
# tiled decode brings it under 2 GB), and the DiT sees 128 x 128 = 16384 tokens. At 8192 one such
# activation alone is 17 GB: no 24 GB card decodes it, and a typo (100000) would allocate until the
# machine runs out of memory instead of failing at once.
MAX_IMAGE_SIDE = 4096
# SANA-Sprint is one step-adaptive model for 1, 2 and 4 steps (paper); more only cost time. The
# limit of `steps` and of the length of an explicit schedule, in the core, the CLI and the nodes.
MAX_STEPS = 4

# --- Text -----------------------------------------------------------------------------------------
# Caption token budget (`model_max_length: 300`).
MAX_TEXT_TOKENS = 300
# Gemma-2-2b hidden width = caption_channels of the DiT.
GEMMA_HIDDEN = 2304

# Complex human instruction (CHI) prepended to every prompt, as in NVlabs' Sprint configs
# (double quotes). diffusers spells "Enhanced prompt" with single quotes; see text_encoder.py.
CHI_LINES = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions '
    "suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, "
    "and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, "
    "sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring "
    "glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus "
    "passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any "
    "additional commentary or evaluations:",
    "User Prompt: ",
)

# --- Public weights (where users download them) ---------------------------------------------------
HF_SPRINT_1600M = "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers"
HF_SPRINT_600M = "Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers"
HF_GEMMA = "Efficient-Large-Model/gemma-2-2b-it"
HF_DCAE = "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers"
# The released Sana 1.6B HED ControlNet (not a Sprint model; reference 5.1 and asset/docs/model_zoo.md).
HF_SANA_CONTROLNET_HED_1600M = "Efficient-Large-Model/Sana_1600M_1024px_BF16_ControlNet_HED"

# --- Files ----------------------------------------------------------------------------------------
# Largest safetensors JSON header the reference implementation accepts (safetensors crate,
# `MAX_HEADER_SIZE = 100_000_000`); a larger length field means the file is something else.
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000

# --- DC-AE (sana_sprint_model.md section 4) -------------------------------------------------------
# RMSNorm2d eps of every DC-AE norm (efficientvit TritonRMSNorm2d default; diffusers RMSNorm(1e-5)).
DCAE_NORM_EPS = 1e-5
# Normaliser eps of the ReLU linear attention (efficientvit LiteMLA `eps=1.0e-15`).
DCAE_ATTN_EPS = 1e-15
# Head width of the multiscale linear attention (efficientvit EfficientViTBlock `dim=32`;
# diffusers `attention_head_dim=32`). Only needed when a checkpoint has no multiscale branch.
DCAE_HEAD_DIM = 32
# GLUMBConv hidden width = 4 x channels (efficientvit `expand_ratio=4`).
DCAE_GLU_EXPAND = 4
# Each stage transition halves (encoder) or doubles (decoder) the resolution.
DCAE_STAGE_FACTOR = 2
# Default tiles: decode in 16x16-latent (512 px) tiles overlapping by 4 latents (128 px);
# encode in 512 px tiles overlapping by 128 px. Chosen for memory, not taken from upstream.
DCAE_DECODE_TILE = 16
DCAE_DECODE_OVERLAP = 4
DCAE_ENCODE_TILE = 512
DCAE_ENCODE_OVERLAP = 128
# Images handed to `encode` must lie in [0, 1]; values this far outside are rejected as a likely
# [-1, 1] or [0, 255] mix-up.
IMAGE_RANGE_TOLERANCE = 1e-3

# --- GEMMA2_2B: gemma-2-2b(-it) settings that tensor shapes do not reveal -----------------------------
# (Appended by the text-encoder helper; used by text_encoder.py when a weights file comes without a
# config.json. Source: config.json of google/gemma-2-2b-it, which equals transformers' Gemma2Config
# defaults in 5.23; sizes, layer and head counts are read from the tensors instead.)
GEMMA2_2B_HEAD_DIM = 256
GEMMA2_2B_QUERY_PRE_ATTN_SCALAR = 256
GEMMA2_2B_RMS_NORM_EPS = 1e-6
GEMMA2_2B_ATTN_SOFTCAP = 50.0
GEMMA2_2B_FINAL_SOFTCAP = 30.0
GEMMA2_2B_SLIDING_WINDOW = 4096
GEMMA2_2B_ROPE_THETA = 10000.0
GEMMA2_2B_MAX_POSITIONS = 8192
GEMMA2_2B_ACTIVATION = "gelu_pytorch_tanh"
# Gemma tokenizer special ids: <pad> 0, <eos> 1, <bos> 2.
GEMMA_PAD_ID, GEMMA_EOS_ID, GEMMA_BOS_ID = 0, 1, 2
# Key under which ComfyUI's packaged gemma_2_2b safetensors carry the SentencePiece model (uint8 bytes).
COMFY_SPIECE_KEY = "spiece_model"

# --- ComfyUI nodes (nodes/) -----------------------------------------------------------------------
# Prompts the text-encode node keeps encoded (LRU); one entry is 300 x 2304 values (~1.4 MB bf16).
PROMPT_CACHE_ENTRIES = 32
# Size presets near 1024^2 pixels: width = height * ratio, both rounded to multiples of 32 (the
# DC-AE downscale); portrait presets are the landscape ones transposed. Computed, not copied.
ASPECT_RATIO_PRESETS_1024 = (
    ("1:1", 1024, 1024), ("4:3", 1184, 896), ("3:4", 896, 1184), ("3:2", 1248, 832), ("2:3", 832, 1248),
    ("16:9", 1376, 768), ("9:16", 768, 1376), ("2:1", 1472, 736), ("1:2", 736, 1472),
    ("21:9", 1568, 672), ("9:21", 672, 1568),
)
# Longest side of the per-step preview image sent to the UI (ComfyUI's --preview-size default).
PREVIEW_MAX_SIZE = 512
# Latent -> RGB factors for live previews, (32 rows of 3) and a bias of 3, in model space (DC-AE
# latent * DCAE_SCALE). None: they must be fitted on the real DC-AE f32c32 weights with
# bench/fit_latent_rgb.py, which were not available offline; previews then use a false-colour
# projection (sana_sprint_core/preview.py).
DCAE_LATENT_RGB_FACTORS = None
DCAE_LATENT_RGB_BIAS = None
# Rough activation memory of a DC-AE decode / encode per output pixel, in bytes per byte of dtype
# (the widest full-resolution stage is 128 channels; a few such tensors are alive at once). Asked of
# ComfyUI's model management before decoding so it frees room; an estimate, not a measurement.
DCAE_BYTES_PER_PIXEL_PER_DTYPE_BYTE = 128 * 6
# Where the shipped workflows expect the public weights, relative to ComfyUI's model folders
# (diffusion_models, text_encoders, vae); entries of model_files.KINDS. The DiT folder holds the
# transformer (config.json + weights) or the diffusers pipeline (model_index.json + transformer/).
COMFY_DIT_NAME = "Sana_Sprint_1.6B_1024px_diffusers"
COMFY_TEXT_ENCODER_NAME = "gemma-2-2b-it"
COMFY_VAE_NAME = "dc-ae-f32c32-sana-1.1-diffusers"
# The ControlNet workflows' files: the released Sana HED ControlNet in models/controlnet (its NVlabs
# .pth, checkpoints/<name> of HF_SANA_CONTROLNET_HED_1600M) and the HED weights in models/annotators.
COMFY_CONTROLNET_NAME = "Sana_1600M_1024px_BF16_ControlNet_HED.pth"

# --- ControlNet and HED scribbles (sana_sprint_model.md 5.1-5.3) ---------------------------------
# Copied blocks of the Sana ControlNet (NVlabs `copy_blocks_num = 7`; diffusers `num_layers=7`).
CONTROLNET_BLOCKS = 7
# HED annotator weights: lllyasviel's Apache-2.0 `ControlNetHED_Apache2` network, file
# `ControlNetHED.pth` of https://huggingface.co/lllyasviel/Annotators (the file NVlabs'
# HEDdetector and controlnet_aux load). Looked up under models/<HED_MODEL_FOLDER>/.
HF_ANNOTATORS = "lllyasviel/Annotators"
HED_FILE_NAME = "ControlNetHED.pth"
HED_MODEL_FOLDER = "annotators"
# HED works at a short side of `detect_resolution` rounded to multiples of 64 (controlnet_aux
# util.resize_image). Default: the 1024 px generation size, as NVlabs' demo passes min(h, w) of the bin.
HED_SIZE_MULTIPLE = 64
HED_DEFAULT_DETECT_RESOLUTION = 1024
# Scribble post-processing of NVlabs `get_scribble_map` (tools/controlnet/utils.py) on edges in [0, 1]:
# nms(edges, 127, 3.0): Gaussian blur sigma 3, keep directional 3x3 maxima, threshold > 127 of 255.
SCRIBBLE_NMS_SIGMA = 3.0
SCRIBBLE_NMS_THRESHOLD = 127 / 255
# then GaussianBlur(sigma 3) of the uint8 map and map > 4 -> 255: on the rounded uint8 blur that is
# blur >= 4.5 of 255.
SCRIBBLE_BLUR_SIGMA = 3.0
SCRIBBLE_BLUR_THRESHOLD = 4.5 / 255
# OpenCV's Gaussian kernel size for ksize (0, 0): round(sigma * 4 * 2 + 1) | 1 for float images (the
# nms blur) and round(sigma * 3 * 2 + 1) | 1 for uint8 images (the second blur): 25 and 19 at sigma 3.
SCRIBBLE_NMS_KERNEL = 25
SCRIBBLE_BLUR_KERNEL = 19
# Thickness: 0 -> erode with 4x4 ones; 1 -> unchanged; t > 1 -> dilate with (t // 2)^2 ones.
# Training draws t uniformly from 0..24 (`random.randint(0, 24)`); the demo slider defaults to 2.
SCRIBBLE_ERODE_SIZE = 4
SCRIBBLE_DEFAULT_THICKNESS = 2
SCRIBBLE_TRAIN_THICKNESS_MAX = 24

# --- Live preview and scribble pad (nodes/live.py, web/) --------------------------------------------
# Side of the scribble pad's default canvas: SANA-Sprint's 1024px training resolution.
SCRIBBLE_PAD_DEFAULT_SIZE = 1024
# Canvas sides are multiples of the DC-AE downscale (LATENT_DOWNSCALE, 32) within these bounds, so a
# scribble maps onto a latent grid without resizing. The upper bound equals the empty latent node's.
SCRIBBLE_PAD_MIN_SIZE = 64
SCRIBBLE_PAD_MAX_SIZE = MAX_IMAGE_SIDE
# Subfolder of ComfyUI's input folder that the pad's canvas uploads its PNGs into. The frontend has
# the same value in web/lib/constants.js (a test checks that both agree).
SCRIBBLE_PAD_UPLOAD_SUBFOLDER = "sana_sprint"
# Prompts whose per-stage wall times (text encode, sampling, decode) the timing log keeps for the
# live preview node; older prompts are dropped first. A prompt is read back within the same run.
LATENCY_PROMPTS_KEPT = 16

# --- Distillation trainer (trainers/; reference sana_sprint_model.md section 6) ---------------------
# Loss weights L_G = SCM_LAMBDA L_sCM + ADV_LAMBDA L_adv (NVlabs yaml `scm_lambda`, `adv_lambda`).
SCM_LAMBDA, ADV_LAMBDA = 1.0, 0.5
# Tangent warmup length in iterations (NVlabs Sprint yaml `tangent_warmup_steps: 4000`).
TANGENT_WARMUP_STEPS = 4000
# Probability of the max time T_MAX in the LADD / D phase (`largest_timestep_prob: 0.5`).
LARGEST_TIMESTEP_PROB = 0.5
# Teacher blocks carrying discriminator heads (`head_block_ids: [2, 8, 14, 19]`).
DISC_HEAD_BLOCKS = (2, 8, 14, 19)
# Gradient clipping: NVlabs clips G and D at a fixed 0.1 (`gradient_clip: 0.1`; optim.grad_clip: 0.1 here).
# The trainer's default is adaptive instead: CLIP_RATIO x the running mean of past norms (trainers/optim.py).
CLIP_RATIO = 2.0
# The trainer's recipe (docs/training.md, the toy tables): lr decays to LR_MIN_RATIO x lr by the last
# update; an EMA of the weights (decay capped at EMA_MAX_DECAY, trainers/ema.py) is what gets exported.
LR_MIN_RATIO = 0.1
EMA_MAX_DECAY = 0.999
# Learning rate of the full fine-tune (NVlabs CAME `lr: 2e-6`).
LR_FULL = 2e-6
# New CFG embedder: first linear ~ N(0, 0.02) (NVlabs SanaMS.initialize for cfg_embedder.mlp[0]).
GUIDANCE_INIT_STD = 0.02
# StyleGAN-T discriminator head (NVlabs ladd_blocks.py): BatchNormLocal virtual batch, LeakyReLU
# slope, kernel of the residual conv block.
DISC_VIRTUAL_BATCH, DISC_LEAKY_SLOPE, DISC_RESIDUAL_KERNEL = 8, 0.2, 9

# --- Training inside ComfyUI (nodes/train_*.py, trainers/session.py) ----------------------------------
# Steps of the student sample behind the Distill node's validation preview: 1, the Sprint headline.
TRAIN_PREVIEW_STEPS = 1
# Public name of the flow-matching teacher the training workflow distils from, in models/diffusion_models
# (NVlabs' SANA-Sprint 1.6B teacher in diffusers layout, as trainers/configs/lora_1600m.yaml names it).
COMFY_TEACHER_NAME = "SANA_Sprint_1.6B_1024px_teacher_diffusers"
