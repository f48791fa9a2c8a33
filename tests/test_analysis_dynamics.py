"""Symbolic dynamics: milestoning against a hand-written example, deeptime's MSM against numpy counts
and eigenvectors, the dwell-time fit against hand-written likelihoods and known laws, and the stored
result on a copy of the shared dummy experiment against its labels and loop detection."""

import json
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering, dynamics
from panicflow.analysis.cli import analyse_app
from panicflow.errors import UserError


def test_milestoning_by_hand():
    labels = np.array([-2, -1, -1, 3, -2, -1, -1, 5, -1, -2, 3, -1])
    m = dynamics.milestone(labels)
    assert m.tolist() == [-2, -1, -1, 3, -2, 3, 3, 5, 5, -2, 3, 3]
    assert dynamics.symbols(m).tolist() == [3, 3, 3, 5, 5, 3, 3]
    s, ln, fin = dynamics.dwells(dynamics.symbols(m))
    assert s.tolist() == [3, 5, 3] and ln.tolist() == [3, 2, 2] and fin.tolist() == [False, False, True]
    assert dynamics.milestone(np.full(4, -1)).tolist() == [-1] * 4
    assert dynamics.milestone(np.full(3, -2)).tolist() == [-2] * 3
    assert len(dynamics.symbols(dynamics.milestone(np.zeros(0, int)))) == 0


def _synthetic(seed=0, n_runs=20, length=200):
    rng = np.random.default_rng(seed)
    P = np.array([[0.90, 0.08, 0.02, 0.00],
                  [0.05, 0.90, 0.00, 0.05],
                  [0.02, 0.00, 0.93, 0.05],
                  [0.00, 0.04, 0.06, 0.90]])
    trajs = []
    for _ in range(n_runs):
        x = [int(rng.integers(4))]
        for _ in range(length - 1):
            x.append(int(rng.choice(4, p=P[x[-1]])))
        trajs.append(np.array(x))
    return trajs


@pytest.mark.parametrize("lag", [1, 3])
def test_msm_against_numpy(lag):
    trajs = _synthetic()
    C = np.zeros((4, 4))
    for t in trajs:
        np.add.at(C, (t[:-lag], t[lag:]), 1)  # sliding windows
    T = C / C.sum(axis=1, keepdims=True)
    msm = dynamics.estimate_msm(trajs, 4, lag, reversible=False)
    np.testing.assert_array_equal(msm.count_model.count_matrix, C)
    np.testing.assert_allclose(msm.transition_matrix, T, atol=1e-6)
    w, v = np.linalg.eig(T.T)
    pi = np.real(v[:, np.argmax(np.real(w))])
    pi /= pi.sum()
    np.testing.assert_allclose(msm.stationary_distribution, pi, atol=1e-6)
    ev = np.sort(np.abs(np.linalg.eigvals(T)))[::-1][1:]
    np.testing.assert_allclose(msm.timescales(), -lag / np.log(ev), rtol=1e-5)
    rev = dynamics.estimate_msm(trajs, 4, lag, reversible=True)
    Pr, pr = rev.transition_matrix, rev.stationary_distribution
    np.testing.assert_allclose(pr[:, None] * Pr, (pr[:, None] * Pr).T, atol=1e-8)  # detailed balance
    np.testing.assert_allclose(pr, pi, atol=0.05)  # near the non-reversible estimate on this data


def test_gap_and_connected_set():
    assert dynamics.timescale_gap_sets(np.array([50.0, 40.0, 2.0, 1.5]), 5) == 3
    assert dynamics.timescale_gap_sets(np.array([50.0, 2.0, 1.5]), 4) == 2
    assert dynamics.timescale_gap_sets(np.zeros(0), 1) == 1
    # state 2 only entered, never left: outside the largest connected set
    for reversible in (True, False):  # non-reversible too: deeptime alone took the weakly connected {0, 1, 2} and failed
        msm = dynamics.estimate_msm([np.array([0, 1, 0, 1, 1, 0, 2])], 3, 1, reversible)
        assert msm.count_model.state_symbols.tolist() == [0, 1], reversible
        np.testing.assert_allclose(msm.transition_matrix.sum(axis=1), 1.0)
    assert dynamics.estimate_msm([np.array([0])], 3, 1) is None


