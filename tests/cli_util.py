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


# sets SIGHUP's disposition (argv[1]: SIG_DFL or SIG_IGN), then becomes the command (argv[2:]): exec keeps it
HUP_LAUNCHER = "import os, signal, sys; signal.signal(signal.SIGHUP, getattr(signal, sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"


class Running:
    """``panicflow ARGS`` in a session of its own, so that a signal to its group is a terminal's or a batch system's."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None, cwd: str | None = None,
                 command: list[str] | None = None, sighup: str = "SIG_DFL") -> None:
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        # SIGHUP as a terminal's shell leaves it (SIG_DFL), whatever this process was started with: under
        # `nohup` (a suite started in the background) it is ignored, inherited, and panicflow, as it should,
        # leaves an ignored SIGHUP ignored; sighup="SIG_IGN" starts it as nohup does
        launch = [sys.executable, "-c", HUP_LAUNCHER, sighup]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [*launch, *(command or [sys.executable, "-m", "panicflow", *args])], stdout=out, stderr=err, start_new_session=True,
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
