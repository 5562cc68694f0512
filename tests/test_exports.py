"""The public facade: every exported name exists, and nothing private leaks."""

import importlib

import txchanges

PUBLIC_MODULES = ["http.client", "feed.consumer", "errors", "service.checkpoint", "service", "testing", "metrics", "cli"]


def test_all_names_exist():
    """Every name in txchanges.__all__ is importable from the package."""
    for name in txchanges.__all__:
        assert getattr(txchanges, name) is not None


def test_no_private_names_exported():
    """No exported name starts with an underscore, and there are no duplicates."""
    assert not [n for n in txchanges.__all__ if n.startswith("_")]
    assert len(set(txchanges.__all__)) == len(txchanges.__all__)


def test_public_modules_declare_all():
    """Each public module declares __all__, and its names are defined there."""
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"txchanges.{module_name}")
        assert module.__all__, module_name
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_seed_imports():
    """The seed's imports work unchanged."""
    from txchanges import Consumer, Server  # noqa: F401
