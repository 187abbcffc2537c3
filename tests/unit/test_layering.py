"""The dependency rule (docs/architecture.md, "Architecture"): the top-level packages are the layers.

    core/ config/   the pure rules and the storage interface: import only each other
    features/       guard, shadow, sync, usage: import the core
    ftp/            the FTP front end (pyftpdlib): imports the core and the features
    backends/       the storages (asyncssh, ftplib): import the core and the features
    edges/          processes, CLI, HTTP, wiring: import anything

No layer imports one to its right, and the two adapters never import each other.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "gateway"
LAYERS = ("core", "config", "features", "ftp", "backends", "edges")
_ADAPTERS = ("pyftpdlib", "asyncssh", "gateway.ftp", "gateway.backends", "gateway.edges")
FORBIDDEN = {
    "core": ("gateway.features", *_ADAPTERS),
    "config": ("gateway.features", *_ADAPTERS),
    "features": _ADAPTERS,
    "ftp": ("asyncssh", "gateway.backends", "gateway.edges"),
    "backends": ("pyftpdlib", "gateway.ftp", "gateway.edges"),
    "edges": (),
    "top": ("pyftpdlib", "asyncssh", "gateway.ftp", "gateway.backends", "gateway.features", "gateway.core"),
}
#: The top level holds nothing but the packages, the version and ``python -m gateway``.
TOP = {"__init__.py": "top", "__main__.py": "edges"}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules():
    for name, layer in TOP.items():
        yield layer, PACKAGE / name
    for layer in LAYERS:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            yield layer, path


@pytest.mark.parametrize(("layer", "path"), list(modules()), ids=lambda v: getattr(v, "name", v))
def test_layer_imports(layer, path):
    bad = [m for m in imports_of(path) for f in FORBIDDEN[layer] if m == f or m.startswith(f + ".")]
    assert bad == [], f"{path.relative_to(PACKAGE)} ({layer}) imports {bad}"


def test_every_module_has_a_layer():
    placed = [path for _, path in modules()]
    assert len(placed) == len(set(placed))  # one layer each
    assert sorted(set(PACKAGE.rglob("*.py")) - set(placed)) == []
    assert sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py") == sorted(TOP)
