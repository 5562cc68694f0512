"""The package's metadata: one version, and every third-party module it imports declared."""

import ast
import functools
import sys
import tomllib
from importlib.metadata import distribution, packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import txchanges

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: What the installed package ships: the library and its twistd plugin.
SOURCES = sorted((ROOT / "txchanges").rglob("*.py")) + sorted((ROOT / "twisted" / "plugins").glob("*.py"))


def test_the_version_is_written_once():
    """pyproject.toml takes the version from txchanges.__version__, so the installed metadata has that version."""
    assert "version" not in PYPROJECT and "version" in PYPROJECT["dynamic"]
    assert version("txchanges") == txchanges.__version__


def imported_modules(path):
    """The absolute imports of one file, as full module names."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def third_party_modules():
    """Each module imported by the package that is neither the standard library's nor txchanges' own."""
    found = set()
    for path in SOURCES:
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top != "txchanges":
                found.add(module)
    return found


@functools.cache
def files_of(name):
    """The paths of the files the installed distribution *name* holds."""
    return frozenset(str(f) for f in distribution(name).files or ())


def distribution_of(module, top_level):
    """
    The name of the installed distribution that provides *module*, given
    ``packages_distributions()`` as *top_level*.
    """
    candidates = top_level.get(module.split(".")[0], [])
    if len(set(candidates)) > 1:  # a namespace package (zope) or twisted.plugins: find who has the file
        path = module.replace(".", "/")
        candidates = [
            name
            for name in candidates
            if f"{path}.py" in files_of(name) or any(f.startswith(f"{path}/") for f in files_of(name))
        ]
    assert len(set(candidates)) == 1, f"{module} comes from {candidates}"
    return canonicalize_name(candidates[0])


def declared_distributions():
    """The distributions pyproject.toml names as dependencies or in an extra for users (not the test extra)."""
    requirements = list(PYPROJECT["dependencies"])
    for extra, more in PYPROJECT["optional-dependencies"].items():
        if extra != "test":
            requirements += more
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_every_imported_third_party_module_is_declared():
    """Each third-party module the package imports comes from a distribution pyproject.toml declares."""
    modules = third_party_modules()
    assert {"twisted", "treq", "zope", "prometheus_client", "orjson"} <= {m.split(".")[0] for m in modules}
    declared, top_level = declared_distributions(), packages_distributions()
    providers = {module: distribution_of(module, top_level) for module in modules}
    undeclared = sorted(f"{module} ({name})" for module, name in providers.items() if name not in declared)
    assert undeclared == []
