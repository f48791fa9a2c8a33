"""The experiment report: one self-contained HTML page, written to a file or served on localhost.

The page holds the config and provenance, the progress numbers and stop reasons, the charts
of a folder (PNG, JPEG, SVG), a table of runs with thumbnails and last captions, and a run
viewer (buttons, a slider, the arrow keys). Everything is inline: images as data URIs, the
style and script of this package; a Content-Security-Policy forbids anything else.

A written page is bounded: ``max_runs`` table rows, and the viewer holds every finished run of
the table (or the first ``viewer_runs``) in at most ``viewer_mib`` MiB of images: up to
``viewer_frames`` pictures per run, evenly spaced, fewer and smaller as runs grow (``plan_viewer``),
images stored once per hash. The table filters and sorts in the page's script, its rows open
their run in the viewer (``#run-N``), and with a clustering stored the page shows the largest
clusters as a gallery, which the table's cluster ids link to. ``serve_report`` serves the same
page from 127.0.0.1 only, rebuilt on every load, with small JSON endpoints: ``api/status``
(what ``panicflow experiment status --json`` prints, polled by the page every few seconds, so
a running experiment's progress moves on screen), ``api/run/N`` (every picture of a finished
run) and ``object/HASH``/``thumb/HASH`` (stored images, checked against their hash).
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from ..analysis.results import list_results
from ..errors import UserError
from ..store.objects import CorruptObject, MissingObject
from .frames import thumbnail_bytes
from .source import Picture, RunInfo, Source
from .timeline import spaced

HOST = "127.0.0.1"
ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})  # Host headers the served page answers
THUMB = 96
VIEWER_IMAGE = 384  # the viewer's largest image side, and the served page's
# The written viewer shrinks its images before it drops below MIN_FRAMES pictures a run: a run
# is a sequence, and 24 small pictures of it say more than 6 large ones. Sides tried in order.
VIEWER_SIDES = (384, 256, 192, 128)
MIN_FRAMES = 24
VIEWER_MIB = 32.0  # default budget of the written viewer's images, as embedded (base64 data URIs)
SAMPLE = 32  # images encoded at a side to estimate the bytes of one
GALLERY_ROWS = 24  # clusters shown per clustering (the largest), as `panicflow export gallery` draws by default
GALLERY_EXAMPLES = 6  # pictures per cluster: the medoid and 5 members
CHART_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
POLL_MS = 2000
# `panicflow plot` kinds the page draws: every one, as each reads stored data and writes nothing with store_results=False
REPORT_CHARTS = ("diagrams", "entropy", "drift", "divergence", "distances", "durations", "clusters", "transitions", "stays", "map")

CSP_STATIC = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
CSP_LIVE = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'"


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def find_charts(folder: str | os.PathLike | None) -> list[Path]:
    """The chart files (PNG, JPEG, SVG) under ``folder``, in name order; of a PNG and an SVG of
    the same chart (what `panicflow plot` writes) only the PNG."""
    if folder is None:
        return []
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--charts: {str(root)!r} is not a folder; pass the folder `panicflow plot` wrote its charts to")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in CHART_TYPES)
    rasters = {p.with_suffix("") for p in found if p.suffix.lower() != ".svg"}
    return [p for p in found if p.suffix.lower() != ".svg" or p.with_suffix("") not in rasters]


def draw_charts(experiment_id: str, store: str, folder: Path) -> tuple[list[Path], list[str]]:
    """The charts panicflow.analysis.plots draws without writing to the store (when that module is
    installed), as PNG files in ``folder``; and one line per chart left out, saying why."""
    try:
        from ..analysis import plots
    except ImportError:
        return [], []
    paths, skipped = [], []
    for kind in (k for k in REPORT_CHARTS if k in getattr(plots, "KINDS", ())):
        try:
            paths += [Path(p) for p in plots.plot(experiment_id, kind, out=folder, store=store, store_results=False,
                                                  formats=("png",))]  # the page shows PNGs: no SVG drawn for nothing
        except UserError as exc:  # an analysis not computed yet (drift, a clustering)
            skipped.append(f"{kind}: {exc.lines[0] if exc.lines else exc}")
        except Exception as exc:  # a chart that fails must not cost the whole page
            skipped.append(f"{kind}: failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return paths, skipped


def chart_section(experiment_id: str, store: str, charts: str | os.PathLike | None, plots: bool) -> str:
    """The charts of ``charts`` (a folder), or with none and ``plots``, those drawn by ``draw_charts``."""
    if charts is not None or not plots:
        return _charts(find_charts(charts), [])
    with tempfile.TemporaryDirectory(prefix="panicflow-report-") as tmp:
        paths, skipped = draw_charts(experiment_id, store, Path(tmp))
        return _charts(paths, skipped)


class _Images:
    """Image sources for the page: data URIs (written page, each hash once) or server URLs."""

    def __init__(self, source: Source, live: bool) -> None:
        self.source, self.live = source, live
        self.embedded: dict[str, str] = {}
        self._jpegs: dict[tuple[int, str], bytes] = {}  # (side, hash): the viewer's encodings while it is planned

    def thumb(self, digest: str) -> str:
        if self.live:
            return f"thumb/{digest}"
        key = f"t:{digest}"
        if key not in self.embedded:
            self.embedded[key] = _data_uri(thumbnail_bytes(self.source.image(digest), THUMB), "image/jpeg")
        return self.embedded[key]

    def viewer_size(self, digest: str, side: int) -> int:
        """Bytes the viewer's image of ``digest`` at ``side`` pixels takes in the page (encoded once)."""
        key = (side, digest)
        if key not in self._jpegs:
            self._jpegs[key] = thumbnail_bytes(self.source.image(digest), side)
        return embedded_size(len(self._jpegs[key]))

    def keep_viewer(self, digests: set[str], side: int) -> None:
        """Embed the viewer's images of ``digests`` at ``side`` pixels; forget every other encoding."""
        for d in digests:
            self.viewer_size(d, side)
            self.embedded[f"v:{d}"] = _data_uri(self._jpegs[(side, d)], "image/jpeg")
        self._jpegs.clear()


