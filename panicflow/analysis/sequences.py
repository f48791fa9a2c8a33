"""Cluster sequences: the way each run moves among the clusters of a stored clustering.

A run's sequence is the cluster label of each of its vectors of the clustering's model, in
step order (noise, -1, is a state of its own; ``drop_noise`` leaves noise out and joins what
is around it, as the earlier tool did). From the sequences:

* stays: the maximal stretches of one label (run-length encoding), with the step of their
  first and last vector and their length in vectors; a run's stays in order are its whole
  sequence. The last stay of a run is ``final``: the run ended in it, so its length is a lower
  bound (right-censored).
* transitions: per network, the count of each (label, next label) of consecutive vectors,
  self-transitions included (a Markov chain's counts: row-normalised, P(next | current)).

Result ``analysis/sequences/<name>`` (name: the clustering's, with ``-no-noise`` for
``drop_noise``): ``stay_run``, ``stay_label``, ``stay_start``, ``stay_end``, ``stay_length``,
``stay_final`` on dimension ``stay`` (sorted by run, then step); ``transition_network``,
``transition_from``, ``transition_to``, ``transition_count`` on ``transition`` (per network,
most common first). Cheap (labels only), so computed in this process, a block of runs at a time.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .results import open_result, open_store, versions, write_result

KIND = "sequences"
RUNS_PER_BLOCK = 256
NO_VECTOR = -2


def stays_of(labels: np.ndarray, drop_noise: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One run's (label, first step, last step, length in vectors) per stay, from its (step,) labels."""
    steps = np.flatnonzero(labels >= (0 if drop_noise else -1))
    seq = labels[steps]
    if len(seq) == 0:
        return (np.zeros(0, np.int32),) + (np.zeros(0, np.int64),) * 3
    starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
    ends = np.r_[starts[1:], len(seq)] - 1
    return seq[starts].astype(np.int32), steps[starts], steps[ends], ends - starts + 1


def transitions_of(labels: np.ndarray, drop_noise: bool = False) -> Counter:
    """Counts of (label, next label) over one run's consecutive vectors."""
    seq = labels[labels >= (0 if drop_noise else -1)]
    return Counter(zip(seq[:-1].tolist(), seq[1:].tolist()))


def sequences(experiment_id: str, clustering: str | None = None, store: str | None = None, *,
              drop_noise: bool = False, name: str | None = None) -> str:
    """Stays and transitions of every run under a stored clustering (default: the most recent); returns the path."""
    from ..store import default_location

    exp = open_store(str(store) if store is not None else default_location()).experiment(experiment_id)
    src = open_result(exp, "clusters", clustering)
    model = src.attrs["parameters"]["model"]
    label = src["label"]
    networks = exp.group(read_only=True)["network"][:]
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("run", "label", "start", "end", "length", "final")}
    per_network: dict[str, Counter] = {}
    for a in range(0, label.shape[0], RUNS_PER_BLOCK):
        block = label[a:a + RUNS_PER_BLOCK]
        for i, row in enumerate(block):
            run = a + i
            lab, start, end, length = stays_of(row, drop_noise)
            final = np.zeros(len(lab), bool)
            final[-1:] = True
            for k, v in zip(cols, (np.full(len(lab), run), lab, start, end, length, final)):
                cols[k].append(v)
            per_network.setdefault(str(networks[run]), Counter()).update(transitions_of(row, drop_noise))
    stay = {k: np.concatenate(v) for k, v in cols.items()}
    rows = sorted(((net, f, t, c) for net, counts in per_network.items() for (f, t), c in counts.items()),
                  key=lambda r: (r[0], -r[3], r[1], r[2]))
    name = name or src.basename + ("-no-noise" if drop_noise else "")
    return write_result(exp, KIND, name, {
        "stay_run": (["stay"], stay["run"].astype(np.int64), {"description": "run of the stay"}),
        "stay_label": (["stay"], stay["label"].astype(np.int32), {"description": "cluster label (-1 noise)"}),
        "stay_start": (["stay"], stay["start"].astype(np.int64), {"description": "step of the stay's first vector"}),
        "stay_end": (["stay"], stay["end"].astype(np.int64), {"description": "step of the stay's last vector"}),
        "stay_length": (["stay"], stay["length"].astype(np.int64), {"description": "vectors in the stay"}),
        "stay_final": (["stay"], stay["final"], {"description": "the run ended in this stay (its length is a lower bound)"}),
        "transition_network": (["transition"], np.array([r[0] for r in rows], dtype=str), {"description": "network"}),
        "transition_from": (["transition"], np.array([r[1] for r in rows], dtype=np.int32), {"description": "label of a vector"}),
        "transition_to": (["transition"], np.array([r[2] for r in rows], dtype=np.int32), {"description": "label of the run's next vector"}),
        "transition_count": (["transition"], np.array([r[3] for r in rows], dtype=np.int64), {"description": "times it happened in the network's runs"}),
    }, {
        "kind": KIND, "model": model, "clustering": src.basename, "inputs": [exp.id],
        "parameters": {"clustering": src.basename, "model": model, "drop_noise": drop_noise},
        "versions": versions("numpy"),
    })

