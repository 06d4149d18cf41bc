"""``python -m zq.bench``: see :mod:`bench.cli`."""

import sys

from zq.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
