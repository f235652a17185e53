"""trainers/ has no import cycle: no module imports one that imports it back, directly or through
others. Imports inside functions count too (a lazy import still ties the two modules together)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trainers"


def imports_of(path: Path) -> set[str]:
    """The trainers modules `path` imports (relative `from . import x`, `from .x import y`, or absolute)."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base.startswith("trainers"):
                base = base.removeprefix("trainers").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("trainers."))
    return (found & names) - {path.stem}


def test_no_import_cycles():
    graph = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path + [name, dep])}"
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert graph["distill"] >= {"modes", "personalize"} and "distill" not in graph["modes"]
