"""How long the test suite takes (issue 21 item 2): this checkout's `scripts/test` against another
checkout's, one after the other in one run, on the same machine and virtualenv.

    git worktree add /tmp/suitebase 0ffc7a1        # the checkout before
    .venv/bin/python scripts/benchmark_suite.py --before /tmp/suitebase --out /tmp/suite-bench

Each checkout's own test command runs as its `scripts/test` gives it (its `exec ... pytest ...`
line, with ``--durations=0`` added so that every test's time is reported) in the checkout's own
.venv (a fresh clone after its `scripts/bootstrap`), else this interpreter's, without the
bootstrap step: PYTHONPATH puts the checkout's own panicflow first, for the
processes the tests start too, and the virtualenv's editable install is left alone. ``--after DIR``
times another checkout than this one (a fresh clone, say). The table gives the wall time, the tests that
passed, failed and were deselected, and the 20 slowest tests of each (call + setup + teardown),
as Markdown on stdout; each run's full log is in --out.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DURATION = re.compile(r"^\s*([0-9.]+)s (call|setup|teardown)\s+(\S+)")
SUMMARY = re.compile(r"(\d+) (passed|failed|deselected|skipped|errors?)")


def pytest_command(checkout: Path) -> list[str]:
    """The pytest command line of the checkout's scripts/test, with its own .venv's python or this one."""
    line = next(l for l in (checkout / "scripts" / "test").read_text().splitlines() if l.startswith("exec ") and "pytest" in l)
    words = shlex.split(line.removeprefix("exec ").replace('"$@"', ""))
    # the process count as the script computes it: $PANICFLOW_TEST_PROCESSES, else its default
    default = str(os.cpu_count() + 1) if "nproc" in line else "auto"
    words = [re.sub(r"\$\{PANICFLOW_TEST_PROCESSES:-.*\}", os.environ.get("PANICFLOW_TEST_PROCESSES", default), w) for w in words]
    own = checkout / ".venv" / "bin" / "python"  # a fresh clone's own virtualenv, made by its bootstrap
    return [str(own) if own.exists() else sys.executable, *words[words.index("-m"):]]


def run_suite(checkout: Path, log: Path, extra: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH", "")) if p)}
    command = [*pytest_command(checkout), "--durations=0", *extra]
    t0 = time.monotonic()
    with open(log, "w") as out:
        print(" ".join(command), file=out, flush=True)
        rc = subprocess.run(command, cwd=checkout, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.monotonic() - t0
    text = log.read_text(errors="replace")
    per_test: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        m = DURATION.match(line)
        if m:
            per_test[m.group(3)] += float(m.group(1))
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    counts = {k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in SUMMARY.findall(tail)}
    return {"rc": rc, "wall": wall, "counts": counts, "per_test": dict(per_test), "tail": tail, "command": command}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a checkout of the commit before (git worktree add DIR COMMIT)")
    ap.add_argument("--after", default=str(HERE), help="the checkout after (default: this one)")
    ap.add_argument("--out", default="/tmp/suite-bench", help="folder for the two logs")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments for both runs (after --)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, checkout in (("before", Path(a.before).resolve()), ("after", Path(a.after).resolve())):
        print(f"{name}: {checkout} ...", file=sys.stderr, flush=True)
        runs[name] = run_suite(checkout, out / f"{name}.log", a.pytest_args)
        r = runs[name]
        print(f"{name}: {r['wall']:.0f} s, {r['tail']}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"Measured one after the other on {os.cpu_count()} cores (load average at the end {load[0]:.1f}).\n")
    for name, r in runs.items():
        print(f"- {name}: `{' '.join(r['command'][1:])}`")
    print()
    print("| suite | wall s | wall | passed | failed | deselected | sum of test times s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        c = r["counts"]
        m, s = divmod(int(round(r["wall"])), 60)
        print(f"| {name} | {r['wall']:.0f} | {m}:{s:02d} | {c.get('passed', 0)} | {c.get('failed', 0) + c.get('error', 0)} "
              f"| {c.get('deselected', 0)} | {sum(r['per_test'].values()):.0f} |")
    for name, r in runs.items():
        print(f"\n{a.top} slowest, {name} (s, call + setup + teardown):\n")
        print("| s | test |\n|---|---|")
        for test, sec in sorted(r["per_test"].items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"| {sec:.1f} | `{test}` |")
    return 0 if all(r["rc"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
