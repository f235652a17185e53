"""SANA-Sprint distillation trainer (sCM + LADD): `python -m trainers.distill --config FILE`.

The modules import the model core as the top-level package `sana_sprint_core`. Inside the ComfyUI
pack (this folder imported as `<pack>.trainers`) that name is bound to the pack's own
`<pack>.sana_sprint_core` and its submodules before anything else is imported, so nodes and trainer
share one copy of every class, whatever else is importable: another `sana_sprint_core` on sys.path
(the pack also pip-installed, a checkout on PYTHONPATH) would otherwise give two copies of each class,
and code that tells modules apart by class (the ControlNet's cross-attention switch) misses the
node-loaded model's. Where this folder is the top-level `trainers` (command line, tests) nothing is
changed.
"""

import importlib
import logging
import pkgutil
import sys

CORE = "sana_sprint_core"


def _bind_core(pack_core: str) -> None:
    """sys.modules[CORE(.x)] = the pack's `pack_core(.x)`, for the package and every submodule."""
    core = importlib.import_module(pack_core)
    other = sys.modules.get(CORE)
    if other is not None and other is not core:
        logging.warning("SANA-Sprint: another %s was imported before the pack (%s); the pack's copy (%s) is "
                        "used from now on", CORE, getattr(other, "__file__", other), core.__file__)
    for info in pkgutil.walk_packages(core.__path__, pack_core + "."):
        importlib.import_module(info.name)
    for name, module in list(sys.modules.items()):
        if name == pack_core or name.startswith(pack_core + "."):
            sys.modules[CORE + name[len(pack_core):]] = module


if "." in __name__:
    _bind_core(f"{__name__.rpartition('.')[0]}.{CORE}")
