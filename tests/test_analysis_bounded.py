"""Bounded-space measures (MSAD, autocorrelation decay, time to saturation) and paraphrase-pair divergence:
against plain-Python loops on the stored vectors, scipy's linregress, and synthetic runs with known answers."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from scipy.stats import linregress
from typer.testing import CliRunner

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import bounded, tables
from panicflow.analysis.cli import analyse_app
from panicflow.cli import main
from panicflow.errors import UserError
from panicflow.store import Store

LAG = 16  # small: the dummy runs have 20 vectors of each model, on every other step


@pytest.fixture(scope="module")
def bnd(analysis_experiment, client, tmp_path_factory):
    """A copy of the shared experiment (no earlier analysis) with a bounded result of DummyText and a pairs result."""
    store, eid = analysis_experiment
    root = tmp_path_factory.mktemp("bounded")
    copy = str(root / "store")
    shutil.copytree(store, copy)
    shutil.rmtree(os.path.join(copy, "experiments", Store(copy).experiment(eid).id, "data.zarr", "analysis"), ignore_errors=True)
    pairs = root / "pairs.csv"
    pairs.write_text("prompt_a,prompt_b\na cat,a red circle\n")
    assert bounded.bounded(eid, "DummyText", store=copy, client=client, max_lag=LAG) == "analysis/bounded/DummyText-lag16-sat0.95"
    assert bounded.divergence_pairs(eid, "DummyText", str(pairs), store=copy, client=client) == "analysis/divergence_pairs/DummyText-pairs"
    return copy, eid, str(pairs)


@pytest.fixture(scope="module")
def synthetic(analysis_experiment, tmp_path_factory):
    """A copy whose DummyVision vectors turn in a plane at a known angle per step (omega_r = 0.005 (r + 1), at most 3 rad over a run) and whose
    DummyText vectors part exponentially, e0 + eps exp(0.05 t) d_run, d_run random and orthogonal to e0."""
    store, eid = analysis_experiment
    copy = str(tmp_path_factory.mktemp("bounded-synthetic") / "store")
    shutil.copytree(store, copy)
    g = Store(copy).experiment(eid).group()
    rng = np.random.default_rng(1)
    for model in ("DummyVision", "DummyText"):
        vec = g[f"embeddings/{model}/vector"]
        v = vec[...]
        has = ~np.isnan(v).any(axis=2)
        for run in range(v.shape[0]):
            steps = np.flatnonzero(has[run])
            v[run, steps] = 0.0
            if model == "DummyVision":
                w = 0.005 * (run + 1)
                v[run, steps, 0], v[run, steps, 1] = np.cos(w * steps), np.sin(w * steps)
            else:
                d = rng.normal(size=v.shape[2])
                d[0] = 0.0
                v[run, steps] = d[None, :] * 1e-4 * np.exp(0.05 * steps)[:, None]
                v[run, steps, 0] = 1.0
        vec[...] = v.astype(np.float32)
    return copy, eid


def _loops(steps, vectors, max_lag):
    """The definitions written out: MSAD, pairs and C per lag in steps, lags up to half the span."""
    u = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in vectors.tolist()]
    dim, n = len(u[0]), len(u)
    m = [sum(v[j] for v in u) / n for j in range(dim)]
    w = [[v[j] - m[j] for j in range(dim)] for v in u]
    var = sum(sum(x * x for x in v) for v in w) / n
    at = {int(s): i for i, s in enumerate(steps)}
    span = int(steps[-1] - steps[0])
    msad, pairs, acf = [math.nan] * max_lag, [0] * max_lag, [math.nan] * max_lag
    for k in range(1, min(max_lag, span // 2) + 1):
        sq, cov, c = 0.0, 0.0, 0
        for s, i in at.items():
            if s + k in at:
                j = at[s + k]
                dot = max(-1.0, min(1.0, sum(a * b for a, b in zip(u[i], u[j]))))
                sq += math.acos(dot) ** 2
                cov += sum(a * b for a, b in zip(w[i], w[j]))
                c += 1
        if c:
            msad[k - 1], pairs[k - 1], acf[k - 1] = sq / c, c, (cov / c) / var if var > 0 else math.nan
    return np.array(msad), np.array(pairs), np.array(acf)


def _first(lags, values, test):
    for k, v in zip(lags, values):
        if v == v and test(v):
            return float(k)
    return math.nan


def _plateau(lags, msad, fraction=bounded.SATURATION):
    """Plateau and saturation, independently: scipy's line through the last quarter of the lags with a value."""
    x = [k for k, v in zip(lags, msad) if v == v]
    y = [v for v in msad if v == v]
    win = [(k, v) for k, v in zip(x, y) if k >= 0.75 * x[-1]]
    if len(win) < 3:
        return math.nan, math.nan
    plateau = sum(v for _, v in win) / len(win)
    fit = linregress([k for k, _ in win], [v for _, v in win])
    if abs(fit.slope) * (win[-1][0] - win[0][0]) > (1 - fraction) * plateau:
        return plateau, math.nan
    return plateau, _first(x, y, lambda v: v >= fraction * plateau)


