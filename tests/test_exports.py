"""The public facade: every exported name is its module's own object, documented, and listed once."""

import importlib
import inspect
import pkgutil
import pydoc

import txchanges
from txchanges import errors

PUBLIC_MODULES = ["http.client", "feed.consumer", "errors", "service.checkpoint", "service", "service.shard", "testing", "metrics", "cli"]

#: Every module of the package, private ones and subpackages' included, by name below txchanges.
MODULES = {
    info.name.removeprefix("txchanges."): importlib.import_module(info.name)
    for info in pkgutil.walk_packages(txchanges.__path__, "txchanges.")
}


def test_every_name_is_the_object_its_module_declares():
    """Each name in txchanges.__all__ is declared in some module's __all__, and is that very object."""
    for name in txchanges.__all__:
        declaring = [m for m in MODULES.values() if name in getattr(m, "__all__", ())]
        assert declaring, f"no module declares {name} in its __all__"
        for module in declaring:
            assert getattr(txchanges, name) is getattr(module, name), f"txchanges.{name} is not {module.__name__}.{name}"


def test_all_is_public_and_lists_each_name_once():
    """No exported name starts with an underscore, and none is listed twice."""
    assert not [n for n in txchanges.__all__ if n.startswith("_")]
    assert sorted(set(txchanges.__all__)) == sorted(txchanges.__all__)


def test_every_exception_is_exported():
    """Every TxChangesError subclass a module defines is exported by the package, errors.__all__ included."""
    defined = {
        obj
        for module in MODULES.values()
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, errors.TxChangesError) and obj.__module__.startswith("txchanges.")
    }
    exported = {getattr(txchanges, name) for name in txchanges.__all__}
    assert defined <= exported, sorted(c.__name__ for c in defined - exported)
    assert set(errors.__all__) <= set(txchanges.__all__)


def test_public_modules_declare_all():
    """Each public module declares __all__, once each, and its names are defined there."""
    for module_name in PUBLIC_MODULES:
        module = MODULES[module_name]
        assert module.__all__, module_name
        assert len(set(module.__all__)) == len(module.__all__), module_name
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_every_public_class_and_function_has_a_docstring():
    """Each class or function exported by the package or a public module has a docstring of its own."""
    undocumented = []
    for module in [txchanges, *(MODULES[name] for name in PUBLIC_MODULES)]:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                doc = vars(obj).get("__doc__")  # its own, not a base class's
            elif inspect.isfunction(obj):
                doc = obj.__doc__
            else:
                continue  # data (STATES) and type aliases carry no docstring of their own
            if not (doc or "").strip() or doc.startswith(f"{obj.__name__}("):  # a dataclass' made-up one
                undocumented.append(f"{module.__name__}.{name}")
    assert undocumented == []


def test_help_opens_with_the_overview_of_the_public_api():
    """help(txchanges) shows the overview first, right after the name, and before the list of modules."""
    text = pydoc.render_doc(txchanges, renderer=pydoc.plaintext)
    description = text.index("DESCRIPTION\n")
    assert text.index("NAME\n") < description < text.index("What to use for what:") < text.index("PACKAGE CONTENTS\n")
    assert text.split("DESCRIPTION\n")[1].lstrip().startswith("Every public name is importable from this package")


def test_the_overview_names_every_public_class():
    """The package docstring names each exported class but the errors, which it covers as TxChangesError's subclasses."""
    named = {name for name in txchanges.__all__ if f"``{name}``" in txchanges.__doc__}
    assert set(txchanges.__all__) - set(errors.__all__) <= named and "TxChangesError" in named


def test_seed_imports():
    """The seed's imports work unchanged."""
    from txchanges import Consumer, Server  # noqa: F401