def test_dwell_fit_against_hand_likelihoods():
    from scipy import special

    rng = np.random.default_rng(1)
    x = rng.geometric(0.2, size=400)
    p, lg = dynamics.geometric_loglik(x)
    assert p == pytest.approx(1 / x.mean())
    assert lg.sum() == pytest.approx(len(x) * math.log(p) + (x - 1).sum() * math.log(1 - p))
    a, lz = dynamics.zeta_loglik(x)
    grid = np.linspace(1.01, 6, 5000)
    ll = [-g * np.log(x).sum() - len(x) * math.log(special.zeta(g, 1)) for g in grid]
    assert a == pytest.approx(grid[int(np.argmax(ll))], abs=2e-3)
    assert lz.sum() == pytest.approx(-a * np.log(x).sum() - len(x) * math.log(special.zeta(a, 1)))
    fit = dynamics.fit_dwells(x)
    d = lz - lg
    assert fit["loglik_ratio"] == pytest.approx(d.sum())
    assert fit["p_value"] == pytest.approx(special.erfc(abs(d.sum()) / (math.sqrt(2 * len(x)) * d.std())))
    assert fit["verdict"] == "exponential"
    heavy = np.random.default_rng(2).zipf(1.8, size=400)
    assert dynamics.fit_dwells(heavy)["verdict"] == "heavy-tailed"
    assert dynamics.fit_dwells(np.array([1, 2, 3]))["verdict"] == "undecided"


@pytest.fixture(scope="module")
def copied(analysis_experiment, client, tmp_path_factory):
    store, eid = analysis_experiment
    mine = str(tmp_path_factory.mktemp("dynamics") / "store")
    shutil.copytree(store, mine)
    name = clustering.cluster([eid], "DummyVision", store=mine, client=client, min_cluster_size=5, reduce="pca:4", name="dyn")
    return mine, eid, name


def test_stored_dynamics_match_labels_and_loops(copied):
    import panicflow

    store, eid, name = copied
    path = dynamics.dynamics(eid, name, store=store, lag=1, max_lag=3)
    assert path == f"analysis/dynamics/{name}-lag1"
    tree = panicflow.open_experiment(eid, store=store)
    ds = tree[path].ds
    attrs = tree[path].attrs
    assert attrs["parameters"]["clustering"] == name and attrs["parameters"]["lag"] == 1
    assert attrs["parameters"]["count_mode"] == "sliding" and "deeptime" in attrs["versions"]
    labels = tree[f"analysis/clusters/{name}"].ds.label.values
    root = tree["/"].ds
    for run, row in enumerate(labels):  # milestoning by a plain loop
        last, expect = None, []
        for x in row:
            if x == -2:
                expect.append(-2)
                continue
            last = x if x >= 0 else last
            expect.append(-1 if last is None else last)
        assert ds.milestone.values[run].tolist() == expect
        assert ds.run_core.values[run] + ds.run_transit.values[run] + ds.run_unassigned.values[run] == (row >= -1).sum()
    loop = root.stop_reason.values == "loop"
    np.testing.assert_array_equal(ds.run_absorbed.values, loop)
    np.testing.assert_array_equal(ds.run_absorption_step.values[loop], root.loop_start.values[loop])
    for run in np.flatnonzero(loop):
        assert ds.run_absorption_vectors.values[run] == (labels[run, :root.loop_start.values[run]] >= -1).sum()
    assert (ds.run_absorption_step.values[~loop] == -1).all()
    # transition counts: numpy's sliding counts of each network's symbol sequences
    for net in set(ds.transition_network.values):
        sel = ds.transition_network.values == net
        got = {(int(a), int(b)): c for a, b, c in zip(ds.transition_from.values[sel], ds.transition_to.values[sel],
                                                      ds.transition_count.values[sel])}
        states = sorted({a for a, _ in got})
        expect = {(a, b): 0 for a in states for b in states}
        for run in np.flatnonzero(root.network.values == net):
            t = dynamics.symbols(ds.milestone.values[run])
            for a, b in zip(t[:-1], t[1:]):
                if (a, b) in expect:
                    expect[(int(a), int(b))] += 1
        assert got == expect
        P = np.array([[dict(zip(zip(ds.transition_from.values[sel], ds.transition_to.values[sel]),
                                ds.transition_probability.values[sel]))[(a, b)] for b in states] for a in states])
        np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-6)
        st = ds.state_network.values == net
        pi = {int(s): p for s, p in zip(ds.state_label.values[st], ds.state_stationary.values[st])}
        v = np.array([pi[s] for s in states])
        np.testing.assert_allclose(v @ P, v, atol=1e-6)
    stays = ds.state_stays.values.sum()
    assert stays == ds.run_milestones.values.sum()

    runs = dynamics.dynamics_table(eid, "runs", store, result=f"{name}-lag1")
    assert len(runs) == labels.shape[0] and set(runs.clustering) == {name}
    states = dynamics.dynamics_table(eid, "states", store)
    assert set(states.dwell_fit) <= {"exponential", "heavy-tailed", "undecided"}
    for which in dynamics.TABLES:
        assert "experiment_id" in dynamics.dynamics_table(eid, which, store).columns


