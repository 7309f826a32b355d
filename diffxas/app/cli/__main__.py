"""``python -m diffxas.app.cli ...``: the command line, as the ``diffxas`` console script runs it."""

import sys

from diffxas.app.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
