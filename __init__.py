"""ComfyUI-SanaSprint: ComfyUI loads this folder as a package and calls `comfy_entrypoint`.

Outside ComfyUI (pytest, the CLI, `import sana_sprint_core`) the node modules are not imported, so
nothing here needs ComfyUI.
"""

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    pass
else:
    from .nodes.extension import comfy_entrypoint  # noqa: F401

WEB_DIRECTORY = "./web"