def embedded_size(jpeg_bytes: int) -> int:
    """Characters a viewer image of ``jpeg_bytes`` takes in the page: its data URI (base64, a third
    more) and its key and quotes in the page's JSON."""
    return len('"v:' + "0" * 64 + '": "data:image/jpeg;base64,",') + 4 * ((jpeg_bytes + 2) // 3)


def _frame(p: Picture) -> dict[str, Any]:
    return {"step": p.step, "model": p.model, "hash": p.hash, "caption": p.caption}


def _viewer_frames(source: Source, info: RunInfo, limit: int | None) -> list[dict[str, Any]]:
    if limit is None:
        return [_frame(p) for p in source.pictures(info)]
    wanted = set(spaced(source.picture_count(info), limit))
    return [_frame(p) for i, p in enumerate(source.pictures(info)) if i in wanted]


@dataclass
class ViewerPlan:
    """What the written viewer holds: ``runs`` (in table order) with at most ``frames`` pictures each,
    evenly spaced (first and last included), at ``side`` pixels, ``bytes`` of the ``budget``."""

    runs: list[int] = field(default_factory=list)
    frames: int = 0
    side: int = VIEWER_IMAGE
    bytes: int = 0
    budget: int = 0
    pictures: dict[int, int] = field(default_factory=dict)  # pictures each run has

    @property
    def every_picture(self) -> bool:
        return all(self.pictures[r] <= self.frames for r in self.runs)

    def describe(self, finished: int, option_frames: int) -> str:
        """The page's sentence on what the viewer holds (HTML)."""
        runs = (f"all {len(self.runs)} finished runs of the table" if len(self.runs) == finished
                else f"the first {len(self.runs)} of the {finished} finished runs of the table")
        if self.every_picture:
            each = "every picture of each"
        else:
            each = f"up to {self.frames} pictures of each, evenly spaced (the first and last included)"
            if self.frames < option_frames:
                each += f", fewer than <code>--viewer-frames {option_frames}</code> to fit the budget"
        return (f"The viewer holds {runs}: {each}, at most {self.side} pixels a side; {self.bytes / 2**20:.1f} MiB of images "
                f"of its {self.budget / 2**20:g} MiB budget (<code>--viewer-mib</code>). "
                "<code>panicflow report --serve</code> shows every picture of every run.")


def plan_viewer(source: Source, infos: list[RunInfo], images: _Images, budget: int, max_frames: int,
                progress: Callable[[], None] | None = None) -> tuple[ViewerPlan, dict[int, list[dict[str, Any]]]]:
    """The viewer of the finished runs ``infos`` in ``budget`` characters of embedded images, and its frames per run.

    Every run gets the same number of pictures k (all of a shorter run's), evenly spaced. The
    size of an image is estimated from ``SAMPLE`` encoded ones; the largest side of
    ``VIEWER_SIDES`` at which k reaches ``MIN_FRAMES`` (or ``max_frames``, or the longest run) is
    taken, else the smallest with the k that fits. The chosen images are then encoded, and k (or,
    at k = 2, the runs held) lowered until their real size fits: the budget is a bound, not a goal.
    """
    ids: dict[str, int] = {}
    seqs: list[np.ndarray] = []  # each run's pictures as ids of distinct hashes: small, whatever the captions
    for info in infos:
        seqs.append(np.fromiter((ids.setdefault(p.hash, len(ids)) for p in source.pictures(info)), dtype=np.int64))
        if progress:
            progress()
    plan = ViewerPlan(budget=budget, pictures={i.run: len(s) for i, s in zip(infos, seqs)})
    if not ids:  # runs without a picture: viewable, saying "no images"
        plan.runs = [i.run for i in infos]
        return plan, {i.run: [] for i in infos}
    digest = list(ids)
    longest = max(len(s) for s in seqs)

    def chosen(k: int, m: int) -> np.ndarray:  # the distinct ids of the first m runs at k pictures each
        return np.unique(np.concatenate([s[spaced(len(s), k)] if len(s) else s for s in seqs[:m]]))

    def fit(k_hi: int, m: int, per: float) -> int:  # the largest k <= k_hi whose estimate fits (0: none)
        lo, hi = 0, k_hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if chosen(mid, m).size * per <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    pool = chosen(max_frames, len(seqs))
    sample = [digest[i] for i in pool[spaced(len(pool), SAMPLE)]]
    enough = min(MIN_FRAMES, max_frames, longest)
    for side in VIEWER_SIDES:
        per = sum(images.viewer_size(d, side) for d in sample) / len(sample)
        k = fit(max_frames, len(seqs), per)
        if k >= enough:
            break
    m = len(seqs)
    if k < 2:  # not even the first and last picture of every run: hold fewer runs
        k = min(2, max_frames)
        while m > 1 and chosen(k, m).size * per > budget:
            m -= 1
    while True:  # encode the choice; lower k (or the runs) until the real size fits
        used = {digest[i] for i in chosen(k, m)}
        size = sum(images.viewer_size(d, side) for d in used)
        if size <= budget or (k <= 2 and m <= 1):
            break
        if k > 2:
            k = max(2, min(k - 1, int(k * budget / size)))
        else:
            m = max(1, min(m - 1, int(m * budget / size)))
    images.keep_viewer(used, side)
    plan.runs, plan.frames, plan.side, plan.bytes = [i.run for i in infos[:m]], k, side, size
    frames = {}
    for info, s in zip(infos[:m], seqs):
        wanted = set(spaced(len(s), k))
        frames[info.run] = [_frame(p) for i, p in enumerate(source.pictures(info)) if i in wanted]
    return plan, frames


def _first_last(source: Source, info: RunInfo) -> tuple[Picture | None, Picture | None]:
    return next(source.pictures(info), None), source.last_picture(info)


@dataclass
class _Clustering:
    """A clustering shown on the page: each table run's clusters and the clusters with a gallery row."""

    name: str
    model: str
    anchor: str  # gallery rows are #cluster-<anchor>-<id>
    visits: dict[int, list[int]]  # run: the clusters it visits, most steps first (noise left out)
    shown: set[int]

    def cell(self, run: int, most: int = 4) -> str:
        ids = self.visits.get(run, [])
        links = [f'<a href="#cluster-{self.anchor}-{c}">{c}</a>' if c in self.shown else str(c) for c in ids[:most]]
        return ", ".join(links) + (f" +{len(ids) - most}" if len(ids) > most else "")


def newest_clusterings(source: Source) -> list[tuple[str, dict]]:
    """The newest complete clustering of each embedding model, in the config's order."""
    found = list_results(source.exp, "clusters")
    out = []
    for model in source.config.embedding_models:
        mine = {n: a for n, a in found.items() if a.get("parameters", {}).get("model") == model}
        if mine:
            name = max(mine, key=lambda n: mine[n].get("created_at", ""))
            out.append((name, mine[name]))
    return out


def _shown_at(source: Source, run: int, step: int) -> tuple[str | None, str]:
    for s, digest, caption in source.shown(source.run_info([run])[0]):
        if s == step:
            return digest, caption
    return None, ""


def _gallery(source: Source, images: _Images, infos: list[RunInfo], viewable: set[int]) -> tuple[list[_Clustering], str]:
    """The page's cluster gallery: per clustering (the newest of each model), its ``GALLERY_ROWS``
    largest clusters, each a row #cluster-<anchor>-<id> of the medoid and members drawn as
    `panicflow export gallery` draws them (the same seed 0); and each table run's clusters."""
    from .gallery import sample_members

    shown, parts = [], []
    for name, attrs in newest_clusterings(source):
        model = attrs.get("parameters", {}).get("model", "")
        group = source.exp.group(read_only=True)[f"analysis/clusters/{name}"]
        ids, sizes = group["cluster_id"][:], group["size"][:]
        order = sorted(range(len(ids)), key=lambda i: (-int(sizes[i]), int(ids[i])))[:GALLERY_ROWS]
        medoids: dict[int, tuple[str | None, str]] = {}
        where: dict[int, tuple[int, int]] = {}
        for i in order:
            eid, run, step = str(group["medoid_experiment"][i]), int(group["medoid_run"][i]), int(group["medoid_step"][i])
            here = eid == source.id
            medoids[int(ids[i])] = _shown_at(source if here else Source(eid, source.store), run, step)
            where[int(ids[i])] = (run, step) if here else (-1, -1)
        members = sample_members(source, group, GALLERY_EXAMPLES - 1, 0, medoids, clusters=set(medoids))
        labels = group["label"][: len(infos)] if infos else np.zeros((0, 0), int)
        visits = {}
        for info, row in zip(infos, labels):
            c, n = np.unique(row[row >= 0], return_counts=True)
            visits[info.run] = [int(x) for x in c[np.lexsort((c, -n))]]
        anchor = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) + f"-{len(shown)}"
        shown.append(_Clustering(name, model, anchor, visits, set(medoids)))
        rows = []
        for i in order:
            cid = int(ids[i])
            tiles = []
            for k, (digest, caption, run, step) in enumerate([(*medoids[cid], *where[cid]), *members.get(cid, [])]):
                img = (f'<img alt="cluster {cid}, run {run}, step {step}" src="{images.thumb(digest)}">' if digest
                       else '<div class="noimage">no image</div>')
                at = ("in another experiment" if run < 0 else
                      f'<a href="#run-{run}">run {run}</a> · step {step}' if run in viewable else f"run {run} · step {step}")
                # divs, not <figure>: the page's figures are its charts
                tiles.append(f'<div class="tile{" medoid" if k == 0 else ""}">{img}<div class="label">{"medoid · " if k == 0 else ""}'
                             f'{at}<span>{html.escape(caption)}</span></div></div>')
            rows.append(f'<div class="cluster" id="cluster-{anchor}-{cid}"><h4>cluster {cid} · {int(sizes[i])} members</h4>'
                        f'<div class="tiles">{"".join(tiles)}</div></div>')
        what = f"the {len(order)} largest of " if len(order) < len(ids) else ""
        # closed at first: 24 rows are ~4,000 px of a page already long; a cluster id's link opens it
        parts.append(f'<details class="gallery" id="gallery-{anchor}"><summary>{html.escape(name)} ({html.escape(model)}): '
                     f'{what}{attrs.get("n_clusters", len(ids))} clusters, {attrs.get("n_noise", "?")} of '
                     f'{attrs.get("n_vectors", "?")} vectors noise</summary>{"".join(rows)}</details>')
    if not parts:
        return [], ('<p class="note">No clustering stored: <code>panicflow analyse cluster ID --model MODEL</code> '
                    "adds a gallery of its clusters here, and each run's clusters to the table.</p>")
    return shown, ('<p class="note">The largest clusters of the newest clustering of each embedder (open one), the medoid '
                   "first, then members drawn as <code>panicflow export gallery</code> draws them; the runs table's "
                   "cluster ids lead here.</p>" + "".join(parts))


