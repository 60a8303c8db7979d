"""The layers' import rules (README, "Architecture"), checked over every module's source.

Imports inside functions count too: a rule broken lazily is still broken.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOUNDATION = {"submitgw.config", "submitgw.errors", "submitgw.types"}

# layer -> the project modules (prefixes) it may import; its own layer is always allowed.
ALLOWED: dict[str, set[str]] = {
    "submitgw": set(),
    "pki": set(),
    "submitgw.config": set(),
    "submitgw.errors": set(),
    "submitgw.types": set(),
    "submitgw.tls": {"submitgw.config"},
    "submitgw.rules": FOUNDATION,
    "submitgw.store": FOUNDATION,
    "submitgw.services": FOUNDATION | {"submitgw.rules", "submitgw.store", "pki"},
    "submitgw.smtp": FOUNDATION | {"submitgw.rules", "submitgw.services", "submitgw.tls", "pki"},
    "submitgw.web": FOUNDATION
    | {"submitgw.rules", "submitgw.services", "submitgw.tls", "submitgw.store", "pki"},
    "submitgw.app": FOUNDATION
    | {
        "submitgw.rules",
        "submitgw.services",
        "submitgw.store",
        "submitgw.smtp",
        "submitgw.web",
        "submitgw.tls",
        "pki",
    },
    # `access check` shows the very reply a refused client would get: the reply table
    # is wording, not protocol.
    "submitgw.cli": FOUNDATION
    | {
        "submitgw.rules",
        "submitgw.services",
        "submitgw.store",
        "submitgw.app",
        "submitgw.smtp.replies",
        "pki",
    },
    "submitgw.__main__": {"submitgw.cli"},
}
# Third-party packages a layer must not reach for: the protocol and storage libraries
# belong to their own layers.
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "pki": {"sqlalchemy", "aiosmtpd", "aiosmtplib", "aiohttp", "submitgw"},
    "submitgw.rules": {
        "sqlalchemy",
        "aiosmtpd",
        "aiosmtplib",
        "aiohttp",
        "asyncio",
        "dns",
        "threading",
        "concurrent",
        "socket",
    },
    "submitgw.store": {"aiosmtpd", "aiosmtplib", "aiohttp", "asyncio"},
    "submitgw.services": {"aiosmtpd", "aiohttp"},
    "submitgw.web": {"aiosmtpd", "aiosmtplib"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        # The bare package is a layer of its own, not a catch-all for new modules.
        if module == layer or (layer != "submitgw" and module.startswith(layer + ".")):
            return layer
    raise AssertionError(f"{module} belongs to no layer: add it to the README map and here")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path).rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from submitgw.smtp import replies` imports the module, not the package.
                module = f"{base}.{alias.name}"
                found.add(module if module in KNOWN else base)
    return found


def sources() -> list[Path]:
    return sorted([*(ROOT / "submitgw").rglob("*.py"), *(ROOT / "pki").rglob("*.py")])


KNOWN = {module_name(p) for p in sources()}


def project_module(name: str) -> str | None:
    """The project module `name` refers to, or None for another package."""
    if name.split(".")[0] not in {"submitgw", "pki"}:
        return None
    known = KNOWN
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def violations(module: str, names: set[str]) -> list[str]:
    """The project modules among `names` that `module`'s layer may not import."""
    layer = layer_of(module)
    allowed = ALLOWED[layer] | {layer}
    wrong = set()
    for name in names:
        target = project_module(name)
        if target is None:
            continue
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            wrong.add(target)
    return sorted(wrong)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_what_its_layer_may(path: Path) -> None:
    module = module_name(path)
    wrong = violations(module, imports(path))
    assert not wrong, f"{module} ({layer_of(module)}) imports {wrong}"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_libraries_stay_in_their_layers(path: Path) -> None:
    layer = layer_of(module_name(path))
    banned = FORBIDDEN_THIRD_PARTY.get(layer, set())
    used = {name.split(".")[0] for name in imports(path)}
    assert not used & banned, f"{module_name(path)} imports {sorted(used & banned)}"


def test_the_check_catches_a_break() -> None:
    """Not vacuous: reaching upwards or sideways is reported, lazily or not."""
    assert violations("submitgw.rules.access", {"submitgw.store", "re"}) == ["submitgw.store"]
    assert violations("submitgw.store.users", {"submitgw.rules.limits"}) == [
        "submitgw.rules.limits"
    ]
    assert violations("pki.ca", {"submitgw.config"}) == ["submitgw.config"]
    assert violations("submitgw.smtp.session", {"submitgw.web.site"}) == ["submitgw.web.site"]
    assert violations("submitgw.app", {"submitgw.cli.serve"}) == ["submitgw.cli.serve"]
    assert violations("submitgw.smtp.session", {"submitgw.rules.policy", "pki"}) == []
