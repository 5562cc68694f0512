"""The global reactor is imported only when a caller injected none, and only in one place."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "txchanges").rglob("*.py"))


def _run(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_every_module_installs_no_reactor():
    """Importing txchanges, each of its modules and the twistd plugin leaves the reactor uninstalled."""
    out = _run(
        "import pkgutil, sys, importlib, txchanges\n"
        "names = [m.name for m in pkgutil.walk_packages(txchanges.__path__, 'txchanges.')]\n"
        "for name in names + ['twisted.plugins.txchanges_plugin']:\n"
        "    importlib.import_module(name)\n"
        "print('twisted.internet.reactor' in sys.modules, *names)\n"
    )
    installed, *imported = out.split()
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in SOURCES}
    assert installed == "False" and set(imported) == modules - {"txchanges"}


def test_an_injected_clock_or_reactor_installs_no_reactor():
    """Objects built with an injected clock or reactor never import the global reactor; without one they use it."""
    out = _run(
        "import sys\n"
        "from twisted.internet.task import Clock\n"
        "from txchanges import Consumer, Server\n"
        "from txchanges.testing import FakeCouchDB\n"
        "clock = Clock()\n"
        "fake = FakeCouchDB(clock=clock)\n"
        "Consumer(Server(fake.url, http=fake.client())['db'], clock=clock)\n"
        "print('twisted.internet.reactor' in sys.modules)\n"
        "FakeCouchDB()\n"
        "print('twisted.internet.reactor' in sys.modules)\n"
    )
    assert out.split() == ["False", "True"]


def test_only_the_reactor_module_imports_the_global_reactor():
    """No module but txchanges/_reactor.py imports twisted.internet.reactor: the others call default_reactor()."""
    importers = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
                if any(alias.name == "reactor" for alias in node.names):
                    importers.append(path.name)
            elif isinstance(node, ast.Import) and any(a.name == "twisted.internet.reactor" for a in node.names):
                importers.append(path.name)
    assert importers == ["_reactor.py"]
