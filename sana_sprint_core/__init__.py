"""SANA-Sprint core: Sprint DiT, TrigFlow sampler, DC-AE, Gemma-2 prompts, loading. No ComfyUI imports.

Import the submodules you need (`sana_sprint_core.sampler`, `.dit_loading`, ...); this package root
stays light so that a host can import it cheaply.
"""

__version__ = "0.1.0"
