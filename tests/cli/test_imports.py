"""`submitgw.cli` has no import loops: only the package imports the command modules."""

from __future__ import annotations

import ast
from pathlib import Path

import submitgw.cli

CLI = Path(submitgw.cli.__file__).parent


def cli_imports(path: Path) -> set[str]:
    """The modules of `submitgw.cli` that `path` imports, anywhere in it (not only at the top)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "submitgw.cli":
                names.update(f"submitgw.cli.{alias.name}" for alias in node.names)
                names.add("submitgw.cli")
            elif node.module.startswith("submitgw.cli."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("submitgw.cli"))
    return names


def module_name(path: Path) -> str:
    return "submitgw.cli" if path.stem == "__init__" else f"submitgw.cli.{path.stem}"


def test_no_import_loops_in_the_cli() -> None:
    graph = {
        module_name(p): cli_imports(p) & {module_name(q) for q in CLI.glob("*.py")}
        for p in CLI.glob("*.py")
    }
    graph = {
        name: {target for target in targets if target != name} for name, targets in graph.items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    loops = sorted(name for name in graph if reaches(name, name, {name}))
    assert not loops, f"import loops through {loops}: {graph}"
