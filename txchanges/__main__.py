"""
``python -m txchanges``: the ``txchanges`` command (see :mod:`txchanges.cli`).
"""

from txchanges.cli import main

if __name__ == "__main__":
    main()
