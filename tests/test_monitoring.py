"""Monitoring that tells the truth (issue 20 items 3 and 4).

Item 3: the scheduler's /panicflow page, its JSON and /metrics show a coordinator that stopped
sending snapshots (killed) as ``stale`` within the threshold, with no frozen rate, and drop
experiments that ended after the retention; every metric the plugin exposes is documented in
docs/clusters.md, under the name /metrics gives it, and nothing else is.

Item 4: one estimate of the time left (panicflow/scheduler/eta.py) on every surface (terminal
bars, /panicflow, ``status --json``, the report page), and progress in steps first.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster_util import DaskCluster, child_env, stop_process
from panicflow.scheduler import dashboard, eta
from panicflow.scheduler.coordinator import Coordinator, Progress, RunState

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ eta.py
def test_eta_module_imports_only_the_standard_library():
    """Every surface imports it (the scheduler, the CLI, a report server): nothing heavy."""
    tree = ast.parse((ROOT / "panicflow" / "scheduler" / "eta.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "math", "collections", "typing"}, imported


SNAP = {"runs": 32, "runs_failed": 0, "invocations": 3000, "invocations_by_model": {"T2I": 1500, "I2T": 1500},
        "invocations_max": 3200, "invocations_max_by_model": {"T2I": 1600, "I2T": 1600},
        "embeddings": {"Text": 2, "Vision": 0}, "persistence_diagrams": {"Text": 0, "Vision": 0}}


def test_work_left_per_stage_and_model():
    assert eta.work_left(SNAP) == {"invocations": {"T2I": 100, "I2T": 100},
                                   "embeddings": {"Text": 30, "Vision": 32},
                                   "diagrams": {"Text": 32, "Vision": 32}}
    failed = {**SNAP, "runs_failed": 2}  # a failed run is not embedded; its diagram is recorded at once
    assert eta.work_left(failed)["embeddings"] == {"Text": 28, "Vision": 30}
    old = {k: v for k, v in SNAP.items() if k != "invocations_max_by_model"}  # a snapshot without per-model maxima
    assert eta.work_left(old)["invocations"] == {"all": 200}


def test_stages_wait_on_the_stage_before_and_unknown_rates_are_not_guessed():
    left = eta.work_left(SNAP)
    rates = {"invocations": {"T2I": 10.0, "I2T": 10.0}, "embeddings": {"Text": 0.5, "Vision": 2.0},
             "diagrams": {"Text": 0.25, "Vision": 0.0}}
    e = eta.estimate(left, rates)
    inv, emb, dia = (e["stages"][s] for s in eta.STAGES)
    assert (inv["seconds_left"], inv["per_second"], inv["left"], inv["partial"]) == (10.0, 20.0, 200, False)
    assert emb["by_model"]["Text"]["seconds_left"] == 60.0  # 30 runs at 0.5/s
    assert emb["by_model"]["Vision"]["seconds_left"] == 16.0  # 32 at 2/s, no sooner than the steps' 10 s
    assert dia["by_model"]["Text"] == {"left": 32, "per_second": 0.25, "seconds_left": 128.0, "partial": False}
    # Vision's diagrams have work left and no rate (0 in the window): a lower bound, named, not a number made up
    assert dia["by_model"]["Vision"] == {"left": 32, "per_second": None, "seconds_left": 16.0, "partial": True}
    assert (e["seconds_left"], e["partial"], e["unknown"]) == (128.0, True, ["diagrams"])
    assert eta.describe(e) == "at least 2m 08s left (no rate yet: diagrams)"
    assert eta.describe(e, "invocations") == "about 10s left" and eta.brief(e, "embeddings", "Text") == "~1m 00s"
    assert eta.brief(e, "diagrams", "Vision") == "≥16s"

    # when the steps go slower than the embedders could, the embedders wait on them
    slow = eta.estimate(left, {**rates, "invocations": {"T2I": 0.5, "I2T": 0.5}})
    assert slow["stages"]["embeddings"]["by_model"]["Vision"]["seconds_left"] == 200.0

    # before any rate: nothing known, nothing invented
    none = eta.estimate(left, {})
    assert (none["seconds_left"], none["partial"], none["unknown"]) == (None, True, list(eta.STAGES))
    assert eta.describe(none) == "unknown (no rate yet: invocations, embeddings, diagrams)" and eta.brief(none) == "?"

    done = {**SNAP, "invocations_by_model": SNAP["invocations_max_by_model"], "embeddings": {"Text": 32, "Vision": 32},
            "persistence_diagrams": {"Text": 32, "Vision": 32}}
    finished = eta.estimate(eta.work_left(done), {})
    assert (finished["seconds_left"], finished["partial"], eta.describe(finished)) == (0.0, False, "done")
    assert eta.for_state(finished, "complete") == "done" and eta.for_state(none, "interrupted") == "not running (interrupted)"


def test_window_rates_per_stage_over_the_last_snapshots():
    w = eta.Window(window_s=10.0)
    w.add(100.0, {"invocations_by_model": {"A": 0}, "embeddings": {"E": 0}, "persistence_diagrams": {"E": 0}})
    w.add(101.0, {"invocations_by_model": {"A": 5}, "embeddings": {"E": 0}, "persistence_diagrams": {"E": 0}})
    assert w.rates() == {}  # under MIN_SPAN_S: no rate yet
    w.add(104.0, {"invocations_by_model": {"A": 20}, "embeddings": {"E": 2}, "persistence_diagrams": {"E": 1}})
    assert w.rates() == {"invocations": {"A": 5.0}, "embeddings": {"E": 0.5}, "diagrams": {"E": 0.25}}
    for t in range(105, 130):
        w.add(float(t), {"invocations_by_model": {"A": 20}, "embeddings": {"E": 2}, "persistence_diagrams": {"E": 1}})
    assert w.rates()["invocations"] == {"A": 0.0}  # the old samples left the window: stalled reads 0, not 5
    assert eta.rates_from_counts({"invocations": {"A": 30}}, 60.0) == {"invocations": {"A": 0.5}}
    assert eta.rates_from_counts({"invocations": {"A": 30}}, 1.0) == {}


# ------------------------------------------------------------------ coordinator snapshot
def _coordinator(runs: list[RunState], models: list[str]) -> Coordinator:
    c = Coordinator.__new__(Coordinator)  # only what snapshot reads
    c.config = SimpleNamespace(embedding_models=models)
    c.runs = runs
    c.invocations_by_model = Counter()
    c.diagram_outcomes = defaultdict(Counter)
    return c


def test_snapshot_gives_invocations_at_most_per_model():
    """A run going may make max_length steps, one that ended made its length; step k calls network[k % len]."""
    from panicflow.config import RunSpec
    from panicflow.store.experiment import RunEnd

    nets = [("T2I", "I2T"), ("T2I", "I2T", "T2T"), ("T2I",)]
    runs = []
    for i in range(60):
        st = RunState(RunSpec(i, nets[i % 3], i, "p"), 11)
        if i % 4:
            st.end = RunEnd(1 + i % 11, ["length", "loop", "failed"][i % 3])
            st.embedded = {"E"} if i % 2 else set()
        runs.append(st)
    snap = _coordinator(runs, ["E"]).snapshot()
    want: Counter[str] = Counter()
    for st in runs:
        for step in range(st.end.length if st.end else st.max_length):
            want[st.spec.network[step % len(st.spec.network)]] += 1
    assert snap.invocations_max_by_model == dict(want)
    assert snap.invocations_max == sum(want.values())
    assert snap.runs_ended == 45 and snap.embeddings == {"E": sum(1 for st in runs if st.embedded)}
    assert snap.runs_to_embed == 60 - snap.stop_reasons["failed"]
    assert dashboard.snapshot_dict(snap)["invocations_max_by_model"] == dict(want)


def test_snapshot_keys_are_names_of_status_json():
    """The rule that lets one set of names serve every view: what the page publishes is what
    `experiment status --json` prints (task_failures: counted by neither yet)."""
    from dataclasses import fields

    from panicflow.api import ExperimentStatus

    names = {f.name for f in fields(ExperimentStatus)}
    assert set(dashboard.SNAPSHOT_KEYS) - {"task_failures"} <= names
    assert {"invocations_max", "invocations_max_by_model", "eta"} <= names


# ------------------------------------------------------------------ terminal bars
def test_terminal_bars_show_steps_first_and_the_shared_estimate():
    from rich.console import Console
    from rich.progress import Progress as RichProgress

    from panicflow import cli

    bars = cli._Bars(enabled=False)
    models = {"T2I": 1600, "I2T": 1600}

    def snap(done: int) -> Progress:
        return Progress(runs=32, runs_ended=3, invocations=2 * done, invocations_max=3200, embeddings={"Text": 0},
                        diagrams={"Text": 0}, stop_reasons={"length": 3}, runs_to_embed=32,
                        invocations_by_model={"T2I": done, "I2T": done}, invocations_max_by_model=models)

    first = bars.rows(snap(1400), now=0.0)
    assert list(first)[:2] == ["steps (invocations)", "runs"]  # steps first: runs end in waves
    assert first["steps (invocations)"] == (2800, 3200, "? left")
    rows = bars.rows(snap(1500), now=10.0)  # 20 steps a second: 200 left
    assert rows["steps (invocations)"] == (3000, 3200, "~10s left") and rows["runs"] == (3, 32, "~10s left")
    assert rows["embeddings Text"] == (0, 32, "≥10s left")  # no run embedded yet: no rate, a lower bound
    assert bars.eta == eta.estimate(eta.work_left(dashboard.snapshot_dict(snap(1500))), bars.window.rates())

    # the column renders what rows gave (rich's TimeRemainingColumn knows one bar only)
    console = Console(record=True, width=140, force_terminal=False)
    bars.progress = RichProgress(*cli._Bars.columns(), console=console)
    bars.update(snap(1500))
    console.print(bars.progress.get_renderable())
    text = console.export_text()
    assert "steps (invocations)" in text and "left" in text
    assert text.index("steps (invocations)") < text.index("runs")


# ------------------------------------------------------------------ the plugin: stale, retention, metrics
def _running(eid: str, plugin: dashboard.ProgressPlugin, t: float, done: int) -> None:
    exp = plugin.experiments.setdefault(eid, dashboard._Experiment())
    exp.add(t, {**SNAP, "name": "n", "state": "running", "invocations": 2 * done,
                "invocations_by_model": {"T2I": done, "I2T": done}})


def test_a_silent_coordinator_shows_stale_with_no_frozen_rate_and_leaves_after_the_retention():
    plugin = dashboard.ProgressPlugin(stale_s=30, retention_s=3600)
    for t in range(100, 111):
        _running("e", plugin, float(t), 1400 + 10 * (t - 100))
    live = plugin.view(now=111.0)["e"]
    assert live["state"] == "running" and live["invocations_per_second"]["all"] == 20.0
    assert live["eta"]["stages"]["invocations"]["seconds_left"] == 10.0  # 100 steps left per model, 10/s each

    later = plugin.view(now=110.0 + 30.0)["e"]  # no snapshot for 30 s: killed (or cut off)
    assert later["state"] == "stale" and later["invocations_per_second"] == {}
    assert later["eta"]["seconds_left"] is None and later["seconds_since_update"] == 30.0
    assert "stale" in dashboard.render_page({"e": later}) and "not running (stale)" in dashboard.render_page({"e": later})

    ended = dashboard._Experiment()
    ended.add(100.0, {**SNAP, "state": "complete"})
    plugin.experiments["done"] = ended
    assert set(plugin.view(now=100.0 + 3599)) == {"e", "done"}
    assert plugin.view(now=110.0 + 3600) == {}  # both ended (stale counts) longer ago than the retention

    running = dashboard.ProgressPlugin(stale_s=1e9, retention_s=10)  # a running one never leaves
    _running("r", running, 0.0, 1)
    assert set(running.view(now=1e6)) == {"r"}


def test_a_coordinator_back_after_a_gap_measures_its_rates_afresh():
    plugin = dashboard.ProgressPlugin(stale_s=30, retention_s=3600)
    for t in (100.0, 101.0, 102.0):
        _running("e", plugin, t, 100)
    for t in (1000.0, 1001.0, 1003.0):  # resumed much later, 900 steps on
        _running("e", plugin, t, 1000)
    assert plugin.view(now=1003.0)["e"]["invocations_per_second"]["all"] == 0.0  # not 1800 steps over 900 s


def test_the_retention_and_stale_threshold_are_settings_read_on_the_scheduler(monkeypatch):
    import dask

    scheduler = SimpleNamespace(http_application=None)
    with dask.config.set({"panicflow.progress-stale": "5s", "panicflow.progress-retention": "2 minutes"}):
        plugin = dashboard.ProgressPlugin()
        asyncio.run(plugin.start(scheduler))
    assert (plugin.stale_s, plugin.retention_s) == (5.0, 120.0)
    given = dashboard.ProgressPlugin(stale_s=1, retention_s=2)
    asyncio.run(given.start(scheduler))
    assert (given.stale_s, given.retention_s) == (1.0, 2.0)
    with dask.config.set({"panicflow.progress-stale": "soon"}):  # a bad value: logged, the default used
        bad = dashboard.ProgressPlugin()
        asyncio.run(bad.start(scheduler))
    assert bad.stale_s == dashboard.STALE_S
    from panicflow import settings

    assert (settings.setting("progress-stale").default, settings.setting("progress-retention").default) == (
        dashboard.STALE_S, dashboard.RETENTION_S)


def _exposed(plugin: dashboard.ProgressPlugin) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class Collector:
        def collect(self):
            return plugin.metrics()

        def describe(self):
            return []

    registry = CollectorRegistry()
    registry.register(Collector())
    return generate_latest(registry).decode()


def _documented() -> set[str]:
    text = (ROOT / "docs" / "clusters.md").read_text()
    section = text[text.index("## Progress on the scheduler's dashboard"):]
    section = section[:section.index("\n## ", 5)]
    table = section[section.index("**Metrics**"):]
    return set(re.findall(r"^\| `(panicflow_[a-z_]+)` \|", table, re.M))


def test_every_metric_exposed_is_documented_and_every_documented_metric_is_exposed(monkeypatch):
    """Under the names /metrics gives them: the Prometheus client adds _total to counters
    (panicflow_task_failures_total was exposed and undocumented)."""
    monkeypatch.setattr(dashboard.time, "time", lambda: 111.0)
    plugin = dashboard.ProgressPlugin(stale_s=30, retention_s=3600)
    for t in range(100, 111):
        _running("e", plugin, float(t), 1400 + 10 * (t - 100))
    plugin.experiments["e"].snapshot.update(task_failures=2, runs_complete=0)  # every metric has a sample
    text = _exposed(plugin)
    exposed = set(re.findall(r"^# TYPE (panicflow_\w+) ", text, re.M))
    sampled = set(re.findall(r"^(panicflow_\w+)\{", text, re.M))
    assert sampled == exposed == set(dashboard.exposed_metric_names()), exposed ^ sampled
    assert "panicflow_task_failures_total" in exposed and "panicflow_invocations_total" in exposed
    assert _documented() == exposed, {"undocumented": exposed - _documented(), "not exposed": _documented() - exposed}


def test_metrics_carry_the_state_and_drop_rates_when_stale(monkeypatch):
    plugin = dashboard.ProgressPlugin(stale_s=30, retention_s=3600)
    now = [110.0]
    monkeypatch.setattr(dashboard.time, "time", lambda: now[0])
    for t in range(100, 111):
        _running("e", plugin, float(t), 1400 + 10 * (t - 100))
    text = _exposed(plugin)
    assert 'panicflow_state{experiment="e",state="running"} 1.0' in text
    assert 'panicflow_state{experiment="e",state="stale"} 0.0' in text
    assert 'panicflow_invocations_per_second{experiment="e",model="all"} 20.0' in text
    assert 'panicflow_invocations_max{experiment="e",model="T2I"} 1600.0' in text
    assert re.search(r'panicflow_eta_seconds\{experiment="e"\} \d', text)
    assert 'panicflow_last_update_seconds{experiment="e"} 110.0' in text
    now[0] = 140.0
    text = _exposed(plugin)
    assert 'panicflow_state{experiment="e",state="stale"} 1.0' in text
    assert 'panicflow_state{experiment="e",state="running"} 0.0' in text
    assert "panicflow_invocations_per_second{" not in text and "panicflow_eta_seconds{" not in text
    now[0] = 110.0 + 3600
    assert 'experiment="e"' not in _exposed(plugin)


def test_the_page_shows_steps_first_and_the_time_left():
    plugin = dashboard.ProgressPlugin(stale_s=30, retention_s=3600)
    for t in range(100, 111):
        _running("e", plugin, float(t), 1400 + 10 * (t - 100))
    page = dashboard.render_page(plugin.view(now=111.0))
    rows = re.findall(r"<tr><th>([^<]+)</th>", page)
    assert rows[:3] == ["state", "steps (invocations)", "time left"], rows
    assert "3000 of at most 3200 (94%)" in page
    assert "at least 10s left (no rate yet: embeddings, diagrams)" in page


# ------------------------------------------------------------------ on a real cluster
SLOW = {"name": "killed", "networks": [["SleepT2I", "DummyI2T"]], "seeds": [-1], "prompts": ["a cat", "a dog"],
        "embedding_models": ["DummyText"], "max_length": 400}
STALE_S, RETENTION_S = 3, 8


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read().decode())


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def _until(what: str, check, timeout: float, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every)


@pytest.mark.skipif(os.name != "posix", reason="process groups, SIGKILL")
def test_a_killed_coordinator_shows_stale_then_leaves_the_page_and_the_metrics(tmp_path):
    """A `dask scheduler` started by hand (its stale threshold and retention shortened in its
    environment, as a user would), a coordinator SIGKILLed mid-run: its experiment reads stale on
    /panicflow/json and /metrics within the threshold, with no rate, then leaves both after the
    retention. While it ran, the page and `status --json` (a separate process, rates from the
    store) gave steps at most and a time left from the same estimate."""
    env = child_env(DASK_PANICFLOW__PROGRESS_STALE=str(STALE_S), DASK_PANICFLOW__PROGRESS_RETENTION=str(RETENTION_S),
                    PANICFLOW_TEST_SLEEP_S="0.2")
    (tmp_path / "slow.json").write_text(json.dumps(SLOW))
    store = str(tmp_path / "store")
    with DaskCluster(1, nthreads=2, env=env) as cluster:
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "panicflow", "experiment", "run", str(tmp_path / "slow.json"), "--store", store,
             "--scheduler", cluster.address, "--json"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            page = cluster.dashboard + "/panicflow/json"

            def measured():  # running, with a rate over the window and an estimate for the steps
                assert coordinator.poll() is None, coordinator.stdout.read().decode()[-3000:]
                try:
                    view = _json(page)
                except urllib.error.HTTPError:  # 404 until the coordinator registered the plugin
                    return None
                v = next(iter(view.values()), None)
                return v if v and v["eta"]["stages"]["invocations"]["per_second"] else None

            v = _until("the experiment on /panicflow/json with a rate", measured, 180)
            eid = next(iter(_json(page)))
            assert v["state"] == "running" and v["invocations_max_by_model"] == {"SleepT2I": 400, "DummyI2T": 400}
            assert v["invocations_max"] == 800 and v["eta"]["seconds_left"] > 0
            assert v["eta"]["partial"] and "embeddings" in v["eta"]["unknown"]  # no run ended: no embedding rate

            status = subprocess.run([sys.executable, "-m", "panicflow", "experiment", "status", eid, "--store", store,
                                     "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert status.returncode == 0, status.stderr
            s = json.loads(status.stdout)
            assert s["state"] == "running" and s["invocations_max_by_model"] == {"SleepT2I": 400, "DummyI2T": 400}
            inv = s["eta"]["stages"]["invocations"]
            assert inv["per_second"] > 0 and inv["left"] == 800 - s["invocations"] and inv["seconds_left"] > 0
            assert s["eta"]["partial"] and s["eta"]["unknown"] == ["embeddings", "diagrams"]
            assert s["eta"]["seconds_left"] == inv["seconds_left"]  # a lower bound: the steps' time
            metrics = _text(cluster.dashboard + "/metrics")
            assert f'panicflow_state{{experiment="{eid}",state="running"}} 1.0' in metrics
            assert f'panicflow_invocations_per_second{{experiment="{eid}",model="all"}}' in metrics
        finally:
            stop_process(coordinator, timeout=0, sig=signal.SIGKILL)  # no final snapshot: the plugin must see the silence
            killed = time.monotonic()

        def stale():
            v = _json(page).get(eid)
            return v if v and v["state"] == "stale" else None

        v = _until("stale on /panicflow/json", stale, STALE_S + 10, every=0.2)
        assert time.monotonic() - killed <= STALE_S + 1 + 6  # its threshold, a publish interval, this loaded machine
        assert v["invocations_per_second"] == {} and v["eta"]["seconds_left"] is None
        metrics = _text(cluster.dashboard + "/metrics")
        assert f'panicflow_state{{experiment="{eid}",state="stale"}} 1.0' in metrics
        assert f'panicflow_state{{experiment="{eid}",state="running"}} 0.0' in metrics
        assert f'panicflow_last_update_seconds{{experiment="{eid}"}}' in metrics
        assert f'panicflow_invocations_per_second{{experiment="{eid}"' not in metrics
        assert f'panicflow_eta_seconds{{experiment="{eid}"' not in metrics
        assert "stale" in _text(cluster.dashboard + "/panicflow")

        last = v["updated"]
        _until("gone from /panicflow/json", lambda: eid not in _json(page), RETENTION_S + 15, every=0.5)
        assert time.time() - last >= RETENTION_S - 0.5  # not before the retention
        assert f'experiment="{eid}"' not in _text(cluster.dashboard + "/metrics")
        assert eid not in _text(cluster.dashboard + "/panicflow")
