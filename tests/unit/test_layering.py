"""The dependency rule (README, "Architecture"): a pure core, adapters that never import each other."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "gateway"
#: The pure core: the model, the rules, the storage interface and what works on it alone.
CORE = [
    *("paths", "routing", "listing", "errors", "storage", "memory_storage", "logs"),
    *("proxy_protocol", "names", "modes", "checksums", "guard", "passwords", "shadow", "sync"),
]
#: The edges: processes, the command line, HTTP, metrics, the pieces that wire adapters up.
EDGES = [
    *("__init__", "__main__", "app", "cli", "workers", "metrics", "metrics_http", "httpd", "malloc"),
    *("auth_external", "logins", "sync_run", "connectivity"),
]
#: What only the edges may import (besides the adapters).
_EDGE_IMPORTS = tuple(
    f"gateway.{name}" for name in ("app", "cli", "workers", "sync_run", "connectivity", "httpd")
)
FORBIDDEN = {
    "core": ("pyftpdlib", "asyncssh", "gateway.ftp", "gateway.backends", "gateway.metrics", *_EDGE_IMPORTS),
    "ftp": ("asyncssh", "gateway.backends", *_EDGE_IMPORTS),
    "backends": ("pyftpdlib", "gateway.ftp", *_EDGE_IMPORTS),
    "edge": (),
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules():
    for name in CORE:
        yield "core", PACKAGE / f"{name}.py"
    for package in ("config", "usage"):  # the configuration and the usage report: core too
        for path in sorted((PACKAGE / package).glob("*.py")):
            yield "core", path
    for layer in ("ftp", "backends"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            yield layer, path
    for name in EDGES:
        yield "edge", PACKAGE / f"{name}.py"


@pytest.mark.parametrize(("layer", "path"), list(modules()), ids=lambda v: getattr(v, "name", v))
def test_layer_imports(layer, path):
    bad = [m for m in imports_of(path) for f in FORBIDDEN[layer] if m == f or m.startswith(f + ".")]
    assert bad == [], f"{path.relative_to(PACKAGE)} ({layer}) imports {bad}"


def test_every_module_has_a_layer():
    placed = [path for _, path in modules()]
    assert len(placed) == len(set(placed))  # one layer each
    assert sorted(set(PACKAGE.rglob("*.py")) - set(placed)) == []
