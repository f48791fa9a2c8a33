"""Charts of an experiment as PNG and SVG files (matplotlib; docs/analysis.md, "Charts").

``plot(experiment_id, kind, out=DIR, store=..., clustering=None, result=None, by=None, title=True)
-> [png, svg]``; ``figure(...)`` draws the same chart and returns its matplotlib ``Figure``
without writing anything. Kinds:

* ``diagrams``: persistence diagrams, birth against death, one marker per homology dimension
  (lower dimensions drawn on top; H0, all born at 0, as dashes on the y axis), one panel per
  embedding model (all runs; infinite bars on a dashed line at the top);
* ``entropy``: persistent entropy in nats per network (box, runs as dots, and the mean with its
  95% BCa bootstrap interval from ``entropy.summarise``), embedding model x homology dimension;
* ``drift``: semantic drift (cosine distance to the run's start) along the steps, median and
  interquartile band over each network's runs, and the runs left at each step (thin line,
  right axis); needs ``panicflow analyse drift``;
* ``divergence``: ln D(t) per (network, prompt) group of one divergence result, one panel per
  prompt, with its least-squares line: dashed in the network's colour with the exponent when
  R^2 >= ``GOOD_R2``, dotted grey and "poor fit" otherwise; the fit window shaded;
* ``bounded``: the motion on the sphere of one bounded result (bounded.py), a row per prompt: MSAD
  against the lag (runs thin, the group pooled thick, its plateau dashed and the time to saturation
  circled) and the autocorrelation C(lag) (the 1/e line, the decay time circled);
* ``divergence_pairs``: ln D(t) of the runs of two prompts (a paraphrase pair), a panel per pair,
  a line per network, with its fit drawn as the divergence chart draws it;
* ``distances``: the pairwise diagram distances of one distances result, a heat map per metric
  and homology dimension, runs ordered and separated by (network, prompt) group;
* ``durations``: seconds per model call (batched calls counted once) and per input, per model
  and batch size, from the invocations' ``started_at``/``ended_at``;
* ``clusters``: timelines, one row per run, coloured by cluster (the seven largest in colour);
* ``transitions``: P(next cluster | current cluster) per network, a heat map;
* ``stays``: distribution of stay lengths in one cluster per network (histogram, survival);
* ``map``: a 2-D PCA of (at most 20,000) unit-normalised embeddings, coloured by cluster, a
  dot's area growing with the vectors drawn on the same point.

``drift`` and ``entropy`` draw one panel (row) per prompt when the experiment has 2 to
``AUTO_PROMPT_PANELS`` prompts and pool the prompts otherwise; ``by="prompt"`` or
``by="network"`` chooses. ``title=False`` leaves the figure's title out (for a captioned figure;
panel titles stay). ``result`` names the divergence or distances result (default the most recent).
The last four read a stored clustering (``clustering``, default the most recent; missing:
one line naming the ``panicflow analyse cluster`` command to run, a ``UserError``), and their
titles describe it by its parameters (``describe_clustering``);
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
from .divergence import MIN_R_SQUARED, OK, POOR_FIT
from .results import list_results, open_result, open_store

KINDS = ("diagrams", "entropy", "drift", "divergence", "distances", "durations", "clusters", "transitions", "stays", "map",
         "bounded", "divergence_pairs")
CLUSTERING_KINDS = ("clusters", "transitions", "stays", "map")  # the charts --clustering names the input of
BY = ("network", "prompt")  # drift and entropy: pool the prompts, or one panel (row) per prompt
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
NOISE, OTHER, BLANK = "#D9D9D9", "#7F7F7F", "#FFFFFF"
WIDTH, DPI = 7.0, 200
FORMATS = ("png", "svg")  # every chart as both: the PNG for pages and slides, the SVG for papers
TOP_CLUSTERS = 7  # clusters drawn in their own colour; the rest share OTHER
MAX_BARS = 100_000  # points per (model, homology dimension) in a diagram panel
MAP_POINTS = 20_000
DURATION_RUNS = 4096  # durations: the invocations of at most this many ended runs, evenly spaced
AUTO_PROMPT_PANELS = 6  # drift and entropy: one panel per prompt by default up to this many prompts
MAX_PROMPT_PANELS = 12  # at most this many prompt panels (--by prompt, divergence)
GOOD_R2 = MIN_R_SQUARED  # divergence: a fit below this R^2 (stored as poor-fit) is drawn without its exponent
SMALL_RANGE = 30  # stays: lengths (and counts) up to this on linear axes with integer ticks
DIAGRAM_MARKERS = ("_", "o", "^", "s", "D", "v")  # H0 (all born at 0): a dash on the y axis
LABEL_CHARS = 28  # prompts in tick labels and panel titles are cut to this, with an ellipsis
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "panicflow",
         "axes.prop_cycle": cycler(color=OKABE_ITO)}
NO_TIME = np.iinfo(np.int64).min  # started_at/ended_at not recorded


@dataclass(frozen=True)
class _Input:
    location: str
    exp: Experiment
    clustering: str | None
    store_results: bool = True  # a chart may compute and store the result it needs (sequences)
    result: str | None = None  # divergence, distances: the result's name (default the most recent)
    by: str | None = None  # drift, entropy: "network" (prompts pooled), "prompt" (a panel per prompt), None: automatic
    title: bool = True  # False: no figure title (a captioned figure)


def _input(experiment_id: str, kind: str, store: str | None, clustering: str | None, result: str | None, by: str | None,
           title: bool, store_results: bool) -> _Input:
    from ..store import default_location

    if kind not in KINDS:
        raise UserError(f"plot: unknown chart {kind!r}; choose one of {', '.join(KINDS)}")
    if by is not None and by not in BY:
        raise UserError(f"--by: choose network or prompt, not {by!r}")
    if by is not None and kind not in ("drift", "entropy"):
        raise UserError(f"--by: only drift and entropy group by network (divergence has a panel per prompt), not {kind}")
    if result is not None and kind not in NAMED_RESULT_KINDS:
        raise UserError(f"--result: names the result a chart reads ({', '.join(NAMED_RESULT_KINDS)}); {kind} reads "
                        + ("a clustering (--clustering)" if kind in CLUSTERING_KINDS else "no named result"))
    if clustering is not None and kind not in CLUSTERING_KINDS:
        raise UserError(f"--clustering: only {', '.join(CLUSTERING_KINDS)} draw a clustering; {kind} reads "
                        + ("a named result (--result)" if kind in NAMED_RESULT_KINDS else "no named result"))
    loc = str(store) if store is not None else default_location()
    return _Input(loc, open_store(loc).experiment(experiment_id), clustering, store_results, result, by, title)


def figure(experiment_id: str, kind: str, store: str | None = None, *, clustering: str | None = None,
           result: str | None = None, by: str | None = None, title: bool = True, store_results: bool = True):
    """The chart ``kind`` as a matplotlib ``Figure`` (nothing written but what ``store_results`` allows); saved
    inside ``matplotlib.rc_context(STYLE)`` it gives the files ``plot`` writes."""
    inp = _input(experiment_id, kind, store, clustering, result, by, title, store_results)
    with matplotlib.rc_context(STYLE):
        return _DRAW[kind](inp)[0]


def plot(experiment_id: str, kind: str, out: str | os.PathLike = ".", store: str | None = None, *,
         clustering: str | None = None, result: str | None = None, by: str | None = None, title: bool = True,
         store_results: bool = True, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Draw one chart of the experiment; returns the PNG and SVG paths (``out/<kind>[-<name>].png|svg``,
    the name that of the clustering or of the divergence or distances result; ``formats``: only these, e.g.
    ``("png",)`` for the report page, which shows PNGs: each format is drawn again, the SVG about as long as the PNG).

    ``store_results=False`` (the report page, which writes nothing into the store): a chart whose
    result is not stored yet (transitions and stays need the clustering's sequences) says what to
    run instead (``UserError``). ``title=False``: no figure title, for a figure with a caption."""
    inp = _input(experiment_id, kind, store, clustering, result, by, title, store_results)
    with matplotlib.rc_context(STYLE):
        fig, stem = _DRAW[kind](inp)
        return _save(fig, Path(out), stem, formats)


