"""A real ComfyUI server for the end-to-end test: start, talk HTTP and websocket, stop.

The server runs `main.py --cpu` from $COMFYUI_DIR on a free loopback port with a temporary base
directory (custom_nodes/, models/, input/, output/ inside it), using the Python that runs pytest.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Binary websocket frame types (protocol.BinaryEventTypes): 1 = PREVIEW_IMAGE, 4 = with metadata;
# 3 = TEXT (u32 length of the node id, the node id, utf-8 text: a node's progress text).
PREVIEW_FRAMES = (1, 4)
TEXT_FRAME = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py --cpu ...` in `comfy_dir` with `base` as --base-directory."""

    def __init__(self, comfy_dir: Path, base: Path, log: Path, env: dict | None = None, python: str | None = None,
                 wrap=None):
        """`python`: ComfyUI's interpreter (default: this one); `wrap(cmd) -> cmd`: e.g. run it in a memory group."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(base), "--preview-method", "auto",
               "--database-url", "sqlite:///:memory:"]
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(wrap(cmd) if wrap else cmd, cwd=comfy_dir, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, probe: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get(f"/object_info/{probe}"):
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, data: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
                return r.status, json.loads(body) if body else {}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def view(self, item: dict) -> bytes:
        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
        status, body = self.get_bytes(f"/view?{query}")
        assert status == 200, f"/view {item} -> {status}"
        return body


@dataclass
class Run:
    """What the websocket said about one prompt."""

    prompt_id: str
    events: list[dict] = field(default_factory=list)  # JSON messages of this prompt
    previews: list[tuple[int, bytes]] = field(default_factory=list)  # (frame type, image bytes)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (node id, progress text)

    def of_type(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e["type"] == kind]


class Client:
    """A websocket client (websocket-client) that posts prompts and records their events."""

    def __init__(self, server: ComfyServer):
        import websocket

        self.server = server
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={self.client_id}",
                                              timeout=300)

    def close(self) -> None:
        self.ws.close()

    def submit(self, prompt: dict) -> tuple[int, dict]:
        return self.server.post("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def follow(self, prompt_id: str, on_event=None, timeout: float = 300.0) -> Run:
        """Read messages until this prompt ends (success, error or interrupt); `on_event(run, msg)` per message."""
        run = Run(prompt_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.ws.recv()
            if isinstance(msg, bytes):
                kind = struct.unpack(">I", msg[:4])[0]
                if kind in PREVIEW_FRAMES:
                    run.previews.append((kind, msg[8:] if kind == 1 else msg))
                elif kind == TEXT_FRAME:
                    n = struct.unpack(">I", msg[4:8])[0]
                    run.texts.append((msg[8:8 + n].decode(), msg[8 + n:].decode()))
                continue
            event = json.loads(msg)
            if event.get("data", {}).get("prompt_id") != prompt_id:
                continue
            run.events.append(event)
            if on_event is not None:
                on_event(run, event)
            if event["type"] in ("execution_error", "execution_interrupted"):
                return run
            if event["type"] == "executing" and event["data"]["node"] is None:
                return run
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


PACK = "ComfyUI-SanaSprint"
REPO = Path(__file__).resolve().parents[2]
INPUT_SIZE = (256, 192)  # width, height of the workflows' input photo and drawing


def new_base(tmp_path_factory, name: str) -> Path:
    """A ComfyUI --base-directory: this repository linked into custom_nodes/, the tiny models under
    the shipped workflows' file names in models/."""
    from tests.fixtures.comfy_models import write_tiny_models

    base = tmp_path_factory.mktemp(name)
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(REPO, target_is_directory=True)
    write_tiny_models(base / "models")
    return base


def write_workflow_inputs(base: Path) -> None:
    """input/example.png (a random photo) and input/scribble.png (dark strokes on white paper), the
    files the shipped img2img and ControlNet workflows load."""
    import numpy as np
    from PIL import Image

    (base / "input").mkdir(exist_ok=True)
    w, h = INPUT_SIZE
    photo = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(photo).save(base / "input" / "example.png")
    drawing = np.full((h, w, 3), 255, dtype=np.uint8)
    drawing[60:66, 20:230] = drawing[20:170, 120:126] = 30
    Image.fromarray(drawing).save(base / "input" / "scribble.png")
