"""Inner layers never import outer ones; _core never imports trio."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trioactors"

# layer number of each subpackage; top-level modules are the outermost layer
LAYERS = {"_core": 1, "_wire": 1, "_runtime": 2, "transports": 3, "_services": 4, "testing": 5}
TOP = 5


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "trioactors":
        return 0
    if len(parts) == 1:
        return TOP
    if parts[1] in LAYERS:
        return LAYERS[parts[1]]
    if parts[1] in {"_errors", "_version"}:
        return 0
    return TOP


def imports(path: Path) -> list[str]:
    module_parts = ["trioactors", *path.relative_to(PACKAGE).with_suffix("").parts]
    if module_parts[-1] == "__init__":
        module_parts.pop()
        package = module_parts
    else:
        package = module_parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append(name)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layering(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    module = ".".join(["trioactors", *rel.with_suffix("").parts]).removesuffix(".__init__")
    own = layer_of(module)
    for imported in imports(path):
        if own in (LAYERS["_core"],):
            assert not imported.startswith("trio") or imported.startswith("trioactors"), (
                f"{module} is pure (layer 1) but imports {imported}"
            )
        if imported.startswith("trioactors"):
            assert layer_of(imported) <= own, f"{module} (layer {own}) imports outer {imported}"