def _save(fig, folder: Path, stem: str, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    if not formats or set(formats) - set(FORMATS):
        raise ValueError(f"formats: choose among {FORMATS}, not {formats!r}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path, tmp = folder / f"{stem}.{fmt}", folder / f".{stem}.{fmt}.tmp"
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        os.replace(tmp, path)  # a finished file only
        paths.append(path)
    return paths


def _figure(rows: int, cols: int, row_height: float, width: float = WIDTH, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, min(22.0, rows * row_height + 0.6)), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def _title(fig, inp: _Input, text: str) -> None:
    if inp.title:
        fig.suptitle(text)


def colours(n: int) -> list:
    """n colour-blind-safe category colours: Okabe-Ito, or cividis samples past eight."""
    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    from matplotlib import colormaps

    return [colormaps["cividis"](x) for x in np.linspace(0, 0.95, n)]


def _network(name: str) -> str:
    return " → ".join(name.split(","))


def short(text: str, n: int = LABEL_CHARS) -> str:
    """``text`` cut to at most n characters, an ellipsis saying it was cut."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1].rstrip() + "…"


def _quoted(prompt: str) -> str:
    return f"“{short(prompt)}”"


def _hide_unused(axes, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _prompt_panels(inp: _Input, prompts, chart: str) -> list:
    """Prompts that get a panel each, or [None]: one panel with the prompts pooled."""
    found = sorted(set(str(p) for p in prompts))
    by = inp.by or ("prompt" if 2 <= len(found) <= AUTO_PROMPT_PANELS else "network")
    if by == "network" or len(found) < 2:
        return [None]
    if len(found) > MAX_PROMPT_PANELS:
        raise UserError(f"plot {chart} --by prompt: {len(found)} prompts, more than {MAX_PROMPT_PANELS} panels; "
                        f"leave --by out (prompts pooled) or export the tables (`panicflow export tables {inp.exp.id}`)")
    return found


def describe_clustering(attrs: dict) -> str:
    """A clustering in words, from its parameters: e.g. ``HDBSCAN of DummyText (min cluster size 5, PCA to 4
    dimensions): 3 clusters``, for titles (its stored name is a digest)."""
    p = attrs.get("parameters", {})
    algorithm = {"hdbscan": "HDBSCAN", "fast_hdbscan": "fast-hdbscan", "sklearn": "scikit-learn HDBSCAN", "evoc": "EVoC"}.get(
        p.get("algorithm"), str(p.get("algorithm", "")))
    parts = [f"min cluster size {p.get('min_cluster_size')}"]
    if p.get("min_samples") not in (None, p.get("min_cluster_size")):
        parts.append(f"min samples {p['min_samples']}")
    reduce = str(p.get("reduce", ""))
    parts.append("no reduction" if reduce == "none" else f"PCA to {reduce[4:]} dimensions" if reduce.startswith("pca:") else reduce)
    if p.get("sample"):
        parts.append(f"fitted on {int(p['sample']):,} vectors")
    if len(attrs.get("inputs", [])) > 1:
        parts.append(f"{len(attrs['inputs'])} experiments in one space")
    if attrs.get("fitted") is False:  # analyse assign: the frozen model of a clustering fitted elsewhere
        parts.append(f"fitted on {attrs.get('source_experiment')}, assigned without refitting")
    n = attrs.get("n_clusters")
    return f"{algorithm} of {p.get('model')} ({', '.join(parts)})" + (f": {n} clusters" if n is not None else "")


def _plain_ticks(axis, log: bool, integer: bool = True) -> None:
    """Tick labels as plain numbers (1, 2, 5, 10, 0.1), never 2×10^0; ``integer``: whole numbers only on a linear axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    if log:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(integer=integer))
    axis.set_major_formatter(fmt)


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
            marker = DIAGRAM_MARKERS[min(k, len(DIAGRAM_MARKERS) - 1)]
            at_zero = bool(len(d)) and bool((d[:, 0] == 0).all())
            name = f"H{k}, all born at 0 ({len(data[k]):,} bars)" if at_zero else f"H{k} ({len(data[k]):,} bars)"
            # lower dimensions on top (fewer, longer bars hide under H1's cloud otherwise); a line marker
            # ("_") needs a line width to show
            ax.scatter(d[:, 0], y, s=28 if marker == "_" else 7, marker=marker, alpha=0.6 if marker == "_" else 0.45,
                       color=colour, linewidths=1.0 if marker == "_" else 0, rasterized=True, zorder=3 + len(dims) - k,
                       label=name, clip_on=False)
        ax.plot([0, top], [0, top], color="#555555", lw=0.8)
        ax.axhline(top, color="#555555", lw=0.8, ls="--")
        ax.text(0, top, " ∞", va="bottom", ha="left", fontsize=8)
        # the x axis starts left of 0, so points born at 0 sit beside the y axis rather than on it
        ax.set(xlim=(-0.04 * top, top * 1.02), ylim=(0, top * 1.06), xlabel="birth", ylabel="death", title=model)
        ax.legend(loc="lower right", markerscale=1.5, frameon=False)
    _hide_unused(axes, len(models))
    _title(fig, inp, f"Persistence diagrams of {len(runs)} runs" + (f"\n({MAX_BARS:,} bars drawn at random per dimension)" if sampled else ""))
    return fig, "diagrams"


def _run_entropies(exp) -> dict[str, np.ndarray]:
    """model -> (run, homology dim) persistent entropy; NaN for runs not ended or without a usable diagram
    (the observations of ``entropy.grouped_entropies``)."""
    g = exp.group(read_only=True)
    ended = g["stop_reason"][:] != ""
    out = {}
    for model in exp.config.embedding_models:
        d = g[f"diagrams/{model}"]
        e = np.asarray(d["entropy"][:], np.float64)
        ok = np.array([str(s).startswith("ok") for s in d["status"][:]], bool) & ended
        e[~ok] = np.nan
        out[model] = e
    return out


def _entropy(inp: _Input):
    from .entropy import summarise

    g = inp.exp.group(read_only=True)
    networks, prompts = g["network"][:], g["prompt"][:]
    per_model = _run_entropies(inp.exp)
    panels = _prompt_panels(inp, prompts, "entropy")
    groups: dict[tuple, np.ndarray] = {}
    for model, e in per_model.items():
        for k in range(e.shape[1]):
            for net in sorted(set(networks)):
                for prompt in panels:
                    sel = (networks == net) & ((prompts == prompt) if prompt is not None else True)
                    v = e[sel, k]
                    v = v[np.isfinite(v)]
                    if len(v):
                        groups[(net, prompt, model, k)] = v
    if not groups:
        raise UserError(f"plot entropy: experiment {inp.exp.id} has no persistent entropy yet (no usable diagram)")
    models = [m for m in inp.exp.config.embedding_models if any(k[2] == m for k in groups)]
    dims = sorted({k[3] for k in groups})
    names = sorted({k[0] for k in groups})
    palette = dict(zip(names, colours(len(names))))
    rows = [(m, p) for m in models for p in panels if any(k[1] == p and k[2] == m for k in groups)]
    fig, axes = _figure(len(rows), len(dims), 0.45 * len(names) + 1.0, sharey=True)
    rng = np.random.default_rng(0)
    for i, (model, prompt) in enumerate(rows):
        for j, dim in enumerate(dims):
            ax = axes[i, j]
            for y, net in enumerate(names):
                v = groups.get((net, prompt, model, dim))
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
            ax.set_yticks(range(len(names)), [_network(n) for n in names])
            ax.set_ylim(len(names) - 0.4, -0.8)  # the first network on top
            if i == 0:
                ax.set_title(f"H{dim}")
            if i == len(rows) - 1:
                ax.set_xlabel("persistent entropy (nats)")
        axes[i, 0].set_ylabel(model if prompt is None else f"{model}\n{_quoted(prompt)}")
    pooled = len(set(prompts)) > 1 and panels == [None]
    _title(fig, inp, "Persistent entropy per run (natural logarithm: nats)" + (f", {len(set(prompts))} prompts pooled" if pooled else "")
           + "\n(box: quartiles; dots: runs; ◆: mean with its 95% bootstrap interval)")
    return fig, "entropy"


def _drift(inp: _Input):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    found = list_results(inp.exp, "drift")
    if not found:
        models = inp.exp.config.embedding_models
        each = f"--model {models[0]}" if len(models) == 1 else f"--model M for each of {', '.join(models)}"
        raise UserError(f"plot drift: experiment {inp.exp.id} has no drift result; run `panicflow analyse drift {inp.exp.id} {each}` first")
    g = inp.exp.group(read_only=True)
    networks, prompts = g["network"][:], g["prompt"][:]
    names = sorted(set(networks))
    palette = dict(zip(names, colours(len(names))))
    prompt_panels = _prompt_panels(inp, prompts, "drift")
    panels = [(p, m) for p in prompt_panels for m in found]
    cols = min(3, len(found)) if prompt_panels != [None] else min(2, len(found))
    rows = -(-len(panels) // cols)
    fig, axes = _figure(rows, cols, 2.6, sharey=True)
    drawn: dict[str, int] = {}  # network -> most runs in a panel
    for n, (ax, (prompt, model)) in enumerate(zip(axes.flat, panels)):
        cos = g[f"analysis/drift/{model}/cosine_distance"][:]
        left_ax = ax.twinx()
        left_ax.spines["right"].set_visible(True)
        most = 0
        for net in names:
            sel = (networks == net) & ((prompts == prompt) if prompt is not None else True)
            has = ~np.isnan(cos[sel])
            x, has = cos[sel][has.any(axis=1)], has[has.any(axis=1)]
            steps = np.flatnonzero(has.any(axis=0))
            if not len(steps):
                continue
            q = np.nanquantile(x[:, steps], [0.25, 0.5, 0.75], axis=0)
            ax.fill_between(steps, q[0], q[2], color=palette[net], alpha=0.25, linewidth=0)
            ax.plot(steps, q[1], color=palette[net], lw=1.3)
            # runs left at each step: those with a vector at this step or a later one (runs end at different steps)
            last = x.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1)
            span = np.arange(int(last.max()) + 1)
            left = (last[None, :] >= span[:, None]).sum(axis=1)
            left_ax.step(span, left, where="post", color=palette[net], lw=0.8, ls=(0, (1, 1)), label=f"{net} runs left")
            most = max(most, len(x))
            drawn[net] = max(drawn.get(net, 0), len(x))
        left_ax.set_ylim(0, max(1, most) * 1.08)
        left_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if n % cols == cols - 1 or n == len(panels) - 1:
            left_ax.set_ylabel("runs left (dotted)")
        ax.set(title=model if prompt is None else f"{model} · {_quoted(prompt)}", xlabel="step")
        if n % cols == 0:
            ax.set_ylabel("cosine distance to the run's start")
    handles = [Line2D([], [], color=palette[net], lw=1.3) for net in drawn]
    labels = [_network(net) for net in drawn]
    handles.append(Line2D([], [], color="#555555", lw=0.8, ls=(0, (1, 1))))
    labels.append("runs left at each step (right axis)")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), frameon=False)
    _hide_unused(axes, len(panels))
    pooled = len(set(prompts)) > 1 and prompt_panels == [None]
    _title(fig, inp, "Semantic drift" + (f" ({len(set(prompts))} prompts pooled)" if pooled else "")
           + "\n(median of each network's runs and 25th to 75th percentile; dotted: runs left, as runs end)")
    return fig, "drift"


