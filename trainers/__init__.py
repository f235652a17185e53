"""SANA-Sprint distillation trainer (sCM + LADD): `python -m trainers.distill --config FILE`.

The modules import the model core as the top-level package `sana_sprint_core`. Inside the ComfyUI
pack (this folder imported as `<pack>.trainers`, nothing of the repository on sys.path) that name
is bound to the pack's own `<pack>.sana_sprint_core` and its submodules before anything else is
imported, so nodes and trainer share one copy of every class. Where `sana_sprint_core` is importable
itself (command line, tests) nothing is changed.
"""

import importlib
import importlib.util
import pkgutil
import sys

CORE = "sana_sprint_core"


def _bind_core(pack_core: str) -> None:
    """sys.modules[CORE(.x)] = the already importable `pack_core(.x)`, for the package and every submodule."""
    core = importlib.import_module(pack_core)
    for info in pkgutil.walk_packages(core.__path__, pack_core + "."):
        importlib.import_module(info.name)
    for name, module in list(sys.modules.items()):
        if name == pack_core or name.startswith(pack_core + "."):
            sys.modules[CORE + name[len(pack_core):]] = module


if "." in __name__ and CORE not in sys.modules and importlib.util.find_spec(CORE) is None:
    _bind_core(f"{__name__.rpartition('.')[0]}.{CORE}")
