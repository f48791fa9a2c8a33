"""`python -m panicflow` and the `panicflow` console script."""

import sys

from .cli import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