def _missing_result(inp: _Input, kind: str) -> UserError:
    models = inp.exp.config.embedding_models
    each = f"--model {models[0]}" if len(models) == 1 else f"--model M (one of {', '.join(models)})"
    return UserError(f"plot {kind}: experiment {inp.exp.id} has no {kind} result; run `panicflow analyse {kind} {inp.exp.id} {each}` first")


def _divergence(inp: _Input):
    from matplotlib.patches import Patch
    from matplotlib.transforms import ScaledTranslation

    if not list_results(inp.exp, "divergence"):
        raise _missing_result(inp, "divergence")
    g = open_result(inp.exp, "divergence", inp.result)
    nets, prompts = g["group_network"][:], g["group_prompt"][:]
    exponent, intercept, r2 = g["exponent"][:], g["intercept"][:], g["r_squared"][:]
    n_runs, status, curve = g["n_runs"][:], g["status"][:], g["mean_distance"][:]
    window = g.attrs.get("parameters", {}).get("fit_steps")
    good_r2 = g.attrs.get("parameters", {}).get("min_r_squared", GOOD_R2)  # the result's own threshold (its status)
    lo, hi = (window[0], curve.shape[1] if window[1] is None else window[1]) if window else (0, curve.shape[1])
    names = sorted(set(nets))
    palette = dict(zip(names, colours(len(names))))
    all_prompts = sorted(set(prompts))
    shown = all_prompts[:MAX_PROMPT_PANELS]
    cols = min(2, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = _figure(rows, cols, 3.4, sharey=True)
    for ax, prompt in zip(axes.flat, shown):
        handles, labels = [], []
        last_step = 0
        for i in np.flatnonzero(prompts == prompt):
            d = curve[i]
            ok = np.isfinite(d) & (d > 0)
            steps = np.flatnonzero(ok)
            colour = palette[nets[i]]
            if len(steps):
                line, = ax.plot(steps, np.log(d[ok]), color=colour, lw=0.9, marker=".", ms=2.5)
                last_step = max(last_step, int(steps[-1]))
            else:
                line = Patch(facecolor="none", edgecolor="none")
            handles.append(line)
            labels.append(f"{_network(nets[i])} ({n_runs[i]} runs)")
            if status[i] not in (OK, POOR_FIT):
                labels[-1] += f": no fit, {status[i]}"
                continue
            fit = steps[(steps >= lo) & (steps < hi)]
            x = np.array([fit.min(), fit.max()], np.float64)
            y = intercept[i] + exponent[i] * x
            if r2[i] >= good_r2:
                fl, = ax.plot(x, y, color=colour, lw=1.8, ls="--", zorder=4)
                labels.append(f"fit: λ = {exponent[i]:.3g} per step, R² {r2[i]:.2f}")
            else:  # drawn faint and dotted, without its slope: a line through noise, not a rate
                fl, = ax.plot(x, y, color=OTHER, lw=0.8, ls=":", zorder=4)
                labels.append(f"poor fit (R² {r2[i]:.2f} < {good_r2:g}): no exponent")
            handles.append(fl)
        if window:
            shade = ax.axvspan(lo - 0.5, min(hi, last_step + 1) - 0.5, color="#000000", alpha=0.07, lw=0, zorder=0)
            handles.append(shade)
            labels.append(f"fit window: steps {lo} to {'the end' if window[1] is None else hi - 1}")
        ax.set(title=_quoted(prompt), xlabel="step", ylabel="ln D(t)")
        below = ax.transAxes + ScaledTranslation(0, -34 / 72, fig.dpi_scale_trans)  # under the x axis's label
        ax.legend(handles, labels, frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below)
    _hide_unused(axes, len(shown))
    more = f"; the first {len(shown)} of {len(all_prompts)} prompts" if len(all_prompts) > len(shown) else ""
    fitted = "every compared step" if not window else f"steps {lo} to {'the end' if window[1] is None else hi - 1}"
    _title(fig, inp, f"Divergence of replicate runs: {g.attrs.get('model')}, fitted over {fitted}{more}\n"
           f"(D: mean distance between the unit embeddings of a group's runs, over every pair;\n"
           f"dashed: least-squares line, R² ≥ {good_r2:g}; dotted grey: a poor fit, no exponent)")
    return fig, f"divergence-{g.basename}"


def _bounded(inp: _Input):
    from matplotlib.lines import Line2D

    from .bounded import E_FOLD, KIND, OK as BOUNDED_OK, RANDOM_MSAD

    if not list_results(inp.exp, KIND):
        raise _missing_measure(inp, "bounded", "--measures bounded")
    g = open_result(inp.exp, KIND, inp.result)
    lags = np.concatenate([[0], g["lag"][:]])  # MSAD(0) = 0 and C(0) = 1 by definition: drawn from there
    nets, prompts, rg = g["group_network"][:], g["group_prompt"][:], g["run_group"][:]

    def from_zero(a, at0):
        return np.concatenate([np.full((len(a), 1), at0), a], axis=1)

    msad, acf = from_zero(g["msad"][:], 0.0), from_zero(g["autocorrelation"][:], 1.0)
    gmsad, gacf = from_zero(g["group_msad"][:], 0.0), from_zero(g["group_autocorrelation"][:], 1.0)
    plateau, sat, sat_status = g["group_plateau"][:], g["group_saturation_time"][:], g["group_saturation_status"][:]
    ratio, decay, decay_status = g["group_plateau_ratio"][:], g["group_decay_time"][:], g["group_decay_status"][:]
    fraction = g.attrs.get("parameters", {}).get("saturation_fraction", 0.95)
    names = sorted(set(nets))
    palette = dict(zip(names, colours(len(names))))
    all_prompts = sorted(set(prompts))
    shown = all_prompts[:AUTO_PROMPT_PANELS]
    fig, axes = _figure(len(shown), 2, 2.6)
    top = 0.0
    for row, prompt in enumerate(shown):
        left, right = axes[row, 0], axes[row, 1]
        for i in np.flatnonzero(prompts == prompt):
            colour = palette[nets[i]]
            for r in np.flatnonzero(rg == i):  # the runs, thin; the pooled curve over them
                ok = np.isfinite(msad[r])
                left.plot(lags[ok], msad[r, ok], color=colour, lw=0.5, alpha=0.3)
                ok = np.isfinite(acf[r])
                right.plot(lags[ok], acf[r, ok], color=colour, lw=0.5, alpha=0.3)
            ok = np.isfinite(gmsad[i])
            top = max(top, float(gmsad[i, ok].max()))
            if sat_status[i] == BOUNDED_OK:
                label = f"saturated at lag {sat[i]:g}; plateau {plateau[i]:.3g} ({ratio[i]:.0%} of (π/2)²)"
            else:
                label = f"no saturation time: {short(sat_status[i], 34)}"
            left.plot(lags[ok], gmsad[i, ok], color=colour, lw=1.6, marker=".", ms=3, label=label)
            if sat_status[i] == BOUNDED_OK:
                left.axhline(plateau[i], color=colour, lw=0.8, ls="--")
                left.plot([sat[i]], [gmsad[i, int(sat[i])]], marker="o", mfc="none", mec=colour, ms=7, ls="none")
            ok = np.isfinite(gacf[i])
            label = f"C < 1/e at lag {decay[i]:g}" if decay_status[i] == BOUNDED_OK else f"no decay time: {short(decay_status[i], 34)}"
            right.plot(lags[ok], gacf[i, ok], color=colour, lw=1.6, marker=".", ms=3, label=label)
            if decay_status[i] == BOUNDED_OK:
                right.plot([decay[i]], [gacf[i, int(decay[i])]], marker="o", mfc="none", mec=colour, ms=7, ls="none")
        right.axhline(E_FOLD, color=OTHER, lw=0.8, ls=":")
        right.axhline(0, color="#555555", lw=0.5)
        left.set(title=f"{_quoted(prompt)}: MSAD", xlabel="lag (steps)", ylabel="mean squared angle (rad²)")
        right.set(title=f"{_quoted(prompt)}: autocorrelation", xlabel="lag (steps)", ylabel="C(lag)", ylim=(min(-0.1, right.get_ylim()[0]), 1.05))
        left.legend(frameon=False, fontsize=7, loc="lower right")
        right.legend(frameon=False, fontsize=7, loc="upper right")
        for ax in (left, right):
            _plain_ticks(ax.xaxis, log=False)
    for ax in axes[:, 0]:
        ax.set_ylim(0, max(top, 1e-9) * 1.12)
        if top >= 0.5 * RANDOM_MSAD:  # the isotropic reference, where it is on the chart's scale
            ax.axhline(RANDOM_MSAD, color=OTHER, lw=0.8, ls=":")
    handles = [Line2D([], [], color=palette[n], lw=1.6, label=_network(n)) for n in names]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(names)), frameon=False)
    more = f"; the first {len(shown)} of {len(all_prompts)} prompts" if len(all_prompts) > len(shown) else ""
    _title(fig, inp, f"Motion on the sphere: {g.attrs.get('model')}{more}\n(thin: runs; thick: the group pooled; dashed: the MSAD "
           f"plateau; circles: MSAD at {fraction:g} of it,\nand C below 1/e (dotted); (π/2)² = 2.47 rad²: independent "
           "directions of an isotropic cloud)")
    return fig, f"bounded-{g.basename}"


