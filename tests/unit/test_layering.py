"""The dependency rule (README, "Architecture"): a pure core, adapters that never import each other."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "gateway"
CORE = [
    *("config", "paths", "routing", "listing", "errors", "storage", "logs", "proxy_protocol"),
    *("names", "modes", "checksums", "guard", "shadow", "sync"),
]
FORBIDDEN = {
    "core": ("pyftpdlib", "asyncssh", "gateway.ftp", "gateway.backends", "gateway.app", "gateway.cli"),
    "ftp": ("asyncssh", "gateway.backends", "gateway.app", "gateway.cli"),
    "backends": ("pyftpdlib", "gateway.ftp", "gateway.app", "gateway.cli"),
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
    for path in sorted((PACKAGE / "usage").glob("*.py")):  # the usage report: no framework either
        yield "core", path
    for layer in ("ftp", "backends"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            yield layer, path


@pytest.mark.parametrize(("layer", "path"), list(modules()), ids=lambda v: getattr(v, "name", v))
def test_layer_imports(layer, path):
    bad = [m for m in imports_of(path) for f in FORBIDDEN[layer] if m == f or m.startswith(f + ".")]
    assert bad == [], f"{path.relative_to(PACKAGE)} ({layer}) imports {bad}"
