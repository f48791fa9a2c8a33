"""The non-blocking API (issue 20 item 7): submit_experiment / submit_resume and their handle.

What must hold: the id is there when submit returns and errors before the experiment exists raise
from submit; the handle is a future (result, exception, done, done callbacks, cancel -> Interrupted
and a resume finishes it); two run at once; a handle dropped is stopped gracefully when the
interpreter exits; in a Jupyter kernel a table shows and really updates (update_display_data) and
ends showing the final state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import panicflow
from panicflow.errors import ConfigError, Interrupted, RunsFailed, StoreError, UserError
from panicflow.handle import ExperimentHandle, render_html, running
from panicflow.store import Store
from panicflow.store.lease import current_holder

# SleepT2I sleeps 0.2 s a call on the session cluster's workers: 20 calls a run here, about 5 s in all
SLOW = {
    "networks": [["SleepT2I", "DummyI2T"]],
    "seeds": [1, 2],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText"],
    "max_length": 40,
    "batch_size": {"SleepT2I": 1, "DummyI2T": 1},
}
POISON = {
    "networks": [["PoisonT2I", "DummyI2T"]],
    "seeds": [5],
    "prompts": ["a poison apple", "a fine apple"],
    "embedding_models": ["DummyText"],
    "max_length": 4,
    "retry": {"max_attempts": 2, "backoff_s": 0.01},
}


def wait_for(what: str, predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def released(store: str, eid: str) -> bool:
    exp = Store(store).experiment(eid)
    return current_holder(exp.root, exp.prefix) is None


def test_submit_returns_the_id_at_once_and_result_waits_for_the_end(client, store_dir):
    h = panicflow.submit_experiment(SLOW, store=store_dir, client=client)
    assert isinstance(h, ExperimentHandle) and h in running()
    assert not h.done() and h.running()
    assert h.id in [e["id"] for e in panicflow.list_experiments(store_dir)]  # created before submit returned
    assert not released(store_dir, h.id)  # the lease is held by this process while it runs
    ended: list = []
    h.add_done_callback(ended.append)
    seen = set()
    while not h.done():
        if h.progress is not None:
            seen.add(h.progress.invocations)
        time.sleep(0.05)
    assert h.result(timeout=120) == h.id
    assert h.exception() is None and not h.cancelled() and h.cancel() is False
    wait_for("the done callback", lambda: ended == [h], 10)  # once, with the handle (after result() returns)
    late: list = []
    h.add_done_callback(late.append)  # already done: at once
    assert late == [h]
    # it advanced while we watched (the last snapshot may land between a read and done(): checked below)
    assert len(seen) >= 3 and max(seen) <= 80, sorted(seen)
    assert h.progress.runs_ended == 2 and h.progress.invocations == 80
    status = h.status()
    assert status.state == "complete" and status.invocations == 80
    assert h not in running()
    assert released(store_dir, h.id)
    assert client.status == "running"  # a client given is left open
    page = h._repr_html_()
    assert "complete" in page and h.id in page and "80 of at most 80" in page
    assert "complete" in repr(h)


def test_cancel_stops_it_like_ctrl_c_and_a_resume_finishes_it(client, store_dir):
    config = {**SLOW, "max_length": 60}
    h = panicflow.submit_experiment(config, store=store_dir, client=client)
    wait_for("a few steps", lambda: h.progress is not None and h.progress.invocations >= 4)
    assert h.cancel(grace=30) is True
    assert h._stop.grace_s == 30 and not h._stop.hard
    with pytest.raises(Interrupted) as info:
        h.result(timeout=120)
    assert info.value.experiment_id == h.id and info.value.reason == "cancel"
    assert h.cancelled() and h.exception() is info.value
    assert h.cancel() is False  # it has ended
    assert h.status().state == "interrupted"
    assert "interrupted" in h._repr_html_()
    assert released(store_dir, h.id)
    done = h.status().invocations
    assert 4 <= done < 120

    again = panicflow.submit_resume(h.id, store=store_dir, client=client)
    assert again.id == h.id
    assert again.result(timeout=180) == h.id
    assert again.status().state == "complete" and again.status().invocations == 120


def test_a_second_cancel_stops_at_once(client, store_dir):
    h = panicflow.submit_experiment(SLOW, store=store_dir, client=client)
    wait_for("a step", lambda: h.progress is not None and h.progress.invocations >= 1)
    assert h.cancel(grace=120) and h.cancel()
    assert h._stop.hard  # results in flight are not waited for
    with pytest.raises(Interrupted):
        h.result(timeout=60)
    assert h.status().state == "interrupted"


def test_errors_before_the_experiment_exists_raise_from_submit_and_leave_nothing(client, tmp_path):
    store = tmp_path / "store"
    before = set(running())
    bad = {**SLOW, "networks": [["NoSuchModel", "DummyI2T"]], "max_length": 0}
    with pytest.raises(ConfigError):
        panicflow.submit_experiment(bad, store=str(store), client=client)
    with pytest.raises(ValueError, match="grace"):
        panicflow.submit_experiment(SLOW, store=str(store), client=client, grace=-1)
    with pytest.raises(UserError, match="--workers"):
        panicflow.submit_experiment(SLOW, store=str(store), workers=0)
    # raised in the background thread, before the experiment exists: from submit all the same
    with pytest.raises(UserError, match="--scheduler-file: .* does not exist"):
        panicflow.submit_experiment(SLOW, store=str(store), scheduler_file=tmp_path / "scheduler.json")
    assert not store.exists()  # nothing written
    with pytest.raises(StoreError):
        panicflow.submit_resume("20260101-000000-abcdef", store=str(store), client=client)
    assert set(running()) == before
    assert not [t for t in threading.enumerate() if t.name.startswith("panicflow-experiment") and t.is_alive()
                and not any(h._thread is t for h in before)]


def test_runs_that_failed_arrive_through_result_and_exception(client, store_dir):
    h = panicflow.submit_experiment(POISON, store=store_dir, client=client)
    ended: list = []
    h.add_done_callback(ended.append)
    with pytest.raises(RunsFailed) as info:
        h.result(timeout=120)
    assert info.value.experiment_id == h.id and (info.value.failed, info.value.runs) == (1, 2)
    assert h.exception() is info.value and not h.cancelled()
    wait_for("the done callback", lambda: ended == [h], 10)
    assert h.status().state == "failed"
    page = h._repr_html_()
    assert "failed" in page and "PoisonT2I refuses" in page


def test_two_handles_at_once(client, store_dir):
    a = panicflow.submit_experiment(SLOW, store=store_dir, client=client)
    b = panicflow.submit_experiment({**SLOW, "seeds": [3, 4]}, store=store_dir, client=client)
    assert a.id != b.id
    assert not a.done() and set(running()) >= {a, b}
    wait_for("both to make steps", lambda: all(h.progress is not None and h.progress.invocations > 0 for h in (a, b)))
    assert not (a.done() or b.done())  # both going at once
    assert a.result(timeout=180) == a.id and b.result(timeout=180) == b.id
    for h in (a, b):
        status = h.status()
        assert status.state == "complete" and status.invocations == 80


def test_a_handle_dropped_is_stopped_gracefully_when_the_interpreter_exits(client, tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "drop.py"
    script.write_text(textwrap.dedent(f"""
        import time
        import panicflow
        config = {dict(SLOW, max_length=400)!r}
        h = panicflow.submit_experiment(config, store={str(store)!r}, scheduler={client.scheduler.address!r})
        print(h.id, flush=True)
        while not (h.progress and h.progress.invocations >= 4):
            time.sleep(0.05)
        # the script ends here without result(): the experiment must not keep it alive, nor be left "running"
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eid = proc.stdout.split()[0]
    assert "the interpreter is exiting: stopping experiment" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    state = json.loads((store / "experiments" / eid / "state.json").read_text())
    assert state["state"] == "interrupted" and state["reason"] == "exit"  # marked, not judged by a dead pid
    assert released(str(store), eid)