def _divergence_pairs(inp: _Input):
    from .bounded import PAIRS_KIND

    if not list_results(inp.exp, PAIRS_KIND):
        raise _missing_measure(inp, "divergence_pairs", "--pairs FILE")
    g = open_result(inp.exp, PAIRS_KIND, inp.result)
    nets, pa_, pb_ = g["group_network"][:], g["prompt_a"][:], g["prompt_b"][:]
    exponent, intercept, r2, status = g["exponent"][:], g["intercept"][:], g["r_squared"][:], g["status"][:]
    n_pairs, curve = g["n_pairs"][:], g["mean_distance"][:]
    p = g.attrs.get("parameters", {})
    window, good_r2 = p.get("fit_steps"), p.get("min_r_squared", GOOD_R2)
    lo, hi = (window[0], curve.shape[1] if window[1] is None else window[1]) if window else (0, curve.shape[1])
    palette = dict(zip(sorted(set(nets)), colours(len(set(nets)))))
    pairs = list(dict.fromkeys(zip(pa_.tolist(), pb_.tolist())))  # the file's order
    shown = pairs[:MAX_PROMPT_PANELS]
    cols = min(2, len(shown))
    fig, axes = _figure(-(-len(shown) // cols), cols, 3.2, sharey=True)
    for ax, (a, b) in zip(axes.flat, shown):
        for i in np.flatnonzero((pa_ == a) & (pb_ == b)):
            d = curve[i]
            ok = np.isfinite(d) & (d > 0)
            steps = np.flatnonzero(ok)
            colour = palette[nets[i]]
            label = f"{_network(nets[i])} ({n_pairs[i]} pairs of runs)"
            if status[i] not in (OK, POOR_FIT):
                ax.plot([], [], color=colour, label=f"{label}: no fit, {status[i]}")
                continue
            ax.plot(steps, np.log(d[ok]), color=colour, lw=0.9, marker=".", ms=2.5, label=label)
            fit = steps[(steps >= lo) & (steps < hi)]
            x = np.array([fit.min(), fit.max()], np.float64)
            if r2[i] >= good_r2:
                ax.plot(x, intercept[i] + exponent[i] * x, color=colour, lw=1.8, ls="--", zorder=4,
                        label=f"fit: λ = {exponent[i]:.3g} per step, R² {r2[i]:.2f}")
            else:
                ax.plot(x, intercept[i] + exponent[i] * x, color=OTHER, lw=0.8, ls=":", zorder=4,
                        label=f"poor fit (R² {r2[i]:.2f} < {good_r2:g}): no exponent")
        ax.set(title=f"{_quoted(a)} vs {_quoted(b)}", xlabel="step", ylabel="ln D(t)")
        ax.legend(frameon=False, fontsize=7, loc="best")
    _hide_unused(axes, len(shown))
    more = f"; the first {len(shown)} of {len(pairs)} pairs" if len(pairs) > len(shown) else ""
    how = "equal seeds, or both unseeded" if p.get("pairing") == "matched" else "every cross pair"
    _title(fig, inp, f"Divergence of runs whose prompts differ: {g.attrs.get('model')}{more}\n"
           f"(D: mean distance between the unit embeddings of the runs of prompt A and of prompt B,\npaired by {how}; "
           f"dashed: least-squares line, R² ≥ {good_r2:g}; dotted grey: a poor fit, no exponent)")
    return fig, f"divergence_pairs-{g.basename}"


def _missing_measure(inp: _Input, kind: str, option: str) -> UserError:
    models = inp.exp.config.embedding_models
    each = f"--model {models[0]}" if len(models) == 1 else f"--model M (one of {', '.join(models)})"
    return UserError(f"plot {kind}: experiment {inp.exp.id} has no {kind} result; run "
                     f"`panicflow analyse divergence {inp.exp.id} {each} {option}` first")


METRIC_NAMES = {"wasserstein_1": "W1 (Wasserstein, p = 1)", "wasserstein_2": "W2 (Wasserstein, p = 2)", "bottleneck": "bottleneck"}


def _distances(inp: _Input):
    from matplotlib.lines import Line2D

    from .distances import METRICS

    if not list_results(inp.exp, "distances"):
        raise _missing_result(inp, "distances")
    g = open_result(inp.exp, "distances", inp.result)
    metrics = [m for m in METRICS if m in g.array_keys()]
    exps, runs = g["diagram_experiment"][:], g["diagram_run"][:]
    meta = {}
    st = open_store(inp.location)
    for eid in dict.fromkeys(exps.tolist()):
        eg = (inp.exp if eid == inp.exp.id else st.experiment(eid)).group(read_only=True)
        meta[eid] = (eg["network"][:], eg["prompt"][:], eg["seed"][:])
    key = [(meta[e][0][r], meta[e][1][r], e, int(meta[e][2][r]), int(r)) for e, r in zip(exps, runs)]
    order = sorted(range(len(key)), key=lambda i: key[i])
    group_of = [key[i][:2] for i in order]
    groups = list(dict.fromkeys(group_of))
    starts = [group_of.index(k) for k in groups]
    edges = [*starts, len(order)]
    n_dims = g[metrics[0]].shape[0]
    fig, axes = _figure(len(metrics), n_dims, WIDTH / max(n_dims, 2) * 0.85)
    labelled = len(groups) <= 30
    for i, metric in enumerate(metrics):
        values = g[metric][:]
        for k in range(n_dims):
            ax = axes[i, k]
            m = values[k][np.ix_(order, order)]
            im = ax.imshow(m, cmap="cividis", interpolation="nearest", vmin=0)
            for b in starts[1:]:
                ax.axhline(b - 0.5, color="#FFFFFF", lw=0.8)
                ax.axvline(b - 0.5, color="#FFFFFF", lw=0.8)
            centres = [(a + b - 1) / 2 for a, b in zip(edges, edges[1:])]
            if labelled:
                ax.set_xticks(centres, [str(j + 1) for j in range(len(groups))])
                ax.set_yticks(centres, [str(j + 1) for j in range(len(groups))])
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            ax.tick_params(length=0)
            if i == 0:
                ax.set_title(f"H{k}")
            if k == 0:
                ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)}\nrun (by group)")
            fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
    key_handles = [Line2D([], [], ls="none") for _ in groups]
    key_labels = [f"{j + 1}: {_network(n)} · {_quoted(p)} ({edges[j + 1] - edges[j]} runs)" for j, (n, p) in enumerate(groups)]
    if labelled:
        fig.legend(key_handles, key_labels, loc="outside lower center", ncol=2, frameon=False, handlelength=0, handletextpad=0)
    model = g.attrs.get("parameters", {}).get("model")
    _title(fig, inp, f"Distances between the persistence diagrams of {len(order)} runs: {model}\n"
           f"(finite bars; runs ordered by network, prompt and seed; white lines separate the groups"
           + ("" if labelled else f", {len(groups)} of them") + ")")
    return fig, f"distances-{g.basename}"


