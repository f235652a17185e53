"""The graph format of the shipped workflows: node specs, the layout, UI (v0.4) and API conversion.

`SPECS` describes each node's inputs in ComfyUI's input order; workflows/build.py registers the nodes
it uses (tests check them against the node definitions: ours in CI, ComfyUI's own /object_info in the
real-ComfyUI test). Runs without ComfyUI and without this repo's packages.
"""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class In:
    """One input: a socket (`widget=False`) or a widget; `control` adds control_after_generate's value."""

    name: str
    type: str
    widget: bool = True
    control: bool = False
    upload: bool = False  # an image_upload combo: the frontend stores an extra "image" value after it
    optional: bool = False  # an optional socket may stay unlinked (no link in UI, absent from the API prompt)


@dataclass(frozen=True)
class Spec:
    inputs: tuple[In, ...]
    outputs: tuple[tuple[str, str], ...]  # (name, type)


def _sock(name: str, type_: str, optional: bool = False) -> In:
    return In(name, type_, widget=False, optional=optional)



SPECS: dict[str, Spec] = {}  # node type -> Spec, filled by build.py


@dataclass
class Node:
    id: int
    type: str
    values: dict  # input name -> widget value, or (source node id, output slot) for a socket
    title: str | None = None



# --- Layout ---------------------------------------------------------------------------------------------
# Node boxes (width, height; the title bar of NODE_TITLE_HEIGHT comes on top) as ComfyUI 0.3.64's
# frontend draws them at the end of a run, images and previews shown (measured in the real page by
# tests/e2e/test_browser_workflows.py, which fails if a node is drawn larger than this or overlaps).
SIZES = {
    "SanaSprintDiTLoader": (320, 82), "SanaSprintTextEncoderLoader": (320, 82), "SanaSprintVAELoader": (320, 82),
    "SanaSprintTextEncode": (320, 200), "SanaSprintEmptyLatent": (260, 130), "SanaSprintSampler": (280, 520),
    "SanaSprintVAEDecode": (260, 82), "SanaSprintVAEEncode": (260, 82), "SanaSprintLivePreview": (440, 520),
    "SanaSprintScribblePad": (420, 520), "SanaSprintControlNetLoader": (280, 106),
    "SanaSprintHEDPreprocessor": (280, 380), "SanaSprintControlNetApply": (260, 180), "SaveImage": (320, 360),
    "LoadImage": (280, 350), "SanaSprintDataset": (300, 260), "SanaSprintPrecompute": (320, 270),
    "SanaSprintDistill": (340, 760), "SanaSprintDistillControlNet": (340, 760), "SanaSprintSaveLoRA": (260, 134),
    "SanaSprintSaveControlNet": (260, 110), "SanaSprintLossGraph": (320, 300), "SanaSprintPersonalize": (400, 880),
}
NODE_TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT of the frontend
GAP_X, GAP_Y, MARGIN = 60, 20, 40


def _sources(node: Node) -> list[int]:
    return [node.values[i.name][0] for i in SPECS[node.type].inputs if not i.widget and i.name in node.values]


def _users(nodes: list[Node]) -> dict[int, list[int]]:
    """Node id -> the ids of the nodes that take one of its outputs."""
    return {n.id: [m.id for m in nodes if n.id in _sources(m)] for n in nodes}


def _height(node: Node) -> int:
    return NODE_TITLE_HEIGHT + SIZES[node.type][1] + GAP_Y


def _folded(nodes: list[Node]) -> dict[int, int]:
    """Node id -> the id it is drawn under: an output node whose one input comes from a node that feeds
    nothing else (VAE Decode -> Save Image) sits below that node, in its column."""
    users = _users(nodes)
    return {n.id: _sources(n)[0] for n in nodes
            if not users[n.id] and len(set(_sources(n))) == 1 and users[_sources(n)[0]] == [n.id]}


def columns(nodes: list[Node]) -> dict[int, int]:
    """Column of each node id, so that every link runs to the right:
    * a node with inputs: one right of its furthest input (longest path);
    * a node without inputs (a loader, an image, an empty latent): just left of its first user;
    * an output node: in its source's column under it if folded, else in the least filled column right
      of its inputs (one more column at the end if that is emptier)."""
    by_id = {n.id: n for n in nodes}
    under = _folded(nodes)
    users = _users(nodes)
    column: dict[int, int] = {}

    def depth(node_id: int) -> int:
        if node_id not in column:
            column[node_id] = 1 + max((depth(s) for s in _sources(by_id[node_id])), default=-1)
        return column[node_id]

    for n in nodes:
        depth(n.id)
    for n in nodes:
        if not _sources(n):
            column[n.id] = max(0, min((column[u] for u in users[n.id]), default=1) - 1)
    sinks = [n for n in nodes if not users[n.id] and _sources(n) and n.id not in under]
    fixed = [n for n in nodes if n not in sinks]
    filled = {}
    for n in fixed:
        filled[column[n.id]] = filled.get(column[n.id], 0) + _height(n)
    last = max(filled) + 1
    for n in sinks:
        c = min(range(column[n.id], last + 1), key=lambda k: (filled.get(k, 0), k))
        column[n.id] = c
        filled[c] = filled.get(c, 0) + _height(n)
    for child, parent in under.items():
        column[child] = column[parent]
    return column


