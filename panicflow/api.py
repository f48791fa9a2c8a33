"""The Python API: run, resume, list and open experiments.

Everything the CLI does goes through these functions; ``experiment_status`` and
``list_experiments`` live in panicflow/status.py (no cluster, no xarray: what `panicflow experiment
status` and `list` load) and are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from distributed import Client
from PIL import Image

from . import settings
from .config import ExperimentConfig, load_config
from .errors import STORE_WRITE_ERRNOS, Interrupted, RunsFailed, StoreIOError, UserError
from .scheduler import dashboard, spans
from .scheduler.cluster import LOCALHOST, check_security, check_store_reachable, connect
from .scheduler.coordinator import Coordinator, Progress
from .scheduler.stopping import SignalsHeld, StopRequest, signals_handled
from .status import ExperimentStatus, StoreLike, experiment_status, list_experiments  # noqa: F401  (re-exported)
from .status import _metadata_read, _store
from .store import Experiment, Store, consolidated
from .store.experiment import read_markers
from .store.writable import check_writable
from .store.objects import decode_image

if TYPE_CHECKING:
    import xarray as xr
    from distributed.security import Security

log = logging.getLogger(__name__)

def run_experiment(
    config: ExperimentConfig | dict | str | Path,
    store: StoreLike = None,
    client: Client | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[Experiment, Client], None] | None = None,
    security: Security | None = None,
    host: str = LOCALHOST,
    dashboard_address: str | int | None = None,
    gpus: int | None = None,
    scheduler_file: str | os.PathLike | None = None,
    stop: StopRequest | None = None,
) -> str:
    """Run an experiment to the end and return its id.

    ``config`` is a config object, a mapping or a JSON/YAML path; it is
    validated before anything is written. With no ``client`` a LocalCluster is
    started (and closed) here, listening on ``host`` (default 127.0.0.1) with
    its dashboard on ``dashboard_address`` (default ``host:8787``); with
    ``scheduler=`` an address, that cluster is used (``security=`` a
    ``distributed.security.Security`` for a ``tls://`` one), or the one whose
    address ``scheduler_file=`` holds (``dask scheduler --scheduler-file``); with
    none of these, nor ``workers``/``gpus``, the ``DASK_SCHEDULER_ADDRESS`` one if
    set; with a ``distributed.Client`` its cluster is used as is. ``store``
    defaults to ``$PANICFLOW_STORE`` or ``./panicflow-store`` (a local path is
    made absolute); every worker must reach it, which is checked before anything
    is written (``StoreUnreachable``, docs/clusters.md).

    Raises ``RunsFailed`` (with ``.experiment_id``) when the experiment finished
    but some runs failed; ``resume_experiment(id, retry_failed=True)`` retries them.

    SIGTERM, SIGHUP and Ctrl-C (in the main thread) stop it gracefully: nothing new starts,
    results in flight land for ``stop.grace_s`` seconds (the ``panicflow.stop-grace`` setting, 5), the experiment is marked
    interrupted and ``panicflow.errors.Interrupted`` (with ``.experiment_id``) is raised; a second
    signal stops at once. ``stop`` (a ``panicflow.scheduler.stopping.StopRequest``) sets the grace,
    and lets another thread stop it (``stop.request("cancel")``).
    """
    cfg = load_config(config)
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    check_security(security)
    st = _store(store, create=True, lazy=True)
    check_writable(st)  # an existing store that refuses writes: one line now, not once a cluster has started
    # a new store and the experiment are written once a cluster is there: a bad --scheduler writes nothing
    with connect(client, scheduler=scheduler, workers=workers, dashboard_address=dashboard_address,
                 host=host, security=security, gpus=gpus, scheduler_file=scheduler_file) as c:
        check_store_reachable(c, st)
        # a signal meanwhile acts once the id is known (on_start: the CLI prints it, --id-file records
        # it): cut in between, a job script would think nothing was created and create a second one
        with contextlib.ExitStack() as owned:
            with SignalsHeld() as held:
                with _store_faults(st, None):
                    st.ensure_created()
                    exp = Experiment.create(st.root, st.new_experiment_id(), cfg)
                owned.enter_context(_store_faults(st, exp))
                owned.enter_context(exp.take())
                if on_start:
                    on_start(exp, c)
            held.act()
            _drive(st, exp, c, progress, None, stop=stop)
    return exp.id


def resume_experiment(
    experiment_id: str,
    store: StoreLike = None,
    client: Client | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[Experiment, Client], None] | None = None,
    retry_failed: bool = False,
    security: Security | None = None,
    host: str = LOCALHOST,
    dashboard_address: str | int | None = None,
    gpus: int | None = None,
    scheduler_file: str | os.PathLike | None = None,
    stop: StopRequest | None = None,
) -> str:
    """Finish an interrupted experiment exactly as an uninterrupted run would have.

    ``retry_failed`` also gives runs that failed (their model kept raising)
    another go from the step that failed. The cluster arguments, ``stop`` and the signals
    are those of ``run_experiment``, and so are ``RunsFailed`` when runs are still failed at
    the end and ``Interrupted`` when it is stopped again.
    """
    st = _store(store)
    exp = st.experiment(experiment_id)
    state = exp.read_state()
    if not exp.leased() and exp.effective_state() == "running":  # a coordinator from before leases
        raise UserError(
            f"experiment {exp.id} is running (pid {state.get('pid')} on {state.get('host')}); "
            "wait for it or stop that process first"
        )
    exp.config  # fail on a damaged stored config, or data.zarr, before starting a cluster
    exp.group(read_only=True)
    check_writable(st)  # a read-only or full store: one line (exit 2), not an experiment "stopped" by it
    # own the experiment before the cluster starts (seconds): a second resume meanwhile is refused
    with _store_faults(st, exp), exp.take(), connect(
        client, scheduler=scheduler, workers=workers, dashboard_address=dashboard_address,
        host=host, security=security, gpus=gpus, scheduler_file=scheduler_file,
    ) as c:
        check_store_reachable(c, st)
        _drive(st, exp, c, progress, on_start, retry_failed, stop=stop)
    return exp.id


@contextlib.contextmanager
def _store_faults(st: Store, exp: Experiment | None) -> Iterator[None]:
    """A full or read-only store said in one line (``StoreIOError``) instead of a raw OSError that
    names a temp file, or no file at all (a failed write()): tests/test_faults.py, test_cli_hygiene.py."""
    try:
        yield
    except Exception as exc:
        err = _store_io_error(st, exp, exc)
        if err is None:
            raise
        raise err from exc


def _store_io_error(st: Store, exp: Experiment | None, exc: BaseException) -> StoreIOError | None:
    """One clear line for an OS error on a file of a local store, found in ``exc`` or what caused it
    (a worker's error comes wrapped), or for a full disk, a quota or a read-only file system there
    (what a failed write() raises names no file); None for anything else (a lost scheduler is an
    OSError too)."""
    root = getattr(st.root, "path", None)
    seen: set[int] = set()
    while root and exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and not isinstance(exc, StoreIOError):
            names = [n for n in (exc.filename2, exc.filename) if isinstance(n, str)]
            inside = [n for n in names if n == root or n.startswith(root + os.sep)]
            if inside or (not names and exc.errno in STORE_WRITE_ERRNOS):
                where = f" ({os.path.relpath(inside[0], root)})" if inside and inside[0] != root else ""
                if exp is None:
                    then = "no experiment was created; run it again once the store accepts writes"
                else:
                    then = (f"experiment {exp.id} stopped: `panicflow experiment resume {exp.id} --store {st.location}` "
                            "continues it once the store accepts writes again")
                err = StoreIOError(f"store {st.location}: {exc.strerror or exc}{where}; {then}")
                err.errno, err.experiment_id, err.store = exc.errno, exp.id if exp else "", st.location
                return err
        exc = exc.__cause__ or exc.__context__
    return None


class _Publisher:
    """The coordinator's progress callback: the caller's, and a snapshot for the scheduler's
    panicflow page and /metrics every ``interval_s`` (scheduler/dashboard.py)."""

    def __init__(self, client: Client, exp: Experiment, callback, interval_s: float = 1.0) -> None:
        self.client, self.exp, self.callback, self.interval_s = client, exp, callback, interval_s
        self.enabled = dashboard.register(client)
        self.last = 0.0
        self.latest: dict[str, Any] = {}  # the last snapshot published

    def __call__(self, snap) -> None:
        if self.callback:
            self.callback(snap)
        now = time.monotonic()
        if self.enabled and now - self.last >= self.interval_s:
            self.last = now
            self.publish({**dashboard.snapshot_dict(snap), "name": self.exp.name or "", "state": "running"})

    def stopped(self, state: str) -> None:
        """The coordinator stopped before the end: its last numbers, with the state it left
        (no store read: a batch system's SIGKILL follows its SIGTERM within seconds)."""
        if self.enabled and self.latest:
            self.publish({**self.latest, "state": state})

    def publish(self, snapshot: dict[str, Any]) -> None:
        self.latest = snapshot
        try:
            dashboard.publish_progress(self.client, self.exp.id, snapshot)
        except Exception as exc:  # the page is a view: never let it stop an experiment
            log.debug("progress not published: %r", exc)


def _drive(st, exp, c, progress, on_start, retry_failed=False, stop: StopRequest | None = None) -> None:
    if on_start:
        on_start(exp, c)
    publisher = _Publisher(c, exp, progress, interval_s=settings.get("progress-interval"))
    spans.register(c)  # the scheduler forgets our finished Dask spans: flat memory (scheduler/spans.py)
    stop = stop or StopRequest()
    try:
        with signals_handled(stop):  # SIGTERM, SIGHUP, Ctrl-C: stop gracefully (scheduler/stopping.py)
            Coordinator(c, st, exp, progress=publisher, retry_failed=retry_failed, stop=stop).run()
    except (Interrupted, KeyboardInterrupt):
        publisher.stopped("interrupted")
        raise
    except Exception:
        publisher.stopped("failed")
        raise
    status = experiment_status(exp.id, store=st)
    if publisher.enabled:  # the final numbers, read from the store as `panicflow experiment status` does
        publisher.publish(dashboard.snapshot_dict(status))
    if status.runs_failed:
        first = min(status.errors) if status.errors else None
        why = f"; run {first}: {status.errors[first].splitlines()[0]}" if first is not None and status.errors[first] else ""
        raise RunsFailed(
            f"experiment {exp.id}: {status.runs_failed} of {status.runs} runs failed{why}; "
            f"`panicflow experiment resume {exp.id} --retry-failed` gives them another go",
            exp.id, status.runs_failed, status.runs,
        )


def open_experiment(experiment_id: str, store: StoreLike = None, chunks: int | str | dict | None = None) -> xr.DataTree:
    """The results as an xarray DataTree backed lazily by Zarr.

    Root node: per-run variables (network, seed, prompt, length, stop_reason,
    loop_start, loop_period, error) and per-invocation variables on (run, step)
    (model, kind, output_hash, text, invocation_seed, started_at, ended_at).
    ``embeddings/<model>``: ``vector`` (run, step, dim), NaN where the model
    does not apply, and ``done``. ``diagrams/<model>``: ``status``, ``reason``,
    ``n_points``, ``entropy`` (run, homology_dim) and the padded pairs
    ``birth``/``death``/``dimension`` (run, pair). Both nodes have ``started_at``/``ended_at`` (datetimes)
    and ``worker`` of each run's task (NaT / empty where none ran; absent, until resumed, in older experiments).
    Strings are Python objects (``_strings_as_objects``). Runs still in progress show only what has been materialised.

    ``chunks`` as xarray's ``open_*`` take it (``{}``: the stored chunks, ``"auto"``, or sizes by
    dimension such as ``{"run": 64}``) makes every data variable a Dask array, computed where Dask
    computes (the cluster of an active ``distributed.Client``); without it variables are read
    lazily into NumPy. The run labels stay in memory either way. A finished experiment is opened
    through its consolidated metadata (one read for the whole hierarchy; store/consolidated.py).
    """
    import xarray as xr  # here, not at the top: running an experiment never needs it (0.5 s of import)

    st = _store(store)
    exp = st.experiment(experiment_id)
    exp.config
    markers = None
    state = exp.read_state().get("state")
    if state != "complete":
        # Still being written: read the markers before the tree's metadata and show those. Rows marked
        # then are final in anything read later, and the pair axis is already as wide as their diagrams
        # need. Markers read lazily after the open could certify pairs beyond the width the view got at
        # open, or data read before them (.load() reads variables in no set order): tests/test_faults.py
        with _metadata_read(exp):
            markers = read_markers(exp)
    # written only when finished, and dropped before any later change of the hierarchy: never stale
    use_consolidated = state in consolidated.FINISHED and consolidated.present(exp)
    for attempt in range(20):
        try:
            with _metadata_read(exp):
                tree = xr.open_datatree(exp.root.zarr_store(exp.data_key, read_only=True), engine="zarr",
                                        consolidated=use_consolidated, zarr_format=3)
            break
        except ValueError as exc:
            if use_consolidated and "Consolidated metadata requested" in str(exc):
                use_consolidated = False  # removed since it was looked for: the hierarchy is being changed
                continue
            # the coordinator widens the diagram pair arrays one after another: a view opened
            # between two of those writes sees two widths; the next look sees one
            if "conflicting sizes" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.05)
    if markers is not None:
        snapshot = {"stop_reason": markers["stop_reason"], "length": markers["length"]}
        for m in exp.config.embedding_models:
            snapshot[f"embeddings/{m}/done"] = markers["embedded"][m]
            snapshot[f"diagrams/{m}/status"] = markers["diagram_status"][m]
        for path, values in snapshot.items():
            tree[path] = tree[path].copy(data=values)
    if chunks is not None:
        _as_dask(tree, chunks)
    _strings_as_objects(tree)
    _label_runs(tree)
    tree.attrs["store"] = st.location
    return tree


def _strings_as_objects(tree: xr.DataTree) -> None:
    """Strings as Python objects, lazily, in every node. Zarr gives NumPy's variable-width
    StringDType, which NumPy cannot promote to float: ``ds.where(...)`` (which fills with NaN)
    and ``isin`` raise on any dataset holding one (tests/test_xarray_idioms.py)."""
    import xarray as xr
    from xarray.coding.common import lazy_elemwise_func  # what xarray's own decoders use to convert lazily

    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        strings = {name: var for name, var in ds.variables.items() if var.dtype.kind == "T"}
        if not strings:
            continue
        converted = {
            # an index is in memory already; any other variable is read (and converted) when indexed
            name: var.astype(object) if name in ds.indexes
            else xr.Variable(var.dims, lazy_elemwise_func(var._data, _as_objects, np.dtype(object)), var.attrs, var.encoding)
            for name, var in strings.items()
        }
        node.dataset = ds.assign_coords({n: v for n, v in converted.items() if n in ds.coords}).assign(
            {n: v for n, v in converted.items() if n not in ds.coords})


STRING_BYTES = 64  # what Dask's "auto" chunking counts per string: a sha256 hex digest, a short text


def _as_dask(tree: xr.DataTree, chunks: int | str | dict) -> None:
    """Every variable of every node but the indexes a Dask array, chunked as xarray's ``open_*(chunks=)``
    chunk it: sizes by dimension, the stored chunks where none is given, "auto" in multiples of them;
    except that a sharded array's stored chunk is its shard (one object, one task, not one per run).
    Done here, not by xarray, because Dask cannot size strings by itself ("auto" raises on them)."""
    from dask.array.core import normalize_chunks

    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        chunked = {}
        for name, var in ds.variables.items():
            if name in ds.indexes:
                continue
            shards = var.encoding.get("shards")
            stored = dict(zip(var.dims, shards)) if shards else var.encoding.get("preferred_chunks", {})
            spec = chunks if isinstance(chunks, dict) else dict.fromkeys(var.dims, chunks)
            previous = tuple(stored.get(d, n) for d, n in zip(var.dims, var.shape))
            wanted = tuple(spec.get(d) or p for d, p in zip(var.dims, previous))
            dtype = np.dtype(f"S{STRING_BYTES}") if var.dtype.kind == "T" else var.dtype
            sizes = normalize_chunks(wanted, var.shape, dtype=dtype, previous_chunks=previous)
            chunked[name] = var.chunk(dict(zip(var.dims, sizes)))
        node.dataset = ds.assign_coords({n: v for n, v in chunked.items() if n in ds.coords}).assign(
            {n: v for n, v in chunked.items() if n not in ds.coords})


def _as_objects(values: np.ndarray) -> np.ndarray:
    return values.astype(object)  # module level: a Dask graph carries it to the workers


RUN_LABELS = ("network", "seed", "prompt", "stop_reason")


def _label_runs(tree: xr.DataTree) -> None:
    """Make the run labels coordinates on ``run`` in every node, so that
    ``tree["embeddings/X"].ds.groupby("prompt")`` or ``.sel`` by seed work anywhere (xarray's
    DataTree inherits only index coordinates, so each node gets its own copy: a few values per run).
    Strings come as Python objects, so the usual comparisons (``ds.stop_reason == "loop"``) work."""
    root = tree.to_dataset(inherit=False)
    labels = {}
    for name in RUN_LABELS:
        values = root[name].values
        labels[name] = ("run", values.astype(object) if values.dtype.kind in "TOU" else values)
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        if "run" in ds.dims:
            node.dataset = ds.drop_vars([n for n in RUN_LABELS if n in ds]).assign_coords(labels)


def load_image(digest: str, store: StoreLike = None) -> Image.Image:
    """The image stored under ``digest`` (an ``output_hash``), as a PIL image.

    ``digest`` must be a sha256 hex digest (``ValueError`` otherwise), so it can
    only name a file under the store's objects/; the bytes are checked against
    it (``CorruptObject``), so a file planted there, or a link out of the
    store, is never returned.
    """
    return decode_image(_store(store).objects.get_bytes(digest, verify=True))


def load_text(digest: str, store: StoreLike = None) -> str:
    """The text stored under ``digest``, checked like ``load_image``."""
    return _store(store).objects.get_bytes(digest, verify=True).decode("utf-8")


def doctor(
    experiment_id: str | None = None,
    store: StoreLike = None,
    *,
    fix: bool = False,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    say: Callable[[str], None] | None = None,
):
    """Check one experiment (all of them with no id) against the store contract (docs/doctor.md).

    Returns a ``panicflow.doctor.DoctorReport`` (``.clean``, ``.exit_code``,
    ``.to_dict()``). With ``fix`` it repairs what can be rebuilt from the store;
    embeddings and diagrams are recomputed through resume, on ``client``, on
    ``scheduler``, or on a LocalCluster of ``workers`` processes started only if
    needed. Raises ``UserError`` for an unknown id or a store that cannot be opened;
    problems inside the store are reported, never raised.
    """
    from .doctor import run_doctor

    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    st = _store(store)
    if fix:
        check_writable(st)  # nothing can be repaired in a store that refuses writes: one line (exit 2)
    return run_doctor(experiment_id, st, fix=fix, client=client, scheduler=scheduler, workers=workers, say=say,
                      resume=resume_experiment)  # passed in: the doctor package does not import the API