def _call_durations(exp) -> tuple[dict[tuple[str, int], np.ndarray], int, int]:
    """(model, batch size) -> seconds of each model call; the invocations of one batched call (same batch_id,
    or without one the same model, start and end) counted once; batch size 0: not recorded. Read from the
    ended runs, at most ``DURATION_RUNS`` of them evenly spaced; also returns how many were read, of how many."""
    from .tables import RUNS_PER_BLOCK

    g = exp.group(read_only=True)
    n_steps = g["output_hash"].shape[1]
    lengths = np.where(g["stop_reason"][:] != "", g["length"][:], 0)
    ended = np.flatnonzero(lengths > 0)
    chosen = ended if len(ended) <= DURATION_RUNS else ended[np.linspace(0, len(ended) - 1, DURATION_RUNS).astype(int)]
    has_batches = "batch_id" in g.array_keys()
    calls: dict = {}
    for a in range(0, len(chosen), RUNS_PER_BLOCK):
        runs = chosen[a:a + RUNS_PER_BLOCK]
        start, end = (np.asarray(g[k].oindex[runs, :], np.int64) for k in ("started_at", "ended_at"))
        ok = (np.arange(n_steps)[None, :] < lengths[runs, None]) & (start != NO_TIME) & (end != NO_TIME)
        rr, ss = np.nonzero(ok)
        if not len(rr):
            continue
        model = g["model"].oindex[runs, :][rr, ss]
        bid = g["batch_id"].oindex[runs, :][rr, ss] if has_batches else np.full(len(rr), "")
        size = g["batch_size"].oindex[runs, :][rr, ss] if has_batches else np.zeros(len(rr), np.int32)
        s, e = start[rr, ss], end[rr, ss]
        keyed = np.flatnonzero(bid != "")
        _, first = np.unique(bid[keyed], return_index=True)  # one invocation per batched call (a call may span blocks)
        for i in [*keyed[first].tolist(), *np.flatnonzero(bid == "").tolist()]:
            calls[bid[i] or (model[i], int(s[i]), int(e[i]))] = (str(model[i]), int(size[i]), (int(e[i]) - int(s[i])) / 1e6)
    out: dict[tuple[str, int], list[float]] = {}
    for m, n, sec in calls.values():
        out.setdefault((m, n), []).append(sec)
    return {k: np.array(v) for k, v in sorted(out.items())}, len(chosen), len(ended)


