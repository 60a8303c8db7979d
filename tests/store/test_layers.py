"""The store's place in the layers: tables and values only, no decisions, X.509 or protocols."""

from __future__ import annotations

import ast
from pathlib import Path

import submitgw.store

STORE = Path(submitgw.store.__file__).parent
# What a store module may import from this project (besides the store itself).
ALLOWED = ("submitgw.types", "submitgw.config", "submitgw.store", "migrations")


def project_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("submitgw", "pki", "migrations")}


def test_the_store_imports_no_rules_services_or_protocols() -> None:
    for path in sorted(STORE.glob("*.py")):
        outside = {
            name
            for name in project_imports(path)
            if not any(name == a or name.startswith(a + ".") for a in ALLOWED)
        }
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_models_hold_every_table_and_import_no_repository() -> None:
    assert project_imports(STORE / "models.py") == set()
    for path in sorted(STORE.glob("*.py")):
        if path.name == "models.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tables = [
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            and any(isinstance(base, ast.Name) and base.id == "Base" for base in node.bases)
        ]
        assert not tables, f"{path.name} defines tables {tables}: they belong in models.py"


def test_the_store_parses_no_certificates() -> None:
    for path in sorted(STORE.glob("*.py")):
        assert "cryptography" not in path.read_text(encoding="utf-8"), path.name
