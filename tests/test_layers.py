"""The package's layers depend on each other in one direction only, as the README's table says."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "txchanges"

#: Each layer, and the layers it may import from.
ALLOWED = {
    "base": set(),
    "http": {"base"},
    "feed": {"base", "http"},
    "service": {"base", "http", "feed"},
    "many": {"base", "http", "feed", "service"},
    "group": {"base", "http", "feed", "service", "many"},
    "testing": {"base", "http", "feed"},
    "cli": {"base", "http", "feed", "service", "many", "group", "metrics"},
    "metrics": {"base", "feed", "service", "many", "group"},
}

#: The one import against the direction, with its reason.
EXCEPTIONS = {
    ("http/_http11.py", "txchanges.feed._collect"): "whole bodies are collected by the feed layer's body reader",
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("errors", "_reactor"):
        return "base"
    return parts[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("txchanges"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("txchanges"))
    return found


def test_every_layer_imports_only_the_layers_below_it():
    """No module imports from a layer above its own, except the one named exception."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ("__init__.py", "__main__.py"):
            continue
        own = layer_of("txchanges." + relative.removesuffix(".py").replace("/", "."))
        for module in imports(path):
            other = layer_of(module)
            if other != own and other not in ALLOWED[own] and (relative, module) not in EXCEPTIONS:
                wrong.append(f"{relative} imports {module}")
    assert wrong == []


def test_the_exceptions_are_still_needed():
    """Each listed exception is an import that exists, so the list cannot go stale."""
    for relative, module in EXCEPTIONS:
        assert module in imports(PACKAGE / relative), (relative, module)