def test_the_table_outside_a_notebook():
    view = {"id": "X", "name": "demo <b>", "state": "running", "left": "about 3s left", "error": None, "store": "/s",
            "dashboard": None, "numbers": {"runs": 4, "runs_complete": 1, "runs_failed": 1, "invocations": 10,
                                           "invocations_max": 40, "embeddings": {"E": 1}, "persistence_diagrams": {"E": 0}}}
    page = render_html(view)
    assert "demo &lt;b&gt;" in page and "10 of at most 40" in page and "2 of 4 (1 failed)" in page
    assert "embeddings E" in page and "1 of 3 runs" in page and "about 3s left" in page


# ------------------------------------------------------------------ a real notebook kernel
NOTEBOOK_CELLS = [
    """\
import panicflow
h = panicflow.submit_experiment(CONFIG, store=STORE, scheduler=ADDRESS)
h.result(timeout=180)
h""",
    "h",
    # left running when the notebook ends: the kernel's shutdown stops it gracefully
    """\
import time
g = panicflow.submit_experiment({**CONFIG, "max_length": 400}, store=STORE, scheduler=ADDRESS, display=False)
while not (g.progress and g.progress.invocations >= 2):
    time.sleep(0.05)
print(g.id)""",
]


def test_a_notebook_shows_a_table_that_updates_and_ends_complete(client, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # a kernel of this venv's python, found through JUPYTER_PATH: never a python3 kernel of the machine
    kernels = tmp_path / "jupyter" / "kernels" / "panicflow-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "panicflow test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    store = str(tmp_path / "store")
    setup = f"CONFIG = {SLOW!r}\nSTORE = {store!r}\nADDRESS = {client.scheduler.address!r}"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup)]
                                  + [nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    messages: list[dict] = []

    class Recording(nbclient.NotebookClient):
        def process_message(self, msg, cell, cell_index):
            messages.append(msg)
            return super().process_message(msg, cell, cell_index)

    Recording(nb, kernel_name="panicflow-test", timeout=300, startup_timeout=120,
              resources={"metadata": {"path": str(tmp_path)}}).execute()

    shown = [m for m in messages if m["msg_type"] == "display_data"]
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert len(shown) == 1, [m["msg_type"] for m in messages]
    display_id = shown[0]["content"]["transient"]["display_id"]
    assert {m["content"]["transient"]["display_id"] for m in updates} == {display_id}
    pages = [m["content"]["data"]["text/html"] for m in updates]
    assert len(set(pages)) >= 3, pages  # it really updated, more than once, while the cell waited
    assert any(">running<" in p for p in pages)
    assert ">complete<" in pages[-1] and "80 of at most 80" in pages[-1]
    # the saved notebook shows the final table where the first one was displayed
    first = nb.cells[1].outputs
    [table] = [o for o in first if o["output_type"] == "display_data"]
    assert ">complete<" in table["data"]["text/html"]
    # in the cell that shows the live table the handle's value is one line, not a second frozen table
    [value] = [o for o in first if o["output_type"] == "execute_result"]
    assert "text/html" not in value["data"] and "complete" in value["data"]["text/plain"]
    # in another cell, the table of now
    [later] = [o for o in nb.cells[2].outputs if o["output_type"] == "execute_result"]
    assert ">complete<" in later["data"]["text/html"]
    eid = value["data"]["text/plain"].split()[1].rstrip(":")
    assert panicflow.experiment_status(eid, store=store).state == "complete"
    # display=False: no table; and the kernel's shutdown marked the one left running interrupted
    assert not [o for o in nb.cells[3].outputs if o["output_type"] == "display_data"]
    left = nb.cells[3].outputs[0]["text"].strip()
    state = json.loads((Path(store) / "experiments" / left / "state.json").read_text())
    assert state["state"] == "interrupted" and state["reason"] == "exit", state
    assert released(store, left)


def test_a_handle_on_a_cluster_started_by_hand(tmp_path):
    """`dask scheduler` and `dask worker` processes started as users start them, the handle's
    client another process's: cancel stops it there and submit_resume finishes it there."""
    from cluster_util import DaskCluster, child_env

    store = str(tmp_path / "store")
    with DaskCluster(workers=1, nthreads=2, env=child_env(PANICFLOW_TEST_SLEEP_S="0.2")) as cluster:
        h = panicflow.submit_experiment({**SLOW, "max_length": 60}, store=store, scheduler_file=cluster.scheduler_file,
                                        display=False)
        wait_for("a few steps", lambda: h.progress is not None and h.progress.invocations >= 4)
        h.cancel()
        with pytest.raises(Interrupted):
            h.result(timeout=120)
        assert released(store, h.id) and h.status().state == "interrupted"
        again = panicflow.submit_resume(h.id, store=store, scheduler_file=cluster.scheduler_file, display=False)
        assert again.result(timeout=240) == h.id
        workers = {a for s in Store(store).experiment(h.id).sessions() for a in s["workers"]}
        with cluster.client() as c:
            assert workers == {cluster.worker_address("w0", c)}  # both sessions ran on that worker
    assert again.status().state == "complete"