def _durations(inp: _Input):
    found, read, ended = _call_durations(inp.exp)
    if not found:
        raise UserError(f"plot durations: experiment {inp.exp.id} has no timed invocation yet (see `panicflow experiment status {inp.exp.id}`)")
    order = list(dict.fromkeys(m for net in inp.exp.config.networks for m in net))
    models = sorted({k[0] for k in found}, key=lambda m: (order.index(m) if m in order else len(order), m))
    varies = len({k[1] for k in found}) > 1
    rows = [k for m in models for k in found if k[0] == m]
    palette = dict(zip(models, colours(len(models))))
    every = np.concatenate(list(found.values()))
    unit, scale = ("ms", 1e3) if every.max() < 1.0 else ("s", 1.0)
    fig, axes = _figure(1, 2, 0.42 * len(rows) + 1.3, sharey=True)
    rng = np.random.default_rng(0)
    per_input = {k: v / max(k[1], 1) for k, v in found.items()}
    positive = np.concatenate([every, *per_input.values()])
    positive = positive[positive > 0]
    log = bool(len(positive)) and positive.max() / positive.min() > 20  # calls of very different lengths: both panels log
    for ax, data, xlabel in ((axes[0, 0], found, f"{unit} per model call"),
                             (axes[0, 1], per_input, f"{unit} per input (call / batch size)")):
        for y, k in enumerate(rows):
            v = data[k] * scale
            ax.boxplot(v, positions=[y], orientation="horizontal", widths=0.6, showfliers=False,
                       medianprops={"color": "#000000"}, boxprops={"color": "#555555"}, whiskerprops={"color": "#555555"},
                       capprops={"color": "#555555"})
            dots = v if len(v) <= 2000 else rng.choice(v, 2000, replace=False)
            ax.scatter(dots, y + rng.uniform(-0.2, 0.2, len(dots)), s=6, color=palette[k[0]], alpha=0.6, linewidths=0,
                       zorder=3, rasterized=True)
        if log:
            ax.set_xscale("log")
        _plain_ticks(ax.xaxis, log=log, integer=False)
        ax.set_xlabel(xlabel)
    labels = []
    for m, n in rows:
        calls = len(found[(m, n)])
        size = "" if not varies else ", batch size not recorded" if n == 0 else f", batches of {n}"
        labels.append(f"{m}{size} ({calls:,} call{'s' if calls != 1 else ''})")
    axes[0, 0].set_yticks(range(len(rows)), labels)
    axes[0, 0].set_ylim(len(rows) - 0.4, -0.6)
    single = "" if varies else (f"; every call a batch of {rows[0][1]}" if rows[0][1] else "")
    single += f"; the calls of {read:,} of {ended:,} runs, evenly spaced" if read < ended else ""
    _title(fig, inp, f"Time of the model calls{single}\n(from the invocations' started_at and ended_at, the invocations of one\n"
           "batched call counted once; box: quartiles; dots: calls)")
    return fig, "durations"


