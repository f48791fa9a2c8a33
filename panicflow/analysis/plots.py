"""Charts of an experiment as PNG and SVG files (matplotlib; docs/analysis.md, "Charts").

``plot(experiment_id, kind, out=DIR, store=..., clustering=None) -> [png, svg]``; kinds:

* ``diagrams``: persistence diagrams, birth against death, coloured by homology dimension,
  one panel per embedding model (all runs; infinite bars on a dashed line at the top);
* ``entropy``: persistent entropy per network (box, runs as dots, and the mean with its 95%
  BCa bootstrap interval from ``entropy.summarise``), embedding model x homology dimension;
* ``drift``: semantic drift (cosine distance to the run's start) along the steps, median and
  interquartile band over each network's runs; needs ``panicflow analyse drift``;
* ``clusters``: timelines, one row per run, coloured by cluster (the seven largest in colour);
* ``transitions``: P(next cluster | current cluster) per network, a heat map;
* ``stays``: distribution of stay lengths in one cluster per network (histogram, survival);
* ``map``: a 2-D PCA of (at most 20,000) unit-normalised embeddings, coloured by cluster.

The last four read a stored clustering (``clustering``, default the most recent; missing:
one line naming the ``panicflow analyse cluster`` command to run, a ``UserError``);
``transitions`` and ``stays`` read its sequences result of the default name (noise kept),
and compute and store it (``sequences.sequences``) when there is none. No pyplot: each chart is its own
``Figure`` saved by the Agg (PNG) and SVG canvases, so nothing global is switched. Style:
Okabe-Ito colours for categories (colour-blind safe; cividis past eight, and for quantities),
7 inches wide (a printed page), 9-point text, PNG at 200 dpi. Files are written to a
temporary name and renamed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
from cycler import cycler

from ..errors import UserError
from ..store.experiment import Experiment
from .results import list_results, open_result, open_store

KINDS = ("diagrams", "entropy", "drift", "clusters", "transitions", "stays", "map")
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
NOISE, OTHER, BLANK = "#D9D9D9", "#7F7F7F", "#FFFFFF"
WIDTH, DPI = 7.0, 200
TOP_CLUSTERS = 7  # clusters drawn in their own colour; the rest share OTHER
MAX_BARS = 100_000  # points per (model, homology dimension) in a diagram panel
MAP_POINTS = 20_000
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "panicflow",
         "axes.prop_cycle": cycler(color=OKABE_ITO)}


@dataclass(frozen=True)
class _Input:
    location: str
    exp: Experiment
    clustering: str | None
    store_results: bool = True  # a chart may compute and store the result it needs (sequences)


def plot(experiment_id: str, kind: str, out: str | os.PathLike = ".", store: str | None = None, *,
         clustering: str | None = None, store_results: bool = True) -> list[Path]:
    """Draw one chart of the experiment; returns the PNG and SVG paths (``out/<kind>[-<clustering>].png|svg``).

    ``store_results=False`` (the report page, which writes nothing into the store): a chart whose
    result is not stored yet (transitions and stays need the clustering's sequences) says what to
    run instead (``UserError``)."""
    from ..store import default_location

    if kind not in KINDS:
        raise UserError(f"plot: unknown chart {kind!r}; choose one of {', '.join(KINDS)}")
    loc = str(store) if store is not None else default_location()
    inp = _Input(loc, open_store(loc).experiment(experiment_id), clustering, store_results)
    with matplotlib.rc_context(STYLE):
        fig, stem = _DRAW[kind](inp)
        return _save(fig, Path(out), stem)


def _save(fig, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("png", "svg"):
        path, tmp = folder / f"{stem}.{fmt}", folder / f".{stem}.{fmt}.tmp"
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        os.replace(tmp, path)  # a finished file only
        paths.append(path)
    return paths


def _figure(rows: int, cols: int, row_height: float, width: float = WIDTH, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, min(22.0, rows * row_height + 0.6)), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def colours(n: int) -> list:
    """n colour-blind-safe category colours: Okabe-Ito, or cividis samples past eight."""
    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    from matplotlib import colormaps

    return [colormaps["cividis"](x) for x in np.linspace(0, 0.95, n)]


def _network(name: str) -> str:
    return " → ".join(name.split(","))


def _hide_unused(axes, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


# ---------------------------------------------------------------------- charts
def _diagrams(inp: _Input):
    from .tables import iter_table

    parts: dict[tuple[str, int], list[np.ndarray]] = {}
    runs: set[int] = set()
    for batch in iter_table("bars", inp.exp.id, inp.location):
        m, k = batch.column("embedding_model").to_numpy(zero_copy_only=False), batch.column("homology_dim").to_numpy()
        bd = np.column_stack([batch.column("birth").to_numpy(), batch.column("death").to_numpy()])
        runs.update(batch.column("run").to_numpy().tolist())
        for key in set(zip(m.tolist(), k.tolist())):
            parts.setdefault(key, []).append(bd[(m == key[0]) & (k == key[1])])
    if not parts:
        raise UserError(f"plot diagrams: experiment {inp.exp.id} has no persistence diagram yet (see `panicflow experiment status {inp.exp.id}`)")
    models = [m for m in inp.exp.config.embedding_models if any(key[0] == m for key in parts)]
    dims = sorted({key[1] for key in parts})
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = _figure(rows, cols, WIDTH / cols + 0.3)
    rng = np.random.default_rng(0)
    sampled = False
    for ax, model in zip(axes.flat, models):
        data = {k: np.concatenate(parts[(model, k)]) for k in dims if (model, k) in parts}
        finite = np.concatenate([d[np.isfinite(d[:, 1]), 1] for d in data.values()])
        top = float(finite.max()) * 1.08 if len(finite) and finite.max() > 0 else 1.0
        for k, colour in zip(dims, colours(len(dims))):
            if k not in data:
                continue
            d = data[k]
            if len(d) > MAX_BARS:
                d, sampled = d[rng.choice(len(d), MAX_BARS, replace=False)], True
            y = np.where(np.isfinite(d[:, 1]), d[:, 1], top)
            ax.scatter(d[:, 0], y, s=6, alpha=0.45, color=colour, linewidths=0, rasterized=True, label=f"H{k} ({len(data[k]):,} bars)")
        ax.plot([0, top], [0, top], color="#555555", lw=0.8)
        ax.axhline(top, color="#555555", lw=0.8, ls="--")
        ax.text(0, top, " ∞", va="bottom", ha="left", fontsize=8)
        ax.set(xlim=(0, top * 1.02), ylim=(0, top * 1.06), xlabel="birth", ylabel="death", title=model)
        ax.legend(loc="lower right", markerscale=1.5, frameon=False)
    _hide_unused(axes, len(models))
    fig.suptitle(f"Persistence diagrams of {len(runs)} runs" + (f"\n({MAX_BARS:,} bars drawn at random per dimension)" if sampled else ""))
    return fig, "diagrams"


def _entropy(inp: _Input):
    from .entropy import grouped_entropies, summarise

    groups = {k: v for k, (v, _) in grouped_entropies(inp.exp).items() if len(v)}
    if not groups:
        raise UserError(f"plot entropy: experiment {inp.exp.id} has no persistent entropy yet (no usable diagram)")
    models = [m for m in inp.exp.config.embedding_models if any(k[1] == m for k in groups)]
    dims = sorted({k[2] for k in groups})
    networks = sorted({k[0] for k in groups})
    palette = dict(zip(networks, colours(len(networks))))
    fig, axes = _figure(len(models), len(dims), 0.45 * len(networks) + 1.0, sharey=True)
    rng = np.random.default_rng(0)
    for i, model in enumerate(models):
        for j, dim in enumerate(dims):
            ax = axes[i, j]
            for y, net in enumerate(networks):
                v = groups.get((net, model, dim))
                if v is None:
                    continue
                ax.boxplot(v, positions=[y], orientation="horizontal", widths=0.6, showfliers=False,
                           medianprops={"color": "#000000"}, boxprops={"color": "#555555"}, whiskerprops={"color": "#555555"},
                           capprops={"color": "#555555"})
                ax.scatter(v, y + rng.uniform(-0.18, 0.18, len(v)), s=7, color=palette[net], alpha=0.7, linewidths=0, zorder=3)
                s = summarise(v)
                if np.isfinite(s["ci_low"]):
                    ax.errorbar(s["mean"], y - 0.38, xerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]], fmt="D",
                                ms=4, color="#000000", capsize=2, lw=1, zorder=4)
            ax.set_yticks(range(len(networks)), [_network(n) for n in networks])
            ax.set_ylim(len(networks) - 0.4, -0.8)  # the first network on top
            if i == 0:
                ax.set_title(f"H{dim}")
            if i == len(models) - 1:
                ax.set_xlabel("persistent entropy")
        axes[i, 0].set_ylabel(model)
    fig.suptitle("Persistent entropy per run\n(box: quartiles; dots: runs; ◆: mean with its 95% bootstrap interval)")
    return fig, "entropy"


def _drift(inp: _Input):
    found = list_results(inp.exp, "drift")
    if not found:
        models = inp.exp.config.embedding_models
        each = f"--model {models[0]}" if len(models) == 1 else f"--model M for each of {', '.join(models)}"
        raise UserError(f"plot drift: experiment {inp.exp.id} has no drift result; run `panicflow analyse drift {inp.exp.id} {each}` first")
    g = inp.exp.group(read_only=True)
    networks = g["network"][:]
    names = sorted(set(networks))
    palette = dict(zip(names, colours(len(names))))
    cols = min(2, len(found))
    rows = -(-len(found) // cols)
    fig, axes = _figure(rows, cols, 2.6, sharey=True)
    for ax, model in zip(axes.flat, found):
        cos = g[f"analysis/drift/{model}/cosine_distance"][:]
        for net in names:
            x = cos[networks == net]
            steps = np.flatnonzero(~np.isnan(x).all(axis=0))
            if not len(steps):
                continue
            q = np.nanquantile(x[:, steps], [0.25, 0.5, 0.75], axis=0)
            ax.fill_between(steps, q[0], q[2], color=palette[net], alpha=0.25, linewidth=0)
            ax.plot(steps, q[1], color=palette[net], lw=1.3, label=f"{_network(net)} ({len(x)} runs)")
        ax.set(title=model, xlabel="step", ylabel="cosine distance to the run's start")
        ax.legend(frameon=False)
    _hide_unused(axes, len(found))
    fig.suptitle("Semantic drift\n(median over each network's runs; band: 25th to 75th percentile)")
    return fig, "drift"


def _clustering(inp: _Input):
    """The stored clustering, its labels (run, step) and its largest clusters in this experiment."""
    g = open_result(inp.exp, "clusters", inp.clustering)
    labels = g["label"][:]
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    top = ids[np.argsort(-counts, kind="stable")][:TOP_CLUSTERS]
    return g, labels, [int(c) for c in top], len(ids)


def _legend_patches(top: list[int], more: bool):
    from matplotlib.patches import Patch

    items = [Patch(color=c, label=f"cluster {k}") for k, c in zip(top, OKABE_ITO)]
    if more:
        items.append(Patch(color=OTHER, label="other clusters"))
    return items + [Patch(facecolor=NOISE, label="noise")]


def _clusters(inp: _Input):
    from matplotlib.colors import ListedColormap

    grp, labels, top, n_clusters = _clustering(inp)
    g = inp.exp.group(read_only=True)
    n_runs, n_steps = labels.shape
    lengths = np.where(g["stop_reason"][:] != "", g["length"][:], 0)
    # a step without a vector of the model keeps the label of the run's last vector before it
    idx = np.where(labels >= -1, np.arange(n_steps)[None, :], -1)
    np.maximum.accumulate(idx, axis=1, out=idx)
    filled = np.take_along_axis(labels, np.maximum(idx, 0), axis=1)
    filled[(idx < 0) | (np.arange(n_steps)[None, :] >= lengths[:, None])] = -2
    code = np.full(filled.shape, 2, np.int8)  # other clusters
    code[filled == -2], code[filled == -1] = 0, 1
    for i, c in enumerate(top):
        code[filled == c] = 3 + i
    networks, prompts, seeds = g["network"][:], g["prompt"][:], g["seed"][:]
    order = sorted(range(n_runs), key=lambda r: (networks[r], prompts[r], seeds[r], r))
    width = max(1, int(lengths.max()))
    fig, axes = _figure(1, 1, min(16.0, 0.16 * n_runs + 1.6))
    ax = axes[0, 0]
    cmap = ListedColormap([BLANK, NOISE, OTHER, *OKABE_ITO[:len(top)]])
    ax.imshow(code[order, :width], aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5,
              extent=(-0.5, width - 0.5, n_runs - 0.5, -0.5))
    sorted_nets = [networks[r] for r in order]
    bounds = [i for i in range(1, n_runs) if sorted_nets[i] != sorted_nets[i - 1]]
    for b in bounds:
        ax.axhline(b - 0.5, color="#000000", lw=0.8)
    if n_runs <= 40:
        ax.set_yticks(range(n_runs), [f"{r} · seed {seeds[r]} · {prompts[r][:18]}" for r in order])
    else:
        ax.set_yticks([])
    edges = [0, *bounds, n_runs]
    right = ax.secondary_yaxis("right")
    right.set_yticks([(a + b - 1) / 2 for a, b in zip(edges, edges[1:])], [_network(sorted_nets[a]) for a in edges[:-1]])
    ax.set(xlabel="step", ylabel="run" if n_runs <= 40 else f"{n_runs} runs")
    ax.legend(handles=_legend_patches(top, n_clusters > len(top)), loc="upper center", bbox_to_anchor=(0.5, -0.12),
              ncol=5, frameon=False)
    fig.suptitle(f"Cluster timelines: {grp.attrs['parameters']['model']}, clustering {grp.basename}\n"
                 "(one row per run; lines separate networks)")
    return fig, f"clusters-{grp.basename}"


def _sequences(inp: _Input):
    """The clustering's sequences result of the default name (noise kept), computed and stored if missing."""
    from .sequences import sequences

    src = open_result(inp.exp, "clusters", inp.clustering).basename
    if src not in list_results(inp.exp, "sequences"):
        if not inp.store_results:
            raise UserError(f"run `panicflow analyse sequences {inp.exp.id} --clustering {src}` first")
        sequences(inp.exp.id, src, store=inp.location)
    return open_result(inp.exp, "sequences", src)


def _transitions(inp: _Input):
    seq = _sequences(inp)
    _, _, _, n_clusters = _clustering(inp)
    nets = seq["transition_network"][:]
    frm, to, cnt = seq["transition_from"][:], seq["transition_to"][:], seq["transition_count"][:]
    if not len(cnt):
        raise UserError(f"plot transitions: no run of experiment {inp.exp.id} has two clustered vectors in a row")
    # categories: the largest clusters by how often they occur, then the others together, then noise
    totals: dict[int, int] = {}
    for f, c in zip(frm.tolist(), cnt.tolist()):
        totals[f] = totals.get(f, 0) + c
    top = sorted((k for k in totals if k >= 0), key=lambda k: -totals[k])[:8]
    cats = [str(k) for k in top] + (["other"] if n_clusters > len(top) else []) + (["noise"] if (frm == -1).any() or (to == -1).any() else [])
    where = {k: i for i, k in enumerate(top)}

    def cat(k: int) -> int:
        return where.get(k, cats.index("noise") if k == -1 else cats.index("other") if "other" in cats else 0)

    names = sorted(set(nets))
    cols = min(2, len(names))
    rows = -(-len(names) // cols)
    side = WIDTH / cols
    fig, axes = _figure(rows, cols, side)
    im = None
    for ax, net in zip(axes.flat, names):
        m = np.zeros((len(cats), len(cats)))
        sel = nets == net
        for f, t, c in zip(frm[sel].tolist(), to[sel].tolist(), cnt[sel].tolist()):
            m[cat(f), cat(t)] += c
        rowsum = m.sum(axis=1, keepdims=True)
        p = np.divide(m, rowsum, out=np.full_like(m, np.nan), where=rowsum > 0)
        im = ax.imshow(p, cmap="cividis", vmin=0, vmax=1, interpolation="nearest")
        for (i, j), v in np.ndenumerate(p):
            if np.isfinite(v) and v >= 0.005:  # blank cells read as zero
                ax.text(j, i, f"{v:.2f}".lstrip("0"), ha="center", va="center", fontsize=6,
                        color="#000000" if v > 0.55 else "#FFFFFF")
        ax.set_xticks(range(len(cats)), cats, rotation=90)
        ax.set_yticks(range(len(cats)), cats)
        ax.set(xlabel="next cluster", ylabel="current cluster", title=_network(net))
    _hide_unused(axes, len(names))
    fig.colorbar(im, ax=axes, label="P(next | current)", shrink=0.8)
    fig.suptitle(f"Transitions between consecutive vectors of a run\n{seq.attrs['model']}, {seq.basename}")
    return fig, f"transitions-{seq.attrs['clustering']}"


def _stays(inp: _Input):
    seq = _sequences(inp)
    label, length, run = seq["stay_label"][:], seq["stay_length"][:], seq["stay_run"][:]
    keep = label >= 0
    if not keep.any():
        raise UserError(f"plot stays: no vector of experiment {inp.exp.id} is in a cluster under {seq.attrs['clustering']}")
    networks = inp.exp.group(read_only=True)["network"][:][run[keep]]
    length = length[keep]
    names = sorted(set(networks))
    palette = dict(zip(names, colours(len(names))))
    fig, axes = _figure(1, 2, 3.0)
    bins = np.unique(np.geomspace(1, length.max() + 1, 25).astype(int))
    for net in names:
        v = np.sort(length[networks == net])
        counts, _ = np.histogram(v, bins=bins)
        axes[0, 0].stairs(counts, bins, color=palette[net], lw=1.3, label=f"{_network(net)} ({len(v):,} stays)")
        axes[0, 1].step(v, 1.0 - np.arange(len(v)) / len(v), where="post", color=palette[net], lw=1.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=min(3, len(names)), frameon=False)
    axes[0, 0].set(xscale="log", yscale="log", xlabel="stay length (vectors)", ylabel="stays")
    axes[0, 1].set(xscale="log", yscale="log", xlabel="stay length L (vectors)", ylabel="fraction of stays ≥ L")
    fig.suptitle(f"Stays in one cluster: {seq.attrs['model']}, {seq.attrs['clustering']}\n"
                 "(noise left out; a run's last stay is cut short by the run's end)")
    return fig, f"stays-{seq.attrs['clustering']}"


def _map(inp: _Input):
    from sklearn.decomposition import PCA

    from .results import unit

    grp, labels, top, n_clusters = _clustering(inp)
    model = grp.attrs["parameters"]["model"]
    rr, ss = np.nonzero(labels >= -1)
    if len(rr) < 3:
        raise UserError(f"plot map: fewer than 3 clustered vectors in experiment {inp.exp.id}")
    pick = np.sort(np.random.default_rng(0).choice(len(rr), min(MAP_POINTS, len(rr)), replace=False))
    rr, ss = rr[pick], ss[pick]
    vec = inp.exp.group(read_only=True)[f"embeddings/{model}/vector"]
    x = np.concatenate([np.asarray(vec.oindex[int(r), ss[rr == r]], np.float64) for r in np.unique(rr)])
    lab = labels[rr, ss]  # rr is sorted, so the rows above are in this order
    pca = PCA(n_components=2, random_state=0).fit(unit(x))
    xy = pca.transform(unit(x))
    fig, axes = _figure(1, 1, 5.2)
    ax = axes[0, 0]
    layers = [(lab == -1, NOISE, "noise"), ((lab >= 0) & ~np.isin(lab, top), OTHER, "other clusters")]
    layers += [(lab == c, colour, f"cluster {c}") for c, colour in zip(top, OKABE_ITO)]
    for sel, colour, name in layers:
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=colour, alpha=0.7, linewidths=0, rasterized=True, label=f"{name} ({sel.sum():,})")
    ev = pca.explained_variance_ratio_ * 100
    ax.set(xlabel=f"PC1 ({ev[0]:.0f}% of variance)", ylabel=f"PC2 ({ev[1]:.0f}% of variance)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=2, frameon=False)
    fig.suptitle(f"{model}: PCA of {len(xy):,} unit-normalised embeddings\ncoloured by {grp.basename}\n"
                 "(clustered in its own space, so clusters may overlap here)")
    return fig, f"map-{grp.basename}"


_DRAW: dict[str, Callable[[_Input], tuple]] = {
    "diagrams": _diagrams, "entropy": _entropy, "drift": _drift, "clusters": _clusters,
    "transitions": _transitions, "stays": _stays, "map": _map,
}
