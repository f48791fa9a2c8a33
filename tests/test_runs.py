"""Run semantics, checked against the independent sequential oracle in tests/oracle.py."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import panicflow
from panicflow.errors import RunsFailed
from panicflow.models import REGISTRY
from panicflow.store.objects import decode_image

from semantics import SEMANTICS_CONFIG
from oracle import reference_run


@pytest.fixture(scope="module")
def root(semantics_experiment):
    store, eid = semantics_experiment
    return panicflow.open_experiment(eid, store=store)["/"].ds.load()


def seeded_runs():
    cfg = panicflow.load_config(SEMANTICS_CONFIG)
    return [r for r in cfg.runs() if r.seed != -1]


@pytest.mark.parametrize("run", seeded_runs(), ids=lambda r: f"{r.network[0]}-seed{r.seed}")
def test_seeded_run_equals_the_sequential_oracle(root, run):
    expected = reference_run(run.network, run.seed, run.prompt, SEMANTICS_CONFIG["max_length"])
    n = len(expected.hashes)
    i = run.index
    assert int(root.length[i]) == n
    assert root.stop_reason[i].item() == expected.stop_reason
    assert int(root.loop_start[i]) == expected.loop_start
    assert int(root.loop_period[i]) == expected.loop_period
    assert list(root.output_hash[i, :n].values) == expected.hashes
    assert list(root.text[i, :n].values) == expected.texts
    # cycling: step k uses network[k % len(network)]
    assert list(root.model[i, :n].values) == [run.network[k % 2] for k in range(n)]
    assert list(root.kind[i, :n].values) == ["image" if k % 2 == 0 else "text" for k in range(n)]
    assert (root.invocation_seed[i, :n].values == run.seed).all()
    # nothing past the end of the run
    assert (root.output_hash[i, n:].values == "").all()
    assert np.isnat(root.started_at[i, n:].values).all()
    assert (root.started_at[i, :n].values <= root.ended_at[i, :n].values).all()


def test_the_loop_paths_are_exercised(root):
    reasons = list(root.stop_reason.values)
    assert reasons.count("loop") >= 3, reasons  # seeds 22 and 57 and ConstantT2I
    constant = [r.index for r in seeded_runs() if r.network[0] == "ConstantT2I"]
    for i in constant:  # the grey image repeats at step 2
        assert (int(root.loop_start[i]), int(root.loop_period[i]), int(root.length[i])) == (0, 2, 3)


def test_unseeded_runs_go_to_max_length_with_stored_reproducible_seeds(root, semantics_experiment):
    store, _ = semantics_experiment
    cfg = panicflow.load_config(SEMANTICS_CONFIG)
    unseeded = [r for r in cfg.runs() if r.seed == -1]
    assert unseeded
    for run in unseeded:
        i = run.index
        assert root.stop_reason[i].item() == "length"
        assert int(root.length[i]) == cfg.max_length
        seeds = root.invocation_seed[i].values
        assert (seeds >= 0).all()
        assert len(set(seeds.tolist())) > cfg.max_length // 2  # fresh seeds, not one reused
        # every stored seed reproduces its stored output from its stored input
        for step in (0, 1, 2, 37, cfg.max_length - 1):
            model = REGISTRY[str(root.model[i, step].values)]
            impl = model.factory(model)
            if step == 0:
                given = run.prompt
            elif str(root.kind[i, step - 1].values) == "text":
                given = str(root.text[i, step - 1].values)
            else:
                given = panicflow.load_image(str(root.output_hash[i, step - 1].values), store=store)
            out = impl.generate([given], [int(seeds[step])])[0]
            data = out.encode() if isinstance(out, str) else None
            if data is None:
                from panicflow.store.objects import encode_image

                data = encode_image(out)
            assert hashlib.sha256(data).hexdigest() == str(root.output_hash[i, step].values)
    # ConstantT2I repeats its image, yet the unseeded run of that network is not stopped
    const = [r.index for r in unseeded if r.network[0] == "ConstantT2I"][0]
    hashes = list(root.output_hash[const].values)
    assert len(set(hashes[0::2])) == 1 and len(hashes) == cfg.max_length


def test_images_load_as_pil_from_their_hash(root, semantics_experiment):
    store, _ = semantics_experiment
    digest = str(root.output_hash[0, 0].values)
    image = panicflow.load_image(digest, store=store)
    assert image.size == (256, 256)
    raw = panicflow.api._store(store).objects.get_bytes(digest)
    assert hashlib.sha256(raw).hexdigest() == digest
    assert list(decode_image(raw).getdata()) == list(image.getdata())


def test_max_length_one_and_a_run_that_keeps_failing(client, store_dir):
    cfg = {
        "networks": [["PoisonT2I", "DummyI2T"]],
        "seeds": [5],
        "prompts": ["a poison apple", "a fine apple"],
        "embedding_models": ["DummyText", "DummyVision"],
        "max_length": 1,
        "retry": {"max_attempts": 2, "backoff_s": 0.01},
    }
    with pytest.raises(RunsFailed) as failed:  # the API raises; the CLI exits 1
        panicflow.run_experiment(cfg, store=store_dir, client=client)
    eid = failed.value.experiment_id
    assert eid in str(failed.value) and "--retry-failed" in str(failed.value)
    status = panicflow.experiment_status(eid, store=store_dir)
    assert status.state == "failed"  # finished, but with a failed run to look at
    assert status.runs_failed == 1 and status.runs_complete == 1
    assert status.stop_reasons == {"failed": 1, "length": 1}
    assert "PoisonT2I refuses" in status.errors[0]
    ds = panicflow.open_experiment(eid, store=store_dir)
    root = ds["/"].ds
    assert int(root.length[1]) == 1 and int(root.length[0]) == 0
    # the good run still got its image embedded and its (too small) diagram recorded
    assert bool(ds["embeddings/DummyVision"].ds.done[1])
    assert str(ds["diagrams/DummyVision"].ds.status[1].values) == "too_few_points"
    assert str(ds["diagrams/DummyText"].ds.status[1].values) == "too_few_points"
    assert str(ds["diagrams/DummyText"].ds.status[0].values) == "run_failed"


def test_resume_retry_failed_gives_failed_runs_another_go(client, store_dir, monkeypatch):
    cfg = {
        "networks": [["FlakyT2I", "DummyI2T"]],
        "seeds": [5, 6],
        "prompts": ["an apple"],
        "embedding_models": ["DummyText"],
        "max_length": 4,
        "retry": {"max_attempts": 1, "backoff_s": 0.0},
    }
    # FlakyT2I reads its failure rate when a worker builds it: one cluster where it always
    # fails, then one where it never does (it draws the same images as DummyT2I)
    from distributed import Client, LocalCluster

    monkeypatch.setenv("PANICFLOW_TEST_FLAKY_RATE", "1.0")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c1, Client(c1) as cl:
        with pytest.raises(RunsFailed) as failed:
            panicflow.run_experiment(cfg, store=store_dir, client=cl)
    eid = failed.value.experiment_id
    status = panicflow.experiment_status(eid, store=store_dir)
    assert status.state == "failed" and status.runs_failed == 2
    assert all("simulated transient failure" in e for e in status.errors.values())
    monkeypatch.setenv("PANICFLOW_TEST_FLAKY_RATE", "0.0")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c2, Client(c2) as cl:
        with pytest.raises(RunsFailed):  # without --retry-failed: nothing to do, still failed
            panicflow.resume_experiment(eid, store=store_dir, client=cl)
        assert panicflow.experiment_status(eid, store=store_dir).runs_failed == 2
        panicflow.resume_experiment(eid, store=store_dir, client=cl, retry_failed=True)
    status = panicflow.experiment_status(eid, store=store_dir)
    assert status.state == "complete" and status.runs_complete == 2 and not status.errors
    root = panicflow.open_experiment(eid, store=store_dir)["/"].ds
    for i, seed in enumerate((5, 6)):
        expected = reference_run(("DummyT2I", "DummyI2T"), seed, "an apple", 4)
        assert list(root.output_hash[i, : len(expected.hashes)].values) == expected.hashes


def test_every_invocation_records_its_generation_parameters(root, semantics_experiment):
    import json

    store, _ = semantics_experiment
    n = int(root.length[0])
    hashes = set(root.parameters_hash[0, :n].values.tolist())
    assert "" not in hashes and len(hashes) == 2  # one JSON object per model of the network
    params = [json.loads(panicflow.load_text(h, store=store)) for h in hashes]
    assert {p["model"] for p in params} == set(SEMANTICS_CONFIG["networks"][0])
    t2i = next(p for p in params if p["model"] == "DummyT2I")
    assert (t2i["width"], t2i["height"]) == (256, 256)


def test_placement_gpu_resource_and_resident_model_preference(semantics_experiment):
    """GPU models need the GPU resource on a GPU cluster; a model's batches prefer its holders."""
    from panicflow.models import ModelSpec, Role, register, REGISTRY
    from panicflow.scheduler.coordinator import Coordinator
    from panicflow.store import Store

    class FakeClient:
        def __init__(self, resources):
            self.resources = resources

        def nthreads(self):
            return {"tcp://a": 1, "tcp://b": 1}

        def scheduler_info(self, n_workers=-1):
            return {"workers": {"tcp://a": {"resources": self.resources}, "tcp://b": {"resources": self.resources}}}

    if "BigT2I" not in REGISTRY:
        register(ModelSpec("BigT2I", Role.TEXT_TO_IMAGE, factory=lambda spec: None, extra={"approx_gpu_gb": 10}))
    store, eid = semantics_experiment
    st = Store(store)
    gpu = Coordinator(FakeClient({"GPU": 1}), st, st.experiment(eid))
    cpu = Coordinator(FakeClient({}), st, st.experiment(eid))
    assert gpu._placement("BigT2I") == {"resources": {"GPU": 1}}
    assert gpu._placement("DummyT2I") == {}  # a CPU dummy runs anywhere
    assert cpu._placement("BigT2I") == {}  # no GPU resource declared: no constraint
    gpu.holders["BigT2I"].add("tcp://b")
    # held to its holders, never loosely beside a resource: Dask's loose restrictions drop the resource
    # as well, and work stealing then gave GPU calls to CPU workers (KeyError: 'GPU' on the worker)
    assert gpu._placement("BigT2I") == {"resources": {"GPU": 1}, "workers": ["tcp://b"]}
    cpu.holders["DummyT2I"].add("tcp://b")
    assert cpu._placement("DummyT2I") == {"workers": ["tcp://b"], "allow_other_workers": True}
