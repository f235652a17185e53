"""Fixtures: ComfyUI stubs in sys.modules, the pack loaded as ComfyUI loads it, tiny models on disk."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from unittest.mock import patch

import pytest

from tests.nodes import stubs

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "sanasprint_pack_under_test"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from tests.fixtures.comfy_models import write_tiny_models
    from tests.fixtures.comfy_training import write_tiny_teacher

    root = tmp_path_factory.mktemp("comfy_models")
    write_tiny_models(root)
    write_tiny_teacher(root)  # the training workflow's teacher
    return root


def _one_core() -> dict:
    """<pack>.sana_sprint_core(.x) -> the importable sana_sprint_core(.x), for every submodule.

    Inside ComfyUI the pack's trainers bind `sana_sprint_core` to the pack's own copy
    (trainers/__init__.py), so nodes and trainer share every class; here the top-level package is
    importable, so the pack is made to use that one copy instead (the same single copy)."""
    import sana_sprint_core

    for info in pkgutil.walk_packages(sana_sprint_core.__path__, "sana_sprint_core."):
        importlib.import_module(info.name)
    return {f"{PACK_NAME}.{name}": m for name, m in sys.modules.items()
            if name == "sana_sprint_core" or name.startswith("sana_sprint_core.")}


@pytest.fixture(scope="session")
def pack(models_dir):
    """The repository imported like ComfyUI does (spec_from_file_location on its __init__.py)."""
    modules = stubs.build_modules(models_dir)
    with patch.dict(sys.modules, {**modules, **_one_core()}):
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        module.sana_sprint_core = sys.modules[PACK_NAME + ".sana_sprint_core"]
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
        yield module
    for name in [n for n in sys.modules if n == PACK_NAME or n.startswith(PACK_NAME + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def nodes(pack) -> dict:
    """node_id -> node class, from the pack's comfy_entrypoint."""
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}


@pytest.fixture(autouse=True)
def _clean_state():
    stubs.reset_state()
    yield
    stubs.reset_state()
