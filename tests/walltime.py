"""A walltime for tests of the job scripts, like GNU ``timeout --preserve-status``, that can end on progress.

    python tests/walltime.py [--signal SIG] [--foreground] [--after S] [--steps N --store STORE]
                             [--kill-after S] -- COMMAND ARGS...

runs COMMAND and sends it SIG (default TERM) at the walltime: ``--after`` S seconds, or as soon as
the coordinators started during this walltime have journaled ``--steps`` N steps of an experiment
in STORE (step lines in journal files that were not there when it began: each coordinator process
appends to files of its own), whichever comes first. As ``timeout``: without ``--foreground`` it
runs in a process group of its own and signals the whole group (a batch system's walltime or
``timeout``); with it, COMMAND alone (``#SBATCH --signal=B:USR1@...``: the batch shell alone);
SIGKILL follows ``--kill-after`` S later; the exit status is COMMAND's (a command killed by a
signal kills this process with it), and a TERM, INT or HUP sent to this process is passed on.

Why not ``timeout`` with a walltime scaled to the machine: a round's start-up (imports, a local
cluster) takes seconds on a quiet machine and tens of seconds under load, so that a walltime in
seconds cut one round after the runs had ended and let another finish everything at once. A
walltime in journaled steps cuts each round mid-run after the same progress, however loaded the
machine, which is what the tests assert (several rounds, each cut mid-run, then one that ends).
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import sys
import time


def journal_files(store: str) -> list[str]:
    return glob.glob(os.path.join(store, "experiments", "*", "journal", "*.jsonl"))


class NewSteps:
    """Step lines in the journal files of ``store`` that were not there at the start, read incrementally."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.old = set(journal_files(store))
        self.read_to: dict[str, int] = {}
        self.count = 0

    def __call__(self) -> int:
        for path in journal_files(self.store):
            if path in self.old:
                continue
            try:
                with open(path, "rb") as f:
                    f.seek(self.read_to.get(path, 0))
                    data = f.read()
            except FileNotFoundError:  # removed on completion
                continue
            whole = data[: data.rfind(b"\n") + 1]  # a line being appended is counted next time
            self.read_to[path] = self.read_to.get(path, 0) + len(whole)
            self.count += sum(1 for line in whole.splitlines() if b'"type": "step"' in line or b'"type":"step"' in line)
        return self.count


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--signal", default="TERM")
    ap.add_argument("--foreground", action="store_true")
    ap.add_argument("--after", type=float, default=3600.0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--store", default="")
    ap.add_argument("--kill-after", type=float, default=300.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    sig = signal.Signals["SIG" + a.signal.upper().removeprefix("SIG")]
    if not a.foreground and os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)  # as `timeout`: this process and COMMAND's are a group of their own
    steps = NewSteps(a.store) if a.steps else None
    proc = subprocess.Popen(command)
    sent: list[float] = []  # when the signal was sent

    def send(s: int) -> None:
        if a.foreground:
            proc.send_signal(s)
        else:
            signal.signal(s, signal.SIG_IGN)  # the group includes this process
            os.killpg(0, s)
        sent.append(time.monotonic())

    for passed in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(passed, lambda s, _frame: send(s))
    start = time.monotonic()
    while proc.poll() is None:
        if not sent and (time.monotonic() - start >= a.after or (steps is not None and steps() >= a.steps)):
            send(sig)
        if sent and time.monotonic() - sent[0] >= a.kill_after:
            proc.kill()
            if not a.foreground:
                os.killpg(0, signal.SIGKILL)
        time.sleep(0.05)
    rc = proc.returncode
    if rc < 0:  # killed by a signal: so is this process, as `timeout --preserve-status` does
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
