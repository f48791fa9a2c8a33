"""The experiment report: one self-contained HTML page, written to a file or served on localhost.

The page holds the config and provenance, the progress numbers and stop reasons, the charts
of a folder (PNG, JPEG, SVG), a table of runs with thumbnails and last captions, and a run
viewer (buttons, a slider, the arrow keys). Everything is inline: images as data URIs, the
style and script of this package; a Content-Security-Policy forbids anything else.

A written page is bounded: ``max_runs`` table rows, and the viewer holds ``viewer_runs``
runs of at most ``viewer_frames`` pictures each (evenly spaced), images stored once per
hash. ``serve_report`` serves the same page from 127.0.0.1 only, rebuilt on every load, with
small JSON endpoints: ``api/status`` (what ``panicflow experiment status --json`` prints,
polled by the page every few seconds, so a running experiment's progress moves on screen),
``api/run/N`` (every picture of a finished run) and ``object/HASH``/``thumb/HASH`` (stored
images, checked against their hash).
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
import threading
from datetime import datetime, timezone
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable

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
VIEWER_IMAGE = 384
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
            paths += [Path(p) for p in plots.plot(experiment_id, kind, out=folder, store=store, store_results=False)
                      if str(p).endswith(".png")]
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

    def thumb(self, digest: str) -> str:
        if self.live:
            return f"thumb/{digest}"
        key = f"t:{digest}"
        if key not in self.embedded:
            self.embedded[key] = _data_uri(thumbnail_bytes(self.source.image(digest), THUMB), "image/jpeg")
        return self.embedded[key]

    def viewer(self, digest: str) -> None:
        key = f"v:{digest}"
        if key not in self.embedded:
            self.embedded[key] = _data_uri(thumbnail_bytes(self.source.image(digest), VIEWER_IMAGE), "image/jpeg")


def _frame(p: Picture) -> dict[str, Any]:
    return {"step": p.step, "model": p.model, "hash": p.hash, "caption": p.caption}


def _viewer_frames(source: Source, info: RunInfo, limit: int | None) -> list[dict[str, Any]]:
    if limit is None:
        return [_frame(p) for p in source.pictures(info)]
    wanted = set(spaced(source.picture_count(info), limit))
    return [_frame(p) for i, p in enumerate(source.pictures(info)) if i in wanted]


def _first_last(source: Source, info: RunInfo) -> tuple[Picture | None, Picture | None]:
    return next(source.pictures(info), None), source.last_picture(info)


def _runs_table(source: Source, infos: list[RunInfo], images: _Images, viewable: set[int],
                progress: Callable[[int, int], None] | None) -> str:
    rows = []
    for i, info in enumerate(infos):
        cells = [f"<td>{info.run}</td>"]
        if source.finished(info.run):
            first, last = _first_last(source, info)
            for p in (first, last):
                cells.append(f'<td><img loading="lazy" alt="step {p.step}" src="{images.thumb(p.hash)}"></td>' if p else "<td></td>")
            ending, caption = info.ending, last.caption if last else ""
        else:
            cells += ["<td></td>", "<td></td>"]
            ending, caption = "not finished", ""
        seed = "unseeded" if info.seed == -1 else str(info.seed)
        cells += [f"<td>{html.escape(info.prompt)}</td>", f"<td>{html.escape(info.network_label)}</td>", f"<td>{seed}</td>",
                  f"<td>{html.escape(ending)}</td>", f"<td>{html.escape(caption)}</td>",
                  f'<td><button data-run="{info.run}">view</button></td>' if info.run in viewable else "<td></td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
        if progress:
            progress(i + 1, len(infos))
    head = "".join(f"<th>{h}</th>" for h in ("run", "first", "last", "prompt", "network", "seed", "ending", "last caption", ""))
    return f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


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
    viewer_runs: int = 12,
    viewer_frames: int = 120,
    live: bool = False,
    charts_html: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """The page as a string.

    ``charts``: a folder of PNG/JPEG/SVG charts to show; without one (and with ``plots``) the
    charts of panicflow.analysis.plots that can be drawn are. ``live`` makes the served variant
    (images and run data fetched from the server); ``charts_html`` is a charts section drawn before.
    """
    if max_runs < 1 or viewer_runs < 0 or viewer_frames < 2:
        raise UserError("--max-runs must be at least 1, --viewer-runs at least 0, --viewer-frames at least 2")
    source = Source(experiment_id, store)
    if charts_html is None:
        charts_html = chart_section(source.id, source.store.location, charts, plots)
    status = _status(source)
    infos = source.run_info(list(range(min(max_runs, source.n_runs))))
    finished = [i for i in infos if source.finished(i.run)]
    images = _Images(source, live)
    viewer: dict[int, list[dict[str, Any]]] = {}
    if live:
        viewable = {i.run for i in finished}
    else:
        for info in finished[:viewer_runs]:
            viewer[info.run] = _viewer_frames(source, info, viewer_frames)
            for f in viewer[info.run]:
                images.viewer(f["hash"])
        viewable = set(viewer)
    table = _runs_table(source, infos, images, viewable, progress)
    shown_note = (f"Runs 0-{len(infos) - 1} of {source.n_runs}; "
                  "<code>panicflow export tables</code> lists them all." if len(infos) < source.n_runs else "")
    if not live and len(finished) > len(viewer):
        shown_note += (f" The viewer holds the first {len(viewer)} finished runs (up to {viewer_frames} images each); "
                       "<code>panicflow report --serve</code> shows every run in full.")
    data = {"live": live, "pollMs": POLL_MS, "status": status, "viewer": viewer,
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
        viewer_hidden="" if options else "hidden",
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
<label>run <select id="viewer-run">{options}</select></label>
<div class="controls">
<button id="viewer-prev" type="button">&#9664; previous</button>
<span id="viewer-pos"></span>
<button id="viewer-next" type="button">next &#9654;</button>
<input id="viewer-slider" type="range" min="0" max="0" value="0" aria-label="image">
</div>
<div class="stage"><img id="viewer-image" alt=""><div id="viewer-caption"></div></div>
<p class="note">The arrow keys step too. Each image is shown with the caption written of it.</p>
</section>
<section id="runs">
<h2>Runs</h2>
<p class="note">{note}</p>
{table}
</section>
<section id="config">
<h2>Config and provenance</h2>
<dl class="facts">{provenance}</dl>
<pre>{config}</pre>
</section>
</main>
<script type="application/json" id="pf-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
