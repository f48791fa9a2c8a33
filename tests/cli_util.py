"""The CLI as users run it, in a process of its own, for tests.

``cli(*args)`` runs ``panicflow ARGS`` to the end. ``Running(args, tmp)`` starts it in a session of
its own (as a terminal's job or a batch system's job step), so that a signal sent to its process
group is what a terminal's Ctrl-C (SIGINT), a walltime (SIGTERM: SLURM, PBS, ``timeout``) or a
closed terminal (SIGHUP) send: ``run.signal(signal.SIGTERM)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def cli(*args: str, env: dict | None = None, cwd: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "panicflow", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def write_config(path: Path, config: dict) -> str:
    path.write_text(json.dumps(config))
    return str(path)


class Running:
    """``panicflow ARGS`` in a session of its own, so that a signal to its group is a terminal's or a batch system's."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None, cwd: str | None = None,
                 command: list[str] | None = None) -> None:
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                command or [sys.executable, "-m", "panicflow", *args], stdout=out, stderr=err, start_new_session=True,
                env={**os.environ, "COLUMNS": "200", **(env or {})}, cwd=cwd,
            )

    def children(self) -> list[str]:
        found = []
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                found += Path(f"/proc/{self.proc.pid}/task/{task}/children").read_text().split()
            except OSError:
                pass
        return found

    def wait_for(self, what: str, ready, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}: {self.err.read_text()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.01)

    def signal(self, sig: int) -> None:
        """``sig`` to the whole process group, as a terminal or a batch system sends it."""
        os.killpg(self.proc.pid, sig)

    def ctrl_c(self) -> None:
        self.signal(signal.SIGINT)

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        return code, self.out.read_text(), self.err.read_text()
