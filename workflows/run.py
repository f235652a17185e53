"""Run an API-format workflow on a running ComfyUI server and save its images (standard library only).

    python workflows/run.py workflows/api/sana_sprint_2step_text_to_image.json --out sprint.png \
        [--server http://127.0.0.1:8188] [--prompt "a red fox"] [--seed 7] [--timeout 600]

--prompt replaces the text of every SanaSprintTextEncode node, --seed the seed of every
SanaSprintSampler. The script posts the workflow (POST /prompt), polls /history/<id> until the run
ends, then downloads each output image (GET /view) to --out; with several images, the second and
later get _1, _2, ... before the extension. Exit code 1 with the server's message on any error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


def _request(url: str, data: dict | None = None) -> bytes:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')}") from e
    except urllib.error.URLError as e:  # nothing listening, a wrong host or port
        raise RuntimeError(f"cannot reach ComfyUI at {url.split('/', 3)[:3][-1]} ({e.reason}); start it "
                           "(python main.py --listen 127.0.0.1 --port 8188) or pass its address with --server") from e


def load_prompt(path: Path) -> dict:
    """The API-format prompt in `path`; a UI-format workflow (what ComfyUI's Save writes) is refused by name."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise RuntimeError(f"{path} is a UI workflow (it has 'nodes' and 'links'); this script posts the API format: "
                           f"use the twin in workflows/api/, or in ComfyUI use Workflow -> Export (API)")
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise RuntimeError(f"{path} is not an API-format workflow ({{node id: {{class_type, inputs}}}})")
    return data


def override(prompt: dict, text: str | None, seed: int | None) -> dict:
    """A copy of `prompt` with the prompt text and/or seed replaced."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if text is not None and node["class_type"] == "SanaSprintTextEncode":
            node["inputs"]["text"] = text
        if seed is not None and node["class_type"] == "SanaSprintSampler":
            node["inputs"]["seed"] = seed
    return prompt


def run(server: str, prompt: dict, timeout: float) -> dict:
    """POST the prompt and wait for its history entry; returns it (raises on failure or timeout)."""
    answer = json.loads(_request(f"{server}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex}))
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = json.loads(_request(f"{server}/history/{prompt_id}"))
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            if entry["status"].get("status_str") != "success":
                raise RuntimeError(f"run failed: {json.dumps(entry['status'].get('messages'))[:2000]}")
            return entry
        time.sleep(0.5)
    raise RuntimeError(f"no result after {timeout} s (prompt {prompt_id})")


def save_images(server: str, entry: dict, out: Path) -> list[Path]:
    """Download every image of the history entry's outputs to `out` (+ _1, _2, ...)."""
    images = [img for node in entry["outputs"].values() for img in node.get("images", [])]
    if not images:
        raise RuntimeError("the workflow produced no images")
    written = []
    for i, img in enumerate(images):
        query = urllib.parse.urlencode({k: img[k] for k in ("filename", "subfolder", "type")})
        path = out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        path.write_bytes(_request(f"{server}/view?{query}"))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, help="API-format workflow (workflows/api/*.json)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the image (.png)")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--prompt", help="replace the prompt text")
    parser.add_argument("--seed", type=int, help="replace the sampler seed")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        prompt = override(load_prompt(args.workflow), args.prompt, args.seed)
        entry = run(args.server.rstrip("/"), prompt, args.timeout)
        for path in save_images(args.server.rstrip("/"), entry, args.out):
            print(f"wrote {path}")
    except (RuntimeError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