def test_known_answers_on_synthetic_runs():
    """A turn of omega per step gives MSAD(k) = (omega k)^2 (a rising curve: no plateau); an AR(1) with phi = 0.8 in
    400 dimensions gives C(k) = 0.8^k, first below 1/e at k = 5; independent directions saturate at the first lag."""
    lags = np.arange(1, 51)
    w, steps = 0.05, np.arange(0, 40, 2)  # every other step, as a two-model network embeds
    v = np.zeros((len(steps), 5))
    v[:, 0], v[:, 1] = 3 * np.cos(w * steps), 3 * np.sin(w * steps)  # not unit: normalised inside
    c = bounded.lag_curves(steps, v, 50)
    even = np.arange(2, 20, 2)
    np.testing.assert_allclose(c["msad"][even - 1], (w * even) ** 2, rtol=1e-9)
    assert np.isnan(c["msad"][np.arange(1, 20, 2) - 1]).all() and np.isnan(c["msad"][19:]).all()  # odd lags; past half the span
    assert list(c["pairs"][even - 1]) == [20 - k // 2 for k in even]
    plateau, t, status = bounded.saturation(lags, c["msad"])
    assert np.isnan(t) and status.startswith("no plateau: MSAD changes by")

    rng = np.random.default_rng(0)
    phi, x = 0.8, np.zeros((3000, 400))
    x[0] = rng.normal(size=400)
    for i in range(1, len(x)):
        x[i] = phi * x[i - 1] + math.sqrt(1 - phi ** 2) * rng.normal(size=400)
    c = bounded.lag_curves(np.arange(len(x)), x, 20)
    np.testing.assert_allclose(c["acf"][:10], phi ** np.arange(1, 11), atol=0.02)
    assert bounded.decay_time(np.arange(1, 21), c["acf"]) == (5.0, "ok")

    iid = rng.normal(size=(400, 50))  # isotropic, independent: MSAD flat at about (pi/2)^2 from the first lag
    c = bounded.lag_curves(np.arange(400), iid, 40)
    plateau, t, status = bounded.saturation(np.arange(1, 41), c["msad"])
    assert status == "ok" and t == 1.0 and plateau == pytest.approx(bounded.RANDOM_MSAD, rel=0.03)
    assert bounded.decay_time(np.arange(1, 41), c["acf"]) == (1.0, "ok")

    k = np.arange(1, 61, dtype=float)  # a curve that saturates as 1 - exp(-k / 6): the test's own plateau and crossing
    curve = 2.0 * (1 - np.exp(-k / 6))
    p, t, status = bounded.saturation(k, curve)
    assert status == "ok" and (p, t) == pytest.approx(_plateau(k, curve))


def test_statuses_say_why():
    lags = np.arange(1, 21)
    still = bounded.lag_curves(np.arange(30), np.ones((30, 4)), 20)  # the same vector throughout
    assert (still["msad"][:14] == 0).all() and np.isnan(still["msad"][14:]).all() and np.isnan(still["acf"]).all()
    assert bounded.saturation(lags, still["msad"])[2] == "no movement: MSAD is 0 over the plateau lags"
    t, status = bounded.decay_time(lags, still["acf"])
    assert np.isnan(t) and status.startswith("no autocorrelation")
    t, status = bounded.decay_time(lags, np.linspace(0.99, 0.5, 20))
    assert np.isnan(t) and status == "C stays at or above 1/e up to lag 20: take more lags"
    assert bounded.saturation(lags, np.r_[0.1, 0.2, np.full(18, np.nan)])[2] == "fewer than 3 lags with a value"
    one = bounded.lag_curves(np.array([4]), np.ones((1, 3)), 10)
    assert np.isnan(one["msad"]).all() and one["n_vectors"] == 1


def test_stored_bounded_matches_loops(bnd):
    store, eid, _ = bnd
    tree = panicflow.open_experiment(eid, store=store)
    ds, root = tree["analysis/bounded/DummyText-lag16-sat0.95"].ds, tree["/"].ds
    vec = tree["embeddings/DummyText"].ds.vector.values.astype(np.float64)
    lags = np.arange(1, LAG + 1)
    assert list(ds.lag.values) == list(lags)
    assert ds.attrs["parameters"]["max_lag"] == LAG and ds.attrs["inputs"] == [eid] and "numpy" in ds.attrs["versions"]
    keys = list(zip(root.network.values.astype(str), root.prompt.values.astype(str)))
    groups = sorted(set(keys))
    assert list(zip(ds.group_network.values, ds.group_prompt.values)) == groups
    for run in range(len(keys)):
        steps = np.flatnonzero(~np.isnan(vec[run]).any(axis=1))
        msad, pairs, acf = _loops(steps, vec[run, steps], LAG)
        np.testing.assert_allclose(ds.msad.values[run], msad, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(ds.msad_pairs.values[run], pairs)
        np.testing.assert_allclose(ds.autocorrelation.values[run], acf, rtol=1e-7, atol=1e-9)
        assert ds.n_vectors.values[run] == len(steps) and ds.run_group.values[run] == groups.index(keys[run])
        decay = _first(lags, acf, lambda v: v < math.exp(-1))
        assert ds.decay_time.values[run] == pytest.approx(decay, nan_ok=True)
        assert (ds.decay_status.values[run] == "ok") == (decay == decay)
        plateau, sat = _plateau(lags, msad)
        assert ds.plateau.values[run] == pytest.approx(plateau, rel=1e-9, nan_ok=True)
        assert ds.plateau_ratio.values[run] == pytest.approx(plateau / (math.pi / 2) ** 2, rel=1e-9, nan_ok=True)
        assert ds.saturation_time.values[run] == pytest.approx(sat, nan_ok=True)
        assert (ds.saturation_status.values[run] == "ok") == (sat == sat)
    for i, key in enumerate(groups):  # pooled: every pair of every run alike
        runs = [r for r, k in enumerate(keys) if k == key]
        w = ds.msad_pairs.values[runs]
        expected = [sum(ds.msad.values[r, j] * w[n, j] for n, r in enumerate(runs) if w[n, j]) / w[:, j].sum() if w[:, j].sum()
                    else math.nan for j in range(LAG)]
        np.testing.assert_allclose(ds.group_msad.values[i], expected, rtol=1e-12)
        mean_c = []
        for j in range(LAG):
            have = [ds.autocorrelation.values[r, j] for r in runs if ds.autocorrelation.values[r, j] == ds.autocorrelation.values[r, j]]
            mean_c.append(sum(have) / len(have) if have else math.nan)
        np.testing.assert_allclose(ds.group_autocorrelation.values[i], mean_c, rtol=1e-12)
        plateau, sat = _plateau(lags, expected)
        assert ds.group_plateau.values[i] == pytest.approx(plateau, nan_ok=True) and ds.group_saturation_time.values[i] == pytest.approx(sat, nan_ok=True)
        assert ds.group_n_runs.values[i] == len(runs)
    # the dummy embedder draws each caption's vector at random: the runs forget their start at once; where no plateau
    # holds, the 3 plateau lags of ~13 pairs each moved the line by more than 5 % by noise alone (the unseeded runs differ
    # from session to session)
    ok = ds.saturation_status.values == "ok"
    # saturated within the first lags with a value (2 in most runs; the noise of ~13 pairs a lag moved one to 4 in CI)
    assert ok.sum() >= len(ok) // 2 and (ds.saturation_time.values[ok] <= 6).all()
    assert all(s.startswith("no plateau: MSAD changes by") for s in ds.saturation_status.values[~ok])


def test_known_motion_end_to_end(synthetic):
    """Runs turning at omega_r per step give MSAD (omega_r k)^2, stored as a rising curve with no saturation time
    (computed here, no client)."""
    store, eid = synthetic
    path = bounded.bounded(eid, "DummyVision", store=store, max_lag=30, name="turn")
    ds = panicflow.open_experiment(eid, store=store)[path].ds
    assert path == "analysis/bounded/turn"
    even = np.arange(2, 20, 2)
    for run in range(ds.sizes["run"]):
        np.testing.assert_allclose(ds.msad.values[run, even - 1], (0.005 * (run + 1) * even) ** 2, rtol=1e-5)
        assert np.isnan(ds.msad.values[run, 19:]).all()  # beyond half of the 38-step span
        assert ds.saturation_status.values[run].startswith("no plateau") and np.isnan(ds.saturation_time.values[run])
    assert ds.mean_resultant_length.values.min() > 0.6  # an arc of at most 0.08 x 38 rad: sin(1.52) / 1.52 = 0.66


def test_pairs_known_exponent_end_to_end(synthetic, tmp_path):
    """Runs that part as exp(0.05 t) part so between prompts too: the pairs' exponent is 0.05."""
    store, eid = synthetic
    f = tmp_path / "pairs.yaml"
    f.write_text("pairs:\n  - [a cat, a red circle]\n")
    path = bounded.divergence_pairs(eid, "DummyText", str(f), store=store, fit_steps=(0, 30))
    ds = panicflow.open_experiment(eid, store=store)[path].ds
    assert path == "analysis/divergence_pairs/DummyText-pairs-0-30"
    np.testing.assert_allclose(ds.exponent.values, 0.05, atol=2e-3)
    assert (ds.r_squared.values > 0.99).all() and (ds.status.values == "ok").all()


def test_pairs_match_loops_and_linregress(bnd, client):
    store, eid, pairs = bnd
    tree = panicflow.open_experiment(eid, store=store)
    ds, root = tree["analysis/divergence_pairs/DummyText-pairs"].ds, tree["/"].ds
    assert ds.attrs["parameters"]["pairs"] == [["a cat", "a red circle"]] and ds.attrs["parameters"]["pairing"] == "matched"
    assert len(ds.attrs["parameters"]["pairs_sha256"]) == 64 and "pyyaml" in ds.attrs["versions"]
    vec = tree["embeddings/DummyText"].ds.vector.values.astype(np.float64)
    net, prompt, seed = root.network.values.astype(str), root.prompt.values.astype(str), root.seed.values
    assert list(ds.group_network.values) == sorted(set(net))
    for i, network in enumerate(ds.group_network.values):
        a = [r for r in range(len(net)) if net[r] == network and prompt[r] == "a cat"]
        b = [r for r in range(len(net)) if net[r] == network and prompt[r] == "a red circle"]
        pairs_ = [(x, y) for x in a for y in b if seed[x] == seed[y]]
        assert len(pairs_) == ds.n_pairs.values[i] == 6  # seeds 1, 2 matched; the two unseeded runs of each, 2 x 2
        runs = sorted({r for p in pairs_ for r in p})
        steps = [s for s in range(vec.shape[1]) if all(not np.isnan(vec[r, s]).any() for r in runs)]
        d = []
        for s in steps:
            dist = [np.linalg.norm(vec[x, s] / np.linalg.norm(vec[x, s]) - vec[y, s] / np.linalg.norm(vec[y, s])) for x, y in pairs_]
            d.append(sum(dist) / len(dist))
        np.testing.assert_allclose(ds.mean_distance.values[i, steps], d, rtol=1e-9)
        ref = linregress(steps, np.log(d))
        assert ds.exponent.values[i] == pytest.approx(ref.slope, rel=1e-6, abs=1e-12)
        assert ds.r_squared.values[i] == pytest.approx(ref.rvalue ** 2, rel=1e-6, abs=1e-12)
        assert ds.status.values[i] == ("ok" if ref.rvalue ** 2 >= 0.8 else "poor-fit")
    path = bounded.divergence_pairs(eid, "DummyText", pairs, store=store, client=client, pairing="all", name="all")
    assert (panicflow.open_experiment(eid, store=store)[path].ds.n_pairs.values == 16).all()


def test_pairs_file_errors(bnd, tmp_path, capsys):
    store, eid, _ = bnd
    prompts = ["a cat", "a red circle"]
    f = tmp_path / "p.yaml"
    f.write_text("- {prompt_a: a cat, prompt_b: a red circle}\n")
    assert bounded.read_pairs(str(f), prompts) == [("a cat", "a red circle")]
    bad = {"missing.csv": None, "x.yaml": "pairs: [a cat, [", "y.yaml": "pairs: 3\n", "z.csv": "a cat,a red circle,a dog\n",
           "w.csv": "a cat,a cat\n", "v.csv": "a cat,a red circle\na red circle,a cat\n", "u.txt": "a cat,a red circle\n",
           "t.csv": "prompt_a,prompt_b\n", "s.yaml": "- [a cat, 3]\n"}
    words = {"missing.csv": "no such file", "x.yaml": "not valid YAML", "y.yaml": "expected a list of prompt pairs",
             "z.csv": "pair 1 is not two prompts", "w.csv": "names one prompt twice", "v.csv": "listed twice",
             "u.txt": "expected a .yaml, .yml or .csv", "t.csv": "no pairs", "s.yaml": "pair 1 is not two prompts"}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=words[name]):
            bounded.read_pairs(str(tmp_path / name), prompts)
    f = tmp_path / "unknown.csv"
    f.write_text("a cat,a dog\n")
    assert main(["analyse", "divergence", eid, "--model", "DummyText", "--pairs", str(f), "--store", store]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'a dog' is not a prompt of experiment" in err and "'a cat', 'a red circle'" in err
    for args, said in ((["--measures", "pairs"], "needs --pairs FILE"), (["--measures", "lyapunov"], "--measures"),
                       (["--measures", "bounded", "--max-lag", "1"], "--max-lag"), (["--measures", "bounded", "--saturation", "1.5"], "--saturation"),
                       (["--pairs", str(tmp_path / "p.yaml"), "--pairing", "seeds"], "--pairing")):
        assert main(["analyse", "divergence", eid, "--model", "DummyText", *args, "--store", store]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err


def test_cli_tables_and_charts(bnd, client, tmp_path):
    from panicflow.analysis.plots import figure, plot

    store, eid, pairs = bnd
    r = CliRunner().invoke(analyse_app, ["divergence", eid, "--model", "DummyVision", "--measures", "bounded,ftle", "--pairs", pairs,
                                         "--max-lag", "16", "--name", "cli", "--store", store, "--scheduler", client.scheduler.address,
                                         "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["paths"] == ["analysis/divergence/cli", "analysis/bounded/cli", "analysis/divergence_pairs/cli"]
    assert out["path"] == "analysis/divergence/cli" and len(out["groups"]) == 4
    assert len(out["bounded"]["groups"]) == 4 and all(g["n_runs"] == 4 for g in out["bounded"]["groups"])
    assert [(g["prompt_a"], g["prompt_b"], g["n_pairs"]) for g in out["pairs"]["groups"]] == [("a cat", "a red circle", 6)] * 2
    r = CliRunner().invoke(analyse_app, ["divergence", eid, "--model", "DummyVision", "--measures", "bounded", "--max-lag", "16",
                                         "--name", "cli", "--store", store, "--scheduler", client.scheduler.address])
    assert r.exit_code == 0 and r.stdout.strip() == "analysis/bounded/cli" and "saturates at lag" in r.stderr

    ds = panicflow.open_experiment(eid, store=store)["analysis/bounded/cli"].ds
    t = tables.table("bounded", eid, store=store)
    t = t[t.result == "cli"].sort_values("run")
    assert len(t) == 16 and (t.embedding_model == "DummyVision").all()
    np.testing.assert_array_equal(t.saturation_time, ds.saturation_time.values)
    assert list(t.saturation_status) == list(ds.saturation_status.values) and list(t.decay_status) == list(ds.decay_status.values)
    c = tables.table("bounded_curves", eid, store=store)
    c = c[c.result == "cli"]
    assert len(c) == int((ds.msad_pairs.values > 0).sum())
    row = c[(c.run == 5) & (c.lag == 4)].iloc[0]
    assert row.msad == ds.msad.values[5, 3] and row.n_pairs == ds.msad_pairs.values[5, 3]
    gt = tables.table("bounded_groups", eid, store=store)
    gt = gt[gt.result == "cli"]
    assert list(gt.network) == list(ds.group_network.values) and np.allclose(gt.plateau, ds.group_plateau.values)
    gc = tables.table("bounded_group_curves", eid, store=store)
    assert len(gc[gc.result == "cli"]) == int((ds.group_msad_pairs.values > 0).sum())
    pt = tables.table("divergence_pairs", eid, store=store)
    pd_ = panicflow.open_experiment(eid, store=store)["analysis/divergence_pairs/cli"].ds
    pt = pt[pt.result == "cli"]
    assert list(pt.status) == list(pd_.status.values) and (pt.pairing == "matched").all() and np.allclose(pt.exponent, pd_.exponent.values)
    pc = tables.table("divergence_pairs_curves", eid, store=store)
    assert len(pc[pc.result == "cli"]) == int(np.isfinite(pd_.mean_distance.values).sum())

    paths = plot(eid, "bounded", out=tmp_path, store=store, result="cli")
    assert [p.name for p in paths] == ["bounded-cli.png", "bounded-cli.svg"] and all(p.stat().st_size > 10_000 for p in paths)
    fig = figure(eid, "bounded", store=store, result="cli")
    texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any("saturated at lag 2" in x for x in texts) and any("C < 1/e at lag 2" in x for x in texts)
    assert [p.name for p in plot(eid, "divergence_pairs", out=tmp_path, store=store, result="cli")][0] == "divergence_pairs-cli.png"
    bare = str(tmp_path / "bare")
    shutil.copytree(store, bare)
    shutil.rmtree(os.path.join(bare, "experiments", Store(bare).experiment(eid).id, "data.zarr", "analysis"))
    with pytest.raises(UserError, match="--measures bounded"):
        figure(eid, "bounded", store=bare)
    with pytest.raises(UserError, match="--pairs FILE"):
        figure(eid, "divergence_pairs", store=bare)
