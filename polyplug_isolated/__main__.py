"""``python -m polyplug_isolated`` is the ``polyplug-isolated`` command (see _cli)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