def _clustering(inp: _Input):
    """The stored clustering, its labels (run, step) and its largest clusters in this experiment."""
    g = open_result(inp.exp, "clusters", inp.clustering)
    labels = g["label"][:]
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    top = ids[np.argsort(-counts, kind="stable")][:TOP_CLUSTERS]
    return g, labels, [int(c) for c in top], len(ids)


def _legend_patches(top: list[int], more: bool, blank: str = ""):
    from matplotlib.patches import Patch

    items = [Patch(color=c, label=f"cluster {k}") for k, c in zip(top, OKABE_ITO)]
    if more:
        items.append(Patch(color=OTHER, label="other clusters"))
    items.append(Patch(facecolor=NOISE, label="noise"))
    if blank:  # white: no label at this step
        items.append(Patch(facecolor=BLANK, edgecolor="#555555", lw=0.5, label=blank))
    return items


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
        ax.set_yticks(range(n_runs), [f"{r} · seed {seeds[r]} · {short(prompts[r], 18)}" for r in order])
    else:
        ax.set_yticks([])
    edges = [0, *bounds, n_runs]
    right = ax.secondary_yaxis("right")
    right.set_yticks([(a + b - 1) / 2 for a, b in zip(edges, edges[1:])], [_network(sorted_nets[a]) for a in edges[:-1]])
    ax.set(xlabel="step", ylabel="run" if n_runs <= 40 else f"{n_runs} runs")
    steps = np.arange(width)[None, :]
    ended = bool((steps >= lengths[:, None]).any())  # white after a run's end ...
    before = bool(((idx[:, :width] < 0) & (steps < lengths[:, None])).any())  # ... or before its first vector of the model
    blank = "run ended, or before its first vector" if ended and before else "run ended" if ended else "before the run's first vector" if before else ""
    fig.legend(handles=_legend_patches(top, n_clusters > len(top), blank), loc="outside lower center", ncol=4, frameon=False)
    _title(fig, inp, f"Cluster timelines\n{describe_clustering(dict(grp.attrs))}\n(one row per run; lines separate networks)")
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
    grp, _, _, n_clusters = _clustering(inp)
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
    _title(fig, inp, f"Transitions between consecutive vectors of a run\n{describe_clustering(dict(grp.attrs))}")
    return fig, f"transitions-{seq.attrs['clustering']}"


