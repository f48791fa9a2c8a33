"""`python -m panicflow` and the `panicflow` console script."""

import signal
import sys

from .cli import main


def run() -> None:
    # outside main() a Ctrl-C has nothing left to stop: the command has finished and said so,
    # and Python would turn its exit status into death by SIGINT (main() handles Ctrl-C itself)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(main())


if __name__ == "__main__":
    run()
