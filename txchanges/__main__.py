"""
``python -m txchanges``: the ``txchanges`` command (see :mod:`txchanges._cli`).
"""

from ._cli import main

if __name__ == "__main__":
    main()
