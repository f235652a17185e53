"""DC-AE f32c32 (the SANA / SANA-Sprint autoencoder): model, loading, encode/decode, tiling.

    vae = load_vae("dc-ae-f32c32-sana-1.1-diffusers")      # folder, .safetensors or .pth
    latents = encode(vae, images)                            # (B, 3, H, W) in [0, 1] -> diffusion latents
    images = decode(vae, latents, tiled="auto")              # -> (B, 3, H, W) float32 in [0, 1]
"""

from .codec import decode, decode_tiled, encode, encode_tiled
from .config import DCAE_F32C32, DCAE_LITE_F32C32, DCAEConfig
from .keymap import original_to_diffusers
from .loading import build_from_state_dict, infer_config, load_vae
from .model import DCAE, Decoder, Encoder

__all__ = [
    "DCAE", "DCAEConfig", "DCAE_F32C32", "DCAE_LITE_F32C32", "Decoder", "Encoder", "build_from_state_dict", "decode",
    "decode_tiled", "encode", "encode_tiled", "infer_config", "load_vae", "original_to_diffusers",
]
