"""How long a command takes to start (issue 21 item 1): `panicflow --version`, `--help`,
`experiment status ID --json` and `experiment list --json`, against `python -c pass`.

Each command runs N times in fresh processes, the commands interleaved (one round runs each once,
in a shuffled order), so that a load that comes and goes touches all of them alike; the table
gives the median and the minimum wall time per command and what it adds to `python -c pass`.
`status` and `list` read a small store made first through the API (two experiments of the
dummy models, run to the end on a LocalCluster of one worker), or ``--store S --id ID``.

With ``--compare DIR`` every command also runs with the panicflow of another checkout
(``git worktree add /tmp/startbase <commit>``; put first on PYTHONPATH), in the same rounds, so
before and after come from one run:

    .venv/bin/python scripts/benchmark_startup.py --repeat 20 --compare /tmp/startbase
    .venv/bin/python scripts/benchmark_startup.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = {
    "name": "startup",
    "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]],
    "seeds": [7, -1],
    "prompts": ["a red balloon over the sea", "an old lighthouse at night"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 30,
    "persistence": {"maxdim": 1},
}

MAKE_STORE = """
import json, sys
import panicflow
store, config = sys.argv[1], json.loads(sys.argv[2])
ids = [panicflow.run_experiment(config, store=store, workers=1, dashboard_address=":0") for _ in range(2)]
print(ids[-1])
"""


def _env(code: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH", "")) if p)
    return env


def _console_script() -> list[str]:
    """The `panicflow` console script of this interpreter's environment (what users run), else `-m`."""
    script = os.path.join(os.path.dirname(sys.executable), "panicflow")
    return [sys.executable, script] if os.path.exists(script) else [sys.executable, "-m", "panicflow"]


def _which(code: str, cwd: str) -> str:
    """The panicflow that ``code`` on PYTHONPATH gives: checked, so that --compare compares what it says."""
    out = subprocess.run([sys.executable, "-c", "import panicflow, os; print(os.path.dirname(panicflow.__file__))"],
                         capture_output=True, text=True, env=_env(code), cwd=cwd, check=True)
    return out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15, help="runs of each command (default 15)")
    ap.add_argument("--compare", metavar="DIR", help="a checkout whose panicflow also runs, in the same rounds")
    ap.add_argument("--store", help="an existing store for status and list (default: a new small one)")
    ap.add_argument("--id", dest="experiment_id", help="with --store: the experiment `status` reads")
    ap.add_argument("--quick", action="store_true", help="3 runs each: a dry run of the script")
    ap.add_argument("--json", action="store_true", help="also print every time measured, as JSON")
    args = ap.parse_args()
    repeat = 3 if args.quick else args.repeat
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    codes = ([("before", os.path.abspath(args.compare))] if args.compare else []) + [("after" if args.compare else "this", here)]

    with tempfile.TemporaryDirectory(prefix="panicflow-startup-") as tmp:
        for label, code in codes:
            found = _which(code, tmp)
            if os.path.dirname(found) != code:
                sys.exit(f"{label}: PYTHONPATH={code} imports panicflow from {found}, not from {code}")
        store, eid = args.store, args.experiment_id
        if store is None:
            store = os.path.join(tmp, "store")
            t = time.monotonic()
            eid = subprocess.run([sys.executable, "-c", MAKE_STORE, store, json.dumps(CONFIG)], capture_output=True,
                                 text=True, env=_env(here), cwd=tmp, check=True).stdout.strip().splitlines()[-1]
            print(f"store {store}: 2 experiments of {len(CONFIG['networks']) * len(CONFIG['seeds']) * len(CONFIG['prompts'])} "
                  f"runs made in {time.monotonic() - t:.0f} s; status reads {eid}", file=sys.stderr)
        elif eid is None:
            sys.exit("--store needs --id")

        panicflow = _console_script()
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], [None]),
            "panicflow --version": ([*panicflow, "--version"], codes),
            "panicflow --help": ([*panicflow, "--help"], codes),
            "panicflow experiment status ID --json": ([*panicflow, "experiment", "status", eid, "--store", store, "--json"], codes),
            "panicflow experiment list --json": ([*panicflow, "experiment", "list", "--store", store, "--json"], codes),
        }
        jobs = [(name, label, argv, code) for name, (argv, where) in commands.items()
                for label, code in ([("", None)] if where == [None] else where)]
        times: dict[tuple[str, str], list[float]] = {(name, label): [] for name, label, _, _ in jobs}
        outputs: dict[tuple[str, str], str] = {}
        rng = random.Random(0)
        for _ in range(repeat):
            order = list(jobs)
            rng.shuffle(order)
            for name, label, argv, code in order:
                t = time.perf_counter()
                proc = subprocess.run(argv, capture_output=True, text=True, env=_env(code), cwd=tmp)
                times[(name, label)].append(time.perf_counter() - t)
                if proc.returncode != 0:
                    sys.exit(f"{name} ({label or 'python'}) exited {proc.returncode}: {proc.stderr[-2000:]}")
                outputs[(name, label)] = proc.stdout

    for name in commands:  # before and after say the same
        said = {outputs[(n, label)] for n, label in outputs if n == name}
        if len(said) > 1 and name != "panicflow --help":
            print(f"note: {name}: the checkouts print different output", file=sys.stderr)

    base_median = statistics.median(times[("python -c pass", "")])
    base_min = min(times[("python -c pass", "")])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{repeat} runs per command, interleaved; {os.cpu_count()} cores, load average {load:.1f} at the end; "
          f"{sys.executable} (Python {sys.version.split()[0]})\n")
    print("| command | code | median s | min s | median - `python -c pass` s | min - `python -c pass` s |")
    print("|---|---|---|---|---|---|")
    for (name, label), ts in times.items():
        med, low = statistics.median(ts), min(ts)
        extra = ("", "") if name == "python -c pass" else (f"{med - base_median:.3f}", f"{low - base_min:.3f}")
        print(f"| `{name}` | {label} | {med:.3f} | {low:.3f} | {extra[0]} | {extra[1]} |")
    if args.json:
        print(json.dumps({f"{name} [{label}]": [round(t, 4) for t in ts] for (name, label), ts in times.items()}))


if __name__ == "__main__":
    main()