def test_cli_tables_and_chart(copied, tmp_path):
    store, eid, name = copied
    out = tmp_path / "out"
    r = CliRunner().invoke(analyse_app, ["dynamics", eid, "--clustering", name, "--lag", "2", "--n-sets", "2", "--max-lag", "2",
                                         "--store", store, "--tables", str(out), "--plot", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["path"] == f"analysis/dynamics/{name}-lag2"
    assert {p.split("/")[-1] for p in res["files"]} >= {"dynamics_runs.csv", "dynamics_states.csv", f"dynamics-{name}-lag2.png"}
    from PIL import Image

    with Image.open(out / f"dynamics-{name}-lag2.png") as im:
        assert im.size[0] > 800 and len(set(im.convert("RGB").getdata())) > 20
    with pytest.raises(UserError, match="lag"):
        dynamics.dynamics(eid, name, store=store, lag=0)
    with pytest.raises(UserError, match="no complete clusters result 'nope'"):
        dynamics.dynamics(eid, "nope", store=store)


def test_absorption_is_the_loop_detection(semantics_experiment, client, tmp_path):
    """Seeded dummy runs and ConstantT2I fall into exact loops: absorbed, at loop_start."""
    import panicflow

    store, eid = semantics_experiment
    mine = str(tmp_path / "store")
    shutil.copytree(store, mine)
    name = clustering.cluster([eid], "DummyText", store=mine, client=client, min_cluster_size=3, reduce="none", name="abs")
    path = dynamics.dynamics(eid, name, store=mine, max_lag=2)
    tree = panicflow.open_experiment(eid, store=mine)
    ds, root = tree[path].ds, tree["/"].ds
    labels = tree[f"analysis/clusters/{name}"].ds.label.values
    loop = root.stop_reason.values == "loop"
    assert loop.any() and (~loop).any()
    np.testing.assert_array_equal(ds.run_absorbed.values, loop)
    np.testing.assert_array_equal(ds.run_absorption_step.values, np.where(loop, root.loop_start.values, -1))
    np.testing.assert_array_equal(ds.run_loop_period.values, np.where(loop, root.loop_period.values, -1))
    for run in range(labels.shape[0]):
        before = (labels[run, :root.loop_start.values[run]] >= -1).sum() if loop[run] else -1
        assert ds.run_absorption_vectors.values[run] == before
    nets = dynamics.dynamics_table(eid, "networks", mine)
    runs = dynamics.dynamics_table(eid, "runs", mine)
    assert (nets.set_index("name").absorbed == runs.groupby("network").absorbed.sum()).all()


# --- pooling the runs of several experiments clustered together ------------------------------------

def _counts_by_hand(labels, networks, lag=1):
    """{network: {(a, b): count}} of the milestoned symbols of every run, a plain loop per run (no pair
    crosses from one run into the next)."""
    out = {}
    for row, net in zip(labels, networks):
        last, seq = None, []
        for x in row:
            if x >= 0:
                last = int(x)
            if x >= -1 and last is not None:
                seq.append(last)
        c = out.setdefault(str(net), {})
        for a, b in zip(seq[:-lag], seq[lag:]):
            c[(a, b)] = c.get((a, b), 0) + 1
    return out


@pytest.fixture(scope="module")
def pooled(copied, client):
    """The copied store with a second, smaller experiment, and one clustering of both."""
    import panicflow

    store, eid, _ = copied
    cfg = {"name": "second", "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]], "seeds": [7, -1],
           "prompts": ["a blue square"], "embedding_models": ["DummyText", "DummyVision"], "max_length": 24}
    eid2 = panicflow.run_experiment(cfg, store=store, client=client)
    name = clustering.cluster([eid, eid2], "DummyVision", store=store, client=client, min_cluster_size=5, reduce="pca:4",
                              name="pool")
    return store, eid, eid2, name


def test_pooled_counts_are_the_sum_over_experiments(pooled):
    import panicflow
    from deeptime.markov import TransitionCountModel
    from deeptime.markov.msm import MaximumLikelihoodMSM

    store, eid, eid2, name = pooled
    expect: dict = {}
    n_runs = 0
    for e in (eid, eid2):  # independently, from each experiment's stored labels
        tree = panicflow.open_experiment(e, store=store)
        labels = tree[f"analysis/clusters/{name}"].ds.label.values
        n_runs += labels.shape[0]
        for net, c in _counts_by_hand(labels, tree["/"].ds.network.values).items():
            for k, v in c.items():
                expect.setdefault(net, {})[k] = expect.setdefault(net, {}).get(k, 0) + v
    for reversible in (False, True):
        path = dynamics.dynamics([eid, eid2], name, store=store, max_lag=2, reversible=reversible,
                                 name=f"pooled-{reversible}")
        tree = panicflow.open_experiment(eid, store=store)  # stored in the first experiment, and readable as a tree
        ds, attrs = tree[path].ds, tree[path].attrs
        assert attrs["inputs"] == [eid, eid2] and attrs["parameters"]["experiments"] == [eid, eid2]
        assert len(ds.run_network) == n_runs
        assert sorted(set(ds.run_experiment.values.tolist())) == sorted([eid, eid2])
        for net, counts in expect.items():
            sel = ds.transition_network.values == net
            frm, to = ds.transition_from.values[sel], ds.transition_to.values[sel]
            states = sorted(set(frm.tolist()))
            got = dict(zip(zip(frm.tolist(), to.tolist()), ds.transition_count.values[sel].tolist()))
            C = np.array([[counts.get((a, b), 0) for b in states] for a in states], float)
            assert got == {(a, b): C[i, j] for i, a in enumerate(states) for j, b in enumerate(states)}
            # the stored states are one of the strongly connected sets of the pooled hand counts (deeptime's choice)
            all_states = sorted({s for k in counts for s in k})
            full = np.array([[counts.get((a, b), 0) for b in all_states] for a in all_states], float)
            sets = [sorted(all_states[i] for i in c) for c in TransitionCountModel(full).connected_sets()]
            assert states in sets
            P = np.array([[dict(zip(got, ds.transition_probability.values[sel].tolist()))[(a, b)] for b in states]
                          for a in states])
            if reversible:  # deeptime's MSM of the hand-built count matrix
                msm = MaximumLikelihoodMSM(reversible=True).fit_fetch(TransitionCountModel(C))
                np.testing.assert_allclose(P, msm.transition_matrix, atol=1e-6)
            else:  # row-normalised by hand
                np.testing.assert_allclose(P, C / C.sum(axis=1, keepdims=True), atol=1e-6)
    # the pooled counts are the sum of the single-experiment results' counts (each of the same clustering)
    single = [dynamics.dynamics_table(e, "transitions", store, result=dynamics.dynamics(e, name, store=store, max_lag=1).rsplit("/", 1)[1])
              for e in (eid, eid2)]
    runs = dynamics.dynamics_table(eid, "runs", store, result="pooled-False")
    assert sorted(set(runs.experiment_id)) == sorted([eid, eid2]) and len(runs) == n_runs
    for e in (eid, eid2):
        assert runs[runs.experiment_id == e].run.tolist() == list(range(len(runs[runs.experiment_id == e])))
    total = {}
    for t in single:
        for k in zip(t["network"], t["from"], t["to"], t["count"]):
            total[k[:3]] = total.get(k[:3], 0) + k[3]
    flat = {(n, a, b): v for n, c in expect.items() for (a, b), v in c.items()}
    assert total and all(flat.get(k, 0) >= v for k, v in total.items())  # each experiment's connected set is a part
    pooled_t = dynamics.dynamics_table(eid, "transitions", store, result="pooled-False")
    for k in zip(pooled_t["network"], pooled_t["from"], pooled_t["to"], pooled_t["count"]):
        if all(k[:3] in {x[:3] for x in zip(t["network"], t["from"], t["to"])} for t in single):
            assert k[3] == total[k[:3]]  # a pair connected in both: the pooled count is the sum of the two


def test_pooling_needs_one_clustering_of_all(pooled, capsys):
    from panicflow.cli import main

    store, eid, eid2, name = pooled
    # the copied fixture's clustering "dyn" is eid's alone
    with pytest.raises(UserError, match="not shared by"):
        dynamics.dynamics([eid, eid2], "dyn", store=store)
    with pytest.raises(UserError, match="named twice"):
        dynamics.dynamics([eid, eid], name, store=store)
    assert main(["analyse", "dynamics", eid, eid2, "--clustering", "dyn", "--store", store]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not shared by" in err[0]
    assert main(["analyse", "dynamics", eid, eid2, "--clustering", name, "--store", store, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["path"] == f"analysis/dynamics/{name}-lag1-pooled2"
    assert sum(n["runs"] for n in out["networks"]) == 20