SORTABLE = {"run": "run", "prompt": "prompt", "network": "network", "seed": "seed", "ending": "ending", "last caption": "caption"}


def _runs_table(source: Source, infos: list[RunInfo], images: _Images, viewable: set[int], clusterings: list[_Clustering],
                progress: Callable[[], None] | None) -> tuple[str, list[dict[str, Any]]]:
    """The runs table (rows start ``<tr><td>``: no attributes, the script finds them by order) and its
    rows as data for the script's filters and sorting."""
    rows, data = [], []
    for info in infos:
        view = info.run in viewable
        cells = [f'<td><a id="row-{info.run}" href="#run-{info.run}">{info.run}</a></td>' if view else f"<td>{info.run}</td>"]
        if source.finished(info.run):
            first, last = _first_last(source, info)
            for p in (first, last):
                # never loading="lazy": a printed page or a full-page screenshot showed unloaded (black) thumbnails
                cells.append(f'<td class="thumb"><img alt="step {p.step}" src="{images.thumb(p.hash)}"></td>' if p
                             else '<td class="thumb"></td>')
            ending, caption, reason = info.ending, last.caption if last else "", info.stop_reason
        else:
            cells += ['<td class="thumb"></td>', '<td class="thumb"></td>']
            ending, caption, reason = "not finished", "", "not finished"
        seed = "unseeded" if info.seed == -1 else str(info.seed)
        cells += [f'<td class="c-prompt">{html.escape(info.prompt)}</td>', f'<td class="c-network">{html.escape(info.network_label)}</td>',
                  f'<td class="c-seed">{seed}</td>', f'<td class="c-ending">{html.escape(ending)}</td>',
                  f'<td class="c-caption">{html.escape(caption)}</td>']
        cells += [f'<td class="c-cluster">{c.cell(info.run)}</td>' for c in clusterings]
        cells.append(f'<td class="c-view"><button type="button" data-run="{info.run}">view</button></td>' if view
                     else '<td class="c-view"></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
        data.append({"run": info.run, "prompt": info.prompt, "network": info.network_label, "seed": seed, "seedNum": info.seed,
                     "reason": reason, "length": info.length, "ending": ending, "caption": caption, "view": view,
                     "clusters": [c.visits.get(info.run, []) for c in clusterings]})
        if progress:
            progress()
    head = "".join(f'<th><button type="button" class="sort" data-sort="{SORTABLE[h]}">{h}</button></th>' if h in SORTABLE
                   else f"<th>{h}</th>" for h in ("run", "first", "last", "prompt", "network", "seed", "ending", "last caption"))
    head += "".join(f'<th><button type="button" class="sort" data-sort="cluster{k}">clusters ({html.escape(c.model)})</button></th>'
                    for k, c in enumerate(clusterings))
    # in a box that scrolls by itself: between phone width (cards) and a wide screen the page never does
    return (f'<div class="table-box"><table class="runs"><thead><tr>{head}<th></th></tr></thead><tbody>{"".join(rows)}</tbody>'
            '</table></div>', data)


def _provenance(source: Source, state: dict[str, Any]) -> str:
    meta = source.exp.meta
    facts = [("experiment", source.id), ("name", meta.get("name") or ""), ("created", meta.get("created_at") or ""),
             ("state", state.get("state", "")), ("coordinator host", state.get("host", "")),
             ("store", source.store.location), ("experiment format", meta.get("format")),
             ("config sha256", meta.get("config_sha256") or ""), ("panicflow", _version("panicflow"))]
    done = state.get("completed_us")
    if isinstance(done, int):
        facts.append(("completed", datetime.fromtimestamp(done / 1e6, timezone.utc).isoformat(timespec="seconds")))
    for k, session in enumerate(source.exp.sessions(), 1):  # what each coordinator session ran with
        versions = ", ".join(f"{n} {v}" for n, v in (session.get("versions") or {}).items() if v)
        workers = f", {len(session['workers'])} worker(s)" if isinstance(session.get("workers"), dict) else ""
        facts.append((f"session {k} ({session.get('host', '')}{workers})", versions))
    facts += _task_durations(source.exp)
    for kind in ("clusters", "drift", "distances"):
        for name, attrs in list_results(source.exp, kind).items():
            what = json.dumps(attrs.get("parameters", {"model": attrs.get("model")}))
            facts.append((f"analysis/{kind}/{name}", f"{what}; {json.dumps(attrs.get('versions', {}))}"))
    return "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts)


def _task_durations(exp) -> list[tuple[str, str]]:
    """Per stage and embedding model, from the task times of the marked results: how many tasks,
    their median and longest duration, and on how many workers (none for experiments without them)."""
    import numpy as np

    from ..store.experiment import NO_TIME

    g = exp.group(read_only=True)
    facts = []
    for stage, marker in (("embeddings", "done"), ("diagrams", "status")):
        for model in exp.config.embedding_models:
            node = g[f"{stage}/{model}"]
            if "started_at" not in node:
                continue  # created before task times were recorded
            start, end = node["started_at"][:], node["ended_at"][:]
            marked = node[marker][:]
            marked = marked if marked.dtype == bool else marked != ""
            timed = marked & (start != NO_TIME) & (end != NO_TIME)
            if not timed.any():
                continue
            seconds = (end[timed] - start[timed]) / 1e6
            workers = len({str(w) for w in node["worker"][:][timed]} - {""})
            facts.append((f"{stage} {model}", f"{int(timed.sum())} tasks: median {np.median(seconds):.2f} s, longest "
                                             f"{seconds.max():.2f} s, {seconds.sum():.1f} s in all, on {workers} worker(s)"))
    return facts


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _charts(paths: list[Path], skipped: list[str]) -> str:
    notes = "".join(f'<p class="note">Not drawn: {html.escape(line)}</p>' for line in skipped)
    if not paths:
        return notes + '<p class="note">No charts: pass <code>--charts DIR</code> with the charts of <code>panicflow plot</code>.</p>'
    figs = []
    for p in paths:
        uri = _data_uri(p.read_bytes(), CHART_TYPES[p.suffix.lower()])
        figs.append(f'<figure><img alt="{html.escape(p.stem)}" src="{uri}"><figcaption>{html.escape(p.name)}</figcaption></figure>')
    return f'<div class="charts">{"".join(figs)}</div>' + notes


def _status(source: Source) -> dict[str, Any]:
    """``panicflow experiment status --json``, and ``eta_text``: its estimate in words (scheduler/eta.py)."""
    from ..api import experiment_status
    from ..scheduler import eta

    status = experiment_status(source.id, store=source.store).to_dict()
    status["eta_text"] = eta.for_state(status.get("eta"), status["state"])
    return status


def build_report(
    experiment_id: str,
    store: str | os.PathLike | None = None,
    *,
    charts: str | os.PathLike | None = None,
    plots: bool = True,
    max_runs: int = 200,
    viewer_runs: int | None = None,
    viewer_frames: int = 120,
    viewer_mib: float = VIEWER_MIB,
    live: bool = False,
    charts_html: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """The page as a string.

    ``charts``: a folder of PNG/JPEG/SVG charts to show; without one (and with ``plots``) the
    charts of panicflow.analysis.plots that can be drawn are. ``live`` makes the served variant
    (images and run data fetched from the server); ``charts_html`` is a charts section drawn before.
    The written viewer holds the table's finished runs (``viewer_runs``: only the first so many)
    in ``viewer_mib`` MiB of images, at most ``viewer_frames`` pictures a run (``plan_viewer``).
    """
    if max_runs < 1 or (viewer_runs is not None and viewer_runs < 0) or viewer_frames < 2 or not viewer_mib > 0:
        raise UserError("--max-runs must be at least 1, --viewer-runs at least 0, --viewer-frames at least 2, "
                        "--viewer-mib more than 0")
    source = Source(experiment_id, store)
    if charts_html is None:
        charts_html = chart_section(source.id, source.store.location, charts, plots)
    status = _status(source)
    infos = source.run_info(list(range(min(max_runs, source.n_runs))))
    finished = [i for i in infos if source.finished(i.run)]
    held = finished if viewer_runs is None else finished[:viewer_runs]
    images = _Images(source, live)
    done, total = [0], (0 if live else len(held)) + len(infos)

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    viewer: dict[int, list[dict[str, Any]]] = {}
    if live:
        viewable = {i.run for i in finished}
        viewer_note = "Every picture of every finished run of the table, fetched from the server."
    else:
        plan, viewer = plan_viewer(source, held, images, int(viewer_mib * 2**20), viewer_frames, tick)
        viewable = set(viewer)
        viewer_note = plan.describe(len(finished), viewer_frames)
    clusterings, gallery = _gallery(source, images, infos, viewable)
    table, rows = _runs_table(source, infos, images, viewable, clusterings, tick)
    shown_note = (f"Runs 0-{len(infos) - 1} of {source.n_runs}; "
                  "<code>panicflow export tables</code> lists them all." if len(infos) < source.n_runs else "")
    data = {"live": live, "pollMs": POLL_MS, "status": status, "viewer": viewer, "runs": rows,
            "pictures": {} if live else {r: plan.pictures[r] for r in viewer},
            "clusterings": [{"name": c.name, "model": c.model} for c in clusterings],
            "images": None if live else images.embedded, "runsEnded": status["runs_complete"] + status["runs_failed"]}
    options = "".join(f'<option value="{i.run}">{html.escape(i.label)}</option>' for i in finished if i.run in viewable)
    name = source.exp.name or source.id
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    config = yaml.safe_dump(source.exp.meta.get("config", {}), sort_keys=False, allow_unicode=True, default_flow_style=None)
    return PAGE.format(
        csp=CSP_LIVE if live else CSP_STATIC, title=html.escape(f"panicflow · {name}"), name=html.escape(name),
        id=html.escape(source.id), made=made, mode="live" if live else "written",
        css=_asset("report.css"), js=_asset("report.js"),
        data=json.dumps(data).replace("<", "\\u003c"), provenance=_provenance(source, source.exp.read_state()),
        config=html.escape(config), charts=charts_html, table=table, note=shown_note, options=options,
        viewer_hidden="" if options else "hidden", viewer_note=viewer_note, gallery=gallery,
    )


def write_report(experiment_id: str, out: str | os.PathLike, store: str | os.PathLike | None = None, **options: Any) -> str:
    """Write the page (``build_report``'s options) to ``out``, atomically; returns its path."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out: the report is an .html file; {str(out)!r} has another suffix")
    page = build_report(experiment_id, store, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return str(out)


# ------------------------------------------------------------------------ serving
class ReportServer:
    """The live report of one experiment on http://127.0.0.1:PORT/ (port 0: any free port).

    It listens at once; the charts are drawn when a page is loaded, from the data as it is then,
    and drawn again only when what they show may have changed (``charts_key``: runs ended,
    embeddings and diagrams marked, the analysis results stored), so that a page opened while the
    experiment runs shows the diagrams that came since, and a reload of an unchanged experiment
    costs no drawing (13-15 s at 200 runs)."""

    def __init__(self, experiment_id: str, store: str | os.PathLike | None = None, port: int = 8765, **options: Any) -> None:
        source = Source(experiment_id, store)  # fail now on a bad id or store, not at the first request
        self.experiment_id, self.store = source.id, source.store
        self._charts, self._plots = options.pop("charts", None), options.pop("plots", True)
        self.options = options
        self._drawn: tuple[Any, str] | None = None  # (charts_key, charts HTML)
        self._drawing = threading.Lock()
        handler = type("Handler", (_Handler,), {"report": self})
        try:
            self.httpd = ThreadingHTTPServer((HOST, port), handler)
        except OSError as exc:
            raise UserError(f"--port: cannot listen on {HOST}:{port} ({exc.strerror or exc}); choose another port") from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> "ReportServer":
        """Serve from a background thread (for tests and notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="panicflow-report", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> "ReportServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def source(self) -> Source:
        return Source(self.experiment_id, self.store)  # fresh: runs finish while the page is open

    def charts_html(self) -> str:
        """The charts section as the data are now: drawn again only if ``charts_key`` changed."""
        with self._drawing:  # two loads at once draw once
            key = charts_key(self.source()) if self._charts is None and self._plots else "fixed"
            if self._drawn is None or self._drawn[0] != key:
                self._drawn = (key, chart_section(self.experiment_id, self.store.location, self._charts, self._plots))
            return self._drawn[1]


def charts_key(source: Source) -> tuple:
    """What the drawn charts depend on, read cheaply: the runs ended, embedded and with a diagram
    per model (the markers), and the analysis results stored (name and time of each)."""
    from ..store.experiment import read_markers

    markers = read_markers(source.exp)
    ended = int(sum(1 for r in markers["stop_reason"] if str(r)))
    embedded = tuple(int(v.sum()) for v in markers["embedded"].values())
    diagrams = tuple(sum(1 for x in v if str(x)) for v in markers["diagram_status"].values())
    results = tuple((kind, name, attrs.get("created_at")) for kind in ("clusters", "drift", "distances", "divergence",
                                                                     "sequences", "entropy")
                    for name, attrs in list_results(source.exp, kind).items())
    return ended, embedded, diagrams, results


def serve_report(experiment_id: str, store: str | os.PathLike | None = None, port: int = 8765, **options: Any) -> ReportServer:
    """A ``ReportServer`` (not yet serving: call ``serve_forever()`` or ``start()``)."""
    return ReportServer(experiment_id, store, port, **options)


@lru_cache(maxsize=4096)
def _thumbnail(store_location: str, digest: str) -> bytes:
    from ..store import Store
    from ..store.objects import decode_image

    return thumbnail_bytes(decode_image(Store(store_location).objects.get_bytes(digest, verify=True)), THUMB)


class _Handler(BaseHTTPRequestHandler):
    report: ReportServer
    server_version = "panicflow-report"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal shows the URL only
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if not self._host_allowed():
            # DNS rebinding: a page of another site whose name now resolves to 127.0.0.1 would read
            # this one (prompts, images) as its own; a browser sends that site's name as Host
            return self._send(b"forbidden host", "text/plain", status=HTTPStatus.FORBIDDEN)
        path = self.path.split("?", 1)[0].strip("/")
        try:
            if path == "":
                page = build_report(self.report.experiment_id, self.report.store, live=True,
                                    charts_html=self.report.charts_html(), **self.report.options)
                return self._send(page.encode(), "text/html; charset=utf-8", csp=CSP_LIVE)
            if path == "api/status":
                return self._json(_status(self.report.source()))
            if path.startswith("api/run/") and path[8:].isdigit():
                return self._run(int(path[8:]))
            if path.startswith(("object/", "thumb/")):
                return self._image(*path.split("/", 1))
        except (MissingObject, CorruptObject, ValueError):  # not a stored image, or a damaged one
            pass
        self._send(b"not found", "text/plain", status=HTTPStatus.NOT_FOUND)

    def _run(self, run: int) -> None:
        source = self.report.source()
        if not (0 <= run < source.n_runs and source.finished(run)):
            return self._send(b"no such finished run", "text/plain", status=HTTPStatus.NOT_FOUND)
        info = source.run_info([run])[0]
        self._json({"run": run, "frames": _viewer_frames(source, info, None)})

    def _image(self, kind: str, digest: str) -> None:
        store = self.report.store
        store.objects.key_for(digest)  # ValueError (404) for anything but a sha256 hex digest
        if kind == "thumb":
            return self._send(_thumbnail(store.location, digest), "image/jpeg", cache=True)
        data = store.objects.get_bytes(digest, verify=True)
        if data[:4] != b"RIFF" or data[8:12] != b"WEBP":  # images only, never a stored text
            raise ValueError(digest)
        self._send(data, "image/webp", cache=True)

    def _host_allowed(self) -> bool:
        """The ``Host`` header names this server: a loopback name or the address it listens on."""
        host = (self.headers.get("Host") or "").strip().lower()
        port = str(self.server.server_address[1])
        if host.startswith("["):  # [::1]:8765
            name, _, rest = host[1:].partition("]")
            given = rest[1:] if rest.startswith(":") else ""
        else:
            name, _, given = host.partition(":")
        return name in ALLOWED_HOSTS | {self.server.server_address[0]} and given in ("", port)

    def _json(self, obj: Any) -> None:
        self._send(json.dumps(obj).encode(), "application/json")

    def _send(self, body: bytes, mime: str, *, status: HTTPStatus = HTTPStatus.OK, csp: str | None = None,
              cache: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", mime)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=31536000, immutable" if cache else "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if csp:
                self.send_header("Content-Security-Policy", csp)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the browser went away mid-answer: nothing to say
            self.close_connection = True


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{name} <span id="state" class="badge"></span></h1>
<div class="sub">experiment {id} · page {mode} {made}<span id="updated"></span></div>
<nav><a href="#progress">progress</a> <a href="#charts">charts</a> <a href="#viewer">viewer</a> <a href="#clusters">clusters</a> <a href="#runs">runs</a> <a href="#config">config</a></nav>
</header>
<main>
<section id="progress">
<h2>Progress</h2>
<div id="bars" class="bars"></div>
<dl id="facts" class="facts"></dl>
<p id="reload-note" class="note" hidden></p>
</section>
<section id="charts">
<h2>Charts</h2>
{charts}
</section>
<section id="viewer" {viewer_hidden}>
<h2>Run viewer</h2>
<p class="note" id="viewer-note">{viewer_note}</p>
<label>run <select id="viewer-run">{options}</select></label>
<div id="viewer-info" class="run-info"></div>
<div class="controls">
<button id="viewer-prev" type="button">&#9664; previous</button>
<span id="viewer-pos"></span>
<button id="viewer-next" type="button">next &#9654;</button>
<input id="viewer-slider" type="range" min="0" max="0" value="0" aria-label="image">
</div>
<div class="stage"><img id="viewer-image" alt=""><div id="viewer-caption"></div></div>
<p class="note">The arrow keys step too. Each image is shown with the caption written of it.</p>
</section>
<section id="clusters">
<h2>Clusters</h2>
{gallery}
</section>
<section id="runs">
<h2>Runs</h2>
<p class="note">{note}</p>
<div id="filters" class="filters" hidden></div>
{table}
</section>
<section id="config">
<h2>Config and provenance</h2>
<dl class="facts">{provenance}</dl>
<pre>{config}</pre>
</section>
</main>
<dialog id="lightbox"><p id="lightbox-caption"></p></dialog>
<script type="application/json" id="pf-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
