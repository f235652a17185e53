import os

import pytest

# No model hub in tests: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# The real-host tests (tests/e2e) need a ComfyUI, its Python and a browser: tests/e2e/run_real_host.sh
# sets those up and runs them. The plain suite leaves them out instead of reporting them as skipped.
collect_ignore = [] if os.environ.get("COMFYUI_DIR") else ["e2e"]

# torch caps its intra-op threads at the number of cores when it reads OMP_NUM_THREADS, so on a
# 2-core machine OMP_NUM_THREADS=4 would silently run with 2. Apply it explicitly, so that the suite
# can be run at 1, 2 and 4 threads anywhere (docs/testing.md, "Tolerances").
if os.environ.get("OMP_NUM_THREADS", "").isdigit():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture()
def workspace(tmp_path):
    """A trainer workspace: the tiny teacher as teacher.safetensors and a synthetic cache in cache/
    (test modules that need another one define their own)."""
    from tests.fixtures.distill import write_synthetic_cache, write_teacher

    write_teacher(tmp_path / "teacher.safetensors")
    write_synthetic_cache(tmp_path / "cache")
    return tmp_path