def _stays(inp: _Input):
    from matplotlib.lines import Line2D

    seq = _sequences(inp)
    grp = open_result(inp.exp, "clusters", seq.attrs["clustering"])
    label, length, run = seq["stay_label"][:], seq["stay_length"][:], seq["stay_run"][:]
    keep = label >= 0
    if not keep.any():
        raise UserError(f"plot stays: no vector of experiment {inp.exp.id} is in a cluster under {seq.attrs['clustering']}")
    networks = inp.exp.group(read_only=True)["network"][:][run[keep]]
    length = length[keep]
    names = sorted(set(networks))
    palette = dict(zip(names, colours(len(names))))
    fig, axes = _figure(1, 2, 3.0)
    hist, surv = axes[0, 0], axes[0, 1]
    small = int(length.max()) <= SMALL_RANGE  # a few lengths: linear axes, a bar per length, integer ticks
    bins = np.arange(0.5, length.max() + 1.5) if small else np.unique(np.geomspace(1, length.max() + 1, 25).astype(int))
    most = 0
    for net in names:
        v = np.sort(length[networks == net])
        counts, _ = np.histogram(v, bins=bins)
        most = max(most, int(counts.max()))
        hist.stairs(counts, bins, color=palette[net], lw=1.3, label=f"{_network(net)} ({len(v):,} stays)")
        # fraction of stays at least L long, at each length seen; its last point is the longest stay(s), k/n
        ls, first = np.unique(v, return_index=True)
        frac = 1.0 - first / len(v)
        surv.step(ls, frac, where="post", color=palette[net], lw=1.3)
        surv.plot(ls[-1:], frac[-1:], ls="none", marker="o", mfc="none", mec=palette[net], ms=5)
    handles, names_ = hist.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="none", marker="o", mfc="none", mec="#555555", ms=5))
    names_.append("the longest stay(s): the curve's last point, their share k of n")
    fig.legend(handles, names_, loc="outside lower center", ncol=2, frameon=False)
    if small:
        hist.set(xlabel="stay length (vectors)", ylabel="stays")
        surv.set(xlabel="stay length L (vectors)", ylabel="fraction of stays ≥ L", ylim=(0, 1.04))
        for axis in (hist.xaxis, surv.xaxis):
            _plain_ticks(axis, log=False)
    else:
        hist.set(xscale="log", xlabel="stay length (vectors)", ylabel="stays")
        surv.set(xscale="log", yscale="log", xlabel="stay length L (vectors)", ylabel="fraction of stays ≥ L")
        for axis in (hist.xaxis, surv.xaxis, surv.yaxis):
            _plain_ticks(axis, log=True)
    if most <= SMALL_RANGE:
        _plain_ticks(hist.yaxis, log=False)
    else:
        hist.set_yscale("log")
        _plain_ticks(hist.yaxis, log=True)
    _title(fig, inp, f"Stays in one cluster\n{describe_clustering(dict(grp.attrs))}\n"
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
    # equal vectors (a run that loops repeats its outputs): drawn once, the area growing with them. Grouped by
    # the vectors, not by rounded plane coordinates: BLAS may project equal rows a few ulps apart, across a cell
    same = np.unique(x, axis=0, return_inverse=True)[1].reshape(-1)
    fig, axes = _figure(1, 1, 5.2)
    ax = axes[0, 0]
    layers = [(lab == -1, NOISE, "noise"), ((lab >= 0) & ~np.isin(lab, top), OTHER, "other clusters")]
    layers += [(lab == c, colour, f"cluster {c}") for c, colour in zip(top, OKABE_ITO)]
    drawn, most = 0, 1
    for sel, colour, name in layers:
        if sel.any():
            _, first, mult = np.unique(same[sel], return_index=True, return_counts=True)
            pts = xy[sel][first]
            drawn += len(pts)
            most = max(most, int(mult.max()))
            ax.scatter(pts[:, 0], pts[:, 1], s=np.minimum(5 * mult, 200), color=colour, alpha=0.7, linewidths=0,
                       rasterized=True, label=f"{name} ({sel.sum():,})")
    ev = pca.explained_variance_ratio_ * 100
    ax.set(xlabel=f"PC1 ({ev[0]:.0f}% of variance)", ylabel=f"PC2 ({ev[1]:.0f}% of variance)")
    handles, names = ax.get_legend_handles_labels()
    if most > 1:
        for m in sorted({1, most}):
            handles.append(ax.scatter([], [], s=min(5 * m, 200), color="#555555", linewidths=0))
            names.append(f"{m} vector{'s' if m > 1 else ''} at one point")
    legend = ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                       title=f"{len(xy):,} vectors at {drawn:,} points" if drawn < len(xy) else None, title_fontsize=8)
    for h in legend.legend_handles[:len(handles) - (len({1, most}) if most > 1 else 0)]:
        h.set_sizes([20])  # the colours' entries one size; the size entries below say what a size means
    over = len(xy) - drawn
    _title(fig, inp, f"{model}: PCA of {len(xy):,} unit-normalised embeddings\ncoloured by {describe_clustering(dict(grp.attrs))}\n"
           "(clustered in its own space, so clusters may overlap here"
           + (f";\n{over:,} vectors lie on another's point: a dot's area grows with the vectors at its point)" if over else ")"))
    return fig, f"map-{grp.basename}"


_DRAW: dict[str, Callable[[_Input], tuple]] = {
    "diagrams": _diagrams, "entropy": _entropy, "drift": _drift, "divergence": _divergence, "distances": _distances,
    "durations": _durations, "clusters": _clusters, "transitions": _transitions, "stays": _stays, "map": _map,
    "bounded": _bounded, "divergence_pairs": _divergence_pairs,
}


# ---------------------------------------------------------------------- charts of the issue 24 analyses
# Each is the chart its `analyse` command draws (--out, --plot), by the same table and figure functions, of one
# stored result (``result``: --result NAME, default the most recent); ``plot`` writes ``<kind>-<result>.png|svg``.
RESULT_KINDS = ("stability", "dynamics", "knn", "noise_sweep", "noise_caption", "recurrence", "windows", "run_table")
NAMED_RESULT_KINDS = ("divergence", "distances", "bounded", "divergence_pairs", *RESULT_KINDS)  # the charts --result names the input of
_RESULT_TITLES = {
    "stability": "Stability of the clustering under subsampling",
    "knn": "Distance of each vector to its k-th nearest neighbour",
    "noise_sweep": "Noise and clusters against min_cluster_size",
    "noise_caption": "Noise against caption length, per captioning model",
    "recurrence": "Return times and recurrence rates: embedding distances against cluster symbols",
    "windows": "Normalised persistent entropy of sliding windows along the runs",
    "run_table": "Normalised entropy of each run against its duplicate outputs and mean dwell",
}
_MODEL_COMMANDS = ("stability", "knn", "noise_sweep", "windows")  # their command needs --model


def _result_figure(kind: str, eid: str, location: str, g):
    """The figure of the stored result ``g``, as its command draws it."""
    from . import density, dynamics, recurrence, stability

    name = g.basename
    if kind == "stability":
        return stability.stability_figure(stability.stability_table(eid, location, name))
    if kind == "dynamics":
        return dynamics.dynamics_figure(eid, location, result=name)
    if kind in ("knn", "noise_sweep", "noise_caption"):
        table, draw = {"knn": (density.knn_table, density.knn_figure), "noise_sweep": (density.sweep_table, density.sweep_figure),
                       "noise_caption": (density.caption_table, density.caption_figure)}[kind]
        return draw(table(eid, location, name))
    if kind == "recurrence":
        runs, returns = recurrence.recurrence_tables(eid, location, name)
        return recurrence.recurrence_figure(runs, returns, g.attrs["parameters"]["threshold"])
    if kind == "windows":
        return recurrence.windows_figure(recurrence.windows_table(eid, location, name))
    return recurrence.run_table_figure(recurrence.run_table_frame(eid, location, name))


def _result_chart(kind: str) -> Callable[[_Input], tuple]:
    def draw(inp: _Input):
        from .results import kind_command

        if not list_results(inp.exp, kind):
            models = inp.exp.config.embedding_models
            each = "" if kind not in _MODEL_COMMANDS else f" --model {models[0]}" if len(models) == 1 else \
                f" --model M (one of {', '.join(models)})"
            raise UserError(f"plot {kind}: experiment {inp.exp.id} has no {kind} result; run "
                            f"`panicflow analyse {kind_command(kind)} {inp.exp.id}{each}` first")
        g = open_result(inp.exp, kind, inp.result)
        fig = _result_figure(kind, inp.exp.id, inp.location, g)
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("constrained")
        if not inp.title:
            if fig.get_suptitle():
                fig.suptitle("")
        elif not fig.get_suptitle():
            fig.suptitle(f"{_RESULT_TITLES[kind]}\n({kind} result {g.basename})")
        return fig, f"{kind}-{g.basename}"

    return draw


KINDS += RESULT_KINDS
_DRAW.update({kind: _result_chart(kind) for kind in RESULT_KINDS})
