"""Cluster sequences: stays and transitions against a run-length encoding and pandas counts of the stored labels."""

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering, sequences, tables
from panicflow.analysis.cli import analyse_app
from panicflow.errors import UserError


@pytest.fixture(scope="module")
def clustered(analysis_experiment, client):
    store, eid = analysis_experiment
    name = clustering.cluster([eid], "DummyVision", store=store, client=client, min_cluster_size=5, reduce="pca:4", name="seq")
    return store, eid, name


def test_stays_and_transitions_of_one_run():
    labels = np.array([-2, 3, 3, -1, 3, 5, 5, -2, 5, -2])
    lab, start, end, length = sequences.stays_of(labels)
    assert lab.tolist() == [3, -1, 3, 5] and start.tolist() == [1, 3, 4, 5]
    assert end.tolist() == [2, 3, 4, 8] and length.tolist() == [2, 1, 1, 3]
    lab, start, end, length = sequences.stays_of(labels, drop_noise=True)
    assert lab.tolist() == [3, 5] and start.tolist() == [1, 5] and end.tolist() == [4, 8] and length.tolist() == [3, 3]
    assert sequences.transitions_of(labels) == Counter({(3, 3): 1, (3, -1): 1, (-1, 3): 1, (3, 5): 1, (5, 5): 2})
    assert sequences.transitions_of(labels, drop_noise=True) == Counter({(3, 3): 2, (3, 5): 1, (5, 5): 2})
    assert len(sequences.stays_of(np.full(5, -2))[0]) == 0


@pytest.mark.parametrize("drop_noise", [False, True])
def test_stored_sequences_match_the_labels(clustered, drop_noise):
    store, eid, name = clustered
    path = sequences.sequences(eid, name, store=store, drop_noise=drop_noise)
    assert path == f"analysis/sequences/{name}" + ("-no-noise" if drop_noise else "")
    tree = panicflow.open_experiment(eid, store=store)
    ds = tree[path].ds
    labels = tree[f"analysis/clusters/{name}"].ds.label.values
    networks = tree["/"].ds.network.values
    expected_stays, expected_moves = [], Counter()
    for run, row in enumerate(labels):
        seq = [(s, int(x)) for s, x in enumerate(row) if x >= (0 if drop_noise else -1)]
        for label, group in itertools.groupby(seq, key=lambda p: p[1]):
            g = list(group)
            expected_stays.append((run, label, g[0][0], g[-1][0], len(g)))
        expected_moves.update((str(networks[run]), a[1], b[1]) for a, b in zip(seq, seq[1:]))
    got = list(zip(ds.stay_run.values.tolist(), ds.stay_label.values.tolist(), ds.stay_start.values.tolist(),
                   ds.stay_end.values.tolist(), ds.stay_length.values.tolist()))
    assert got == expected_stays
    assert ds.stay_final.values.sum() == labels.shape[0]  # every run has vectors: one last stay each
    last = np.r_[ds.stay_run.values[1:] != ds.stay_run.values[:-1], True]
    np.testing.assert_array_equal(ds.stay_final.values, last)
    moves = Counter({(n, int(f), int(t)): int(c) for n, f, t, c in zip(
        ds.transition_network.values, ds.transition_from.values, ds.transition_to.values, ds.transition_count.values)})
    assert moves == expected_moves
    assert (-1 in ds.stay_label.values) == (not drop_noise and (labels == -1).any())
    for net in set(ds.transition_network.values):  # most common first within a network
        c = ds.transition_count.values[ds.transition_network.values == net]
        assert (np.diff(c) <= 0).all()


def test_tables_stream_stays_by_run(clustered):
    store, eid, name = clustered
    sequences.sequences(eid, name, store=store)
    stays = tables.table("stays", eid, store=store)
    stays = stays[stays.result == name]
    streamed = [b for b in tables.iter_table("stays", eid, store=store, runs_per_block=3)]
    assert sum((b.column("result").to_numpy(zero_copy_only=False) == name).sum() for b in streamed) == len(stays)
    tree = panicflow.open_experiment(eid, store=store)
    labels = tree[f"analysis/clusters/{name}"].ds.label.values
    assert stays.length.sum() == (labels >= -1).sum()
    assert (stays.network == tree["/"].ds.network.values[stays.run]).all()
    tr = tables.table("transitions", eid, store=store)
    tr = tr[tr.result == name]
    # transitions: one fewer than the vectors of each run
    assert tr["count"].sum() == (labels >= -1).sum() - labels.shape[0]
    assert set(tr.clustering) == {name} and set(tr.embedding_model) == {"DummyVision"}


def test_cli_and_errors(clustered):
    store, eid, name = clustered
    r = CliRunner().invoke(analyse_app, ["sequences", eid, "--clustering", name, "--name", "seq-cli", "--store", store, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["path"] == "analysis/sequences/seq-cli" and out["stays"] > 0
    for items in out["top_transitions"].values():
        assert all(i["from"] != i["to"] for i in items) and len(items) <= 5
    with pytest.raises(UserError, match="no complete clusters result 'nope'"):
        sequences.sequences(eid, "nope", store=store)