def lay_out(nodes: list[Node]) -> dict[int, tuple[int, int]]:
    """Positions (of the body's top-left corner, as LiteGraph stores them): columns left to right, each
    a stack of its nodes, ordered by where their inputs sit so that links run forward and flat; a
    folded output node directly under its source."""
    column = columns(nodes)
    under = _folded(nodes)
    order = {n.id: i for i, n in enumerate(nodes)}
    pos: dict[int, tuple[int, int]] = {}
    x = MARGIN
    for c in range(max(column.values()) + 1):
        here = [n for n in nodes if column[n.id] == c and n.id not in under]
        if not here:
            continue
        here.sort(key=lambda n: (min((pos[s][1] for s in _sources(n) if s in pos), default=order[n.id] * 1e-3),
                                 order[n.id]))
        stacked = [m for n in here for m in [n, *(k for k in nodes if under.get(k.id) == n.id)]]
        y = MARGIN
        for n in stacked:
            pos[n.id] = (x, y + NODE_TITLE_HEIGHT)
            y += _height(n)
        x += max(SIZES[n.type][0] for n in stacked) + GAP_X
    return pos


def widget_values(node: Node) -> list:
    """widgets_values in input order; seed is followed by its control value, an upload combo by 'image'."""
    out = []
    for inp in SPECS[node.type].inputs:
        if inp.widget:
            out.append(node.values[inp.name])
            if inp.control:
                out.append("fixed")
            if inp.upload:
                out.append("image")
    return out


def _links(nodes: list[Node]) -> list[list]:
    """[link id, from node, from slot, to node, to slot, type] in node order, then input order."""
    by_id = {n.id: n for n in nodes}
    links = []
    for node in nodes:
        sockets = [i for i in SPECS[node.type].inputs if not i.widget]
        for slot, inp in enumerate(sockets):
            if inp.name not in node.values:
                if not inp.optional:
                    raise ValueError(f"{node.type} #{node.id}: required input {inp.name!r} is not linked")
                continue
            src, out = node.values[inp.name]
            links.append([len(links) + 1, src, out, node.id, slot, SPECS[by_id[src].type].outputs[out][1]])
    return links


def _link_to(links: list[list], node_id: int, slot: int) -> int | None:
    """The id of the link into (node_id, slot), or None for an unlinked optional socket."""
    return next((link[0] for link in links if link[3] == node_id and link[4] == slot), None)


def to_ui(nodes: list[Node]) -> dict:
    """The UI-format (version 0.4) workflow."""
    links = _links(nodes)
    pos = lay_out(nodes)
    ui_nodes = []
    for order, node in enumerate(nodes):
        spec = SPECS[node.type]
        inputs = [{"name": i.name, "type": i.type, "link": _link_to(links, node.id, s)}
                  for s, i in enumerate(x for x in spec.inputs if not x.widget)]
        outputs = [{"name": name, "type": t, "links": [k[0] for k in links if k[1] == node.id and k[2] == s],
                    "slot_index": s} for s, (name, t) in enumerate(spec.outputs)]
        entry = {"id": node.id, "type": node.type, "pos": list(pos[node.id]), "size": list(SIZES[node.type]),
                 "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                 "properties": {"Node name for S&R": node.type}, "widgets_values": widget_values(node)}
        ui_nodes.append(entry)
    return {"last_node_id": max(n.id for n in nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
            "version": 0.4}


def to_api(nodes: list[Node]) -> dict:
    """The API-format prompt: {id: {class_type, inputs, _meta}}; links as [source id, slot]."""
    prompt = {}
    for node in nodes:
        inputs = {}
        for inp in SPECS[node.type].inputs:
            if inp.name not in node.values:  # an unlinked optional socket (_links checked it is optional)
                continue
            value = node.values[inp.name]
            inputs[inp.name] = [str(value[0]), value[1]] if not inp.widget else value
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": node.title or node.type}}
    return prompt
