"""ComfyUI V3 nodes of SANA-Sprint. The only package of the repository that imports ComfyUI.

Its modules use relative imports (`..sana_sprint_core`), so they are imported as part of the pack
(ComfyUI loads the repository folder as one package), never as a top-level `nodes` package, which
would clash with ComfyUI's own `nodes` module.
"""
