"""Where the work runs: an embedded LocalCluster, or a cluster the user already has.

A cluster the user has is found as Dask users expect: ``--scheduler ADDRESS``,
``--scheduler-file PATH`` (what ``dask scheduler --scheduler-file`` writes), or the
``scheduler-address`` Dask setting (``DASK_SCHEDULER_ADDRESS``). Before anything is
written, ``check_store_reachable`` makes sure every worker opens the same store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlsplit

from ..errors import StoreError, StoreUnreachable, UserError
from .stopping import SignalsHeld

if TYPE_CHECKING:
    from distributed import Client
    from distributed.security import Security

# dask, distributed and asyncio are imported where a cluster is reached, not here: the CLI reads
# LOCALHOST for its --host default, and `panicflow --help` should not pay for them
# (tests/test_cli_startup.py)

LOCALHOST = "127.0.0.1"
DASHBOARD_PORT = 8787
_TLS_HINT = "pass --tls-ca-file and --tls-cert (and --tls-key), or security= in the API"


def dashboard_bind(dashboard_address: str | int | None, host: str = LOCALHOST) -> str:
    """Where the dashboard listens: ``host:8787`` by default; a bare port (``8787``, ``:8787``)
    binds to ``host`` too (Dask itself would bind those to every interface)."""
    if dashboard_address is None:
        return f"{host}:{DASHBOARD_PORT}"
    text = str(dashboard_address).strip()
    if text.isdigit():
        return f"{host}:{text}"
    if text.startswith(":"):
        return f"{host}{text}"
    return text


def check_security(security: Security | None) -> None:
    """Fail early, as a user error, on certificates that cannot be loaded."""
    if security is None:
        return
    try:
        security.get_connection_args("client")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise UserError(f"--tls-cert: cannot load the TLS certificates: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_host(host: str) -> None:
    """Refuse a listening address that would bind every interface by accident: an empty
    ``--host`` (an unset shell variable is enough) makes Dask listen on all of them."""
    if not isinstance(host, str) or not host.strip() or any(ch.isspace() or not ch.isprintable() for ch in host):
        raise UserError(
            f"--host: {host!r} is not an address to listen on; give 127.0.0.1 (this machine only, the default) "
            "or this machine's address on the cluster's network"
        )


def check_listen(host: str, dashboard_address: str | int | None) -> None:
    """Refuse, as a user error, a ``--host`` or ``--dashboard-address`` the embedded cluster
    cannot listen on (a name that does not resolve, an address of another machine, a port
    out of range), before anything starts: Dask would fail with a bare OSError."""
    from distributed.utils import clean_dashboard_address

    check_host(host)
    _check_bind("--host", host)
    text = dashboard_bind(dashboard_address, host)
    try:
        entries = clean_dashboard_address(text, host)
    except (TypeError, ValueError):
        entries = []
    if not entries or any(not e["address"] or not 0 <= e["port"] <= 65535 for e in entries):
        raise UserError(f"--dashboard-address: {dashboard_address!r} is not HOST:PORT or PORT (a port is 0 to 65535)")
    for e in entries:
        _check_bind("--dashboard-address", e["address"])


def _check_bind(option: str, host: str) -> None:
    """``host`` resolves to an address of this machine (bound with port 0: a busy port is Dask's to handle)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"{option}: cannot resolve {host!r} ({_one_line(exc)})") from None
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as exc:
        raise UserError(
            f"{option}: cannot listen on {host!r} ({exc.strerror or exc}); give an address of this machine"
        ) from None


_MAIN_GUARD = (
    "put the call under `if __name__ == \"__main__\":` in your script: the embedded cluster's worker "
    "processes start by re-running the script, and must not start a cluster of their own"
)


def _refuse_in_worker_bootstrap() -> None:
    """Stop a script's top-level call to start a cluster in a worker process that is re-running it.

    Worker processes are spawned: each re-runs the user's ``__main__`` script (as ``__mp_main__``)
    while ``multiprocessing`` marks it as still inheriting. Without this, that worker would start
    a LocalCluster of its own and the parent would only see a long "Nanny failed to start" trace.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(f"panicflow: {_MAIN_GUARD}")  # one line on the worker's stderr


def _started(make: Callable[[], Any]) -> Any:
    """``make()``; a failure to start the worker processes of a script without the guard says so."""
    try:
        return make()
    except RuntimeError as exc:
        main = sys.modules.get("__main__")
        if "failed to start" in str(exc) and getattr(main, "__file__", None):
            raise UserError(f"the cluster's worker processes did not start ({_one_line(exc)}); if {main.__file__} "
                            f"calls panicflow at its top level, {_MAIN_GUARD}") from None
        raise


def _port_taken_said(make: Callable[[], Any], dashboard: str) -> Callable[[], Any]:
    """``make``, without the UserWarning (a multi-line one, with a site-packages path) that Dask
    prints when the dashboard's port is taken and it listens on another: one panicflow line instead,
    naming both ports (the dashboard link the CLI prints then says the one it got)."""

    def start() -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
            cluster = make()
        try:
            wanted = urlsplit(dashboard if "://" in dashboard else f"//{dashboard}").port
            got = urlsplit(cluster.dashboard_link).port
        except Exception:  # no dashboard (bokeh missing): nothing to say
            wanted = got = None
        if wanted and got and got != wanted:
            print(f"panicflow: port {wanted} is in use (another Dask dashboard?); the dashboard listens on port {got} instead",
                  file=sys.stderr, flush=True)
        return cluster

    return start


@contextlib.contextmanager
def _own(make: Callable[[], Any], security: Security | None) -> Iterator[Client]:
    """A client of the cluster ``make()`` starts, closed on exit; Ctrl-C is held while it
    starts and stops (``SignalsHeld``, SIGTERM and SIGHUP too) and acted on once it is up, or once it is closed."""
    from distributed import Client

    with SignalsHeld() as starting:
        cluster = _started(make)
        try:
            client = Client(cluster, security=security)
        except BaseException:
            cluster.close()
            raise

    def close() -> SignalsHeld:
        with SignalsHeld() as stopping:
            client.close()
            cluster.close()
        return stopping

    try:
        starting.act()
        yield client
    except BaseException:
        close()  # already stopping: a Ctrl-C meanwhile changes nothing
        raise
    close().act()


@contextlib.contextmanager
def connect(
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    dashboard_address: str | int | None = None,
    *,
    host: str = LOCALHOST,
    security: Security | None = None,
    gpus: int | None = None,
    scheduler_file: str | os.PathLike | None = None,
) -> Iterator[Client]:
    """Yield a client: the one given, one connected to ``scheduler`` (or to the address in
    ``scheduler_file``), or a new LocalCluster's. With none of ``scheduler``, ``scheduler_file``,
    ``workers`` and ``gpus``, the ``scheduler-address`` Dask setting (``DASK_SCHEDULER_ADDRESS``)
    names the scheduler, if set.

    A cluster started here listens on ``host`` (default 127.0.0.1: this machine
    only), its dashboard on ``dashboard_address`` (default ``host:8787``), and is
    closed on exit. ``gpus=N`` starts a ``dask_cuda.LocalCUDACluster`` instead:
    one worker per GPU, each declaring a ``GPU`` resource. ``security`` (a ``distributed.security.Security``) is used to
    connect to a ``tls://`` scheduler; without ``scheduler`` it makes the
    embedded cluster use TLS between all its processes.
    """
    if client is not None:
        yield client
        return
    import dask.config
    from distributed import Client, LocalCluster

    check_security(security)
    option = "--scheduler"
    if scheduler and scheduler_file is not None:
        raise UserError("--scheduler and --scheduler-file: give one")
    if scheduler_file is not None:
        scheduler, option = read_scheduler_file(scheduler_file), "--scheduler-file"
    elif not scheduler and workers is None and gpus is None:
        scheduler = dask.config.get("scheduler-address", None)
        option = "DASK_SCHEDULER_ADDRESS"
    if scheduler:
        try:
            c = Client(scheduler, timeout="10s", security=security)
        except TypeError as exc:
            if "ssl_context" not in str(exc):
                raise
            raise UserError(f"{option}: {scheduler} is a TLS scheduler; {_TLS_HINT}") from None
        except RuntimeError as exc:
            if "encryption required" not in str(exc):
                raise
            raise UserError(f"{option}: TLS options were given, so the address must start with tls:// (got {scheduler})") from None
        except ValueError as exc:  # e.g. an unknown scheme
            raise UserError(f"{option}: cannot use {scheduler!r}: {_one_line(exc)}") from None
        except (OSError, TimeoutError) as exc:
            hint = "" if security else f" (if it requires TLS, use its tls:// address and {_TLS_HINT})"
            raise UserError(f"{option}: cannot connect to {scheduler}: {_one_line(exc)}{hint}") from None
        with c:
            yield c
        return
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    _refuse_in_worker_bootstrap()
    check_listen(host, dashboard_address)
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    dashboard = dashboard_bind(dashboard_address, host)
    if gpus is not None:
        make = _cuda_cluster(gpus, workers, host, dashboard, tls)
    else:
        n = workers or os.cpu_count() or 1

        def make():
            # silence_logs: what the workers log of a stop or a close (tasks cancelled, a heartbeat that
            # meets the scheduler closing: an ERROR with a traceback), as `analyse` silences its own
            # cluster; a task's failure reaches the coordinator, which says it in one line
            return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=host, silence_logs=logging.CRITICAL,
                                dashboard_address=dashboard, **tls)
    with _own(_port_taken_said(make, dashboard), security) as c:
        yield c


def _cuda_cluster(gpus: int, workers: int | None, host: str, dashboard: str, tls: dict) -> Callable[[], Any]:
    """What starts a LocalCUDACluster with one single-threaded worker per GPU, each declaring ``GPU: 1``.

    dask-cuda starts one worker per visible GPU but declares no resource, and
    the coordinator sends GPU models only to workers that declare one.
    """
    if gpus < 1:
        raise UserError(f"--gpus: must be at least 1 (got {gpus})")
    if workers is not None:
        raise UserError("--workers and --gpus: give one; with --gpus there is one worker per GPU")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise UserError("--gpus needs dask-cuda: pip install 'panicflow[gpu]'") from None
    return lambda: LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=list(range(gpus)), n_workers=gpus, threads_per_worker=1,
        resources={"GPU": 1}, host=host, dashboard_address=dashboard, **tls,
    )


def read_scheduler_file(path: str | os.PathLike) -> str:
    """The scheduler address in a file written by ``dask scheduler --scheduler-file PATH``."""
    try:
        with open(path) as f:
            address = json.load(f)["address"]
    except FileNotFoundError:
        raise UserError(
            f"--scheduler-file: {path} does not exist; start the scheduler with `dask scheduler --scheduler-file {path}` first"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--scheduler-file: {path} is not a Dask scheduler file ({_one_line(exc)})") from None
    if not isinstance(address, str) or not address:
        raise UserError(f"--scheduler-file: {path} has no scheduler address")
    return address


async def _probe_store(location: str, key: str, token: str) -> str | None:
    """On a worker, off its event loop: ``probe_root``'s answer."""
    import asyncio

    from ..store.root import probe_root

    return await asyncio.to_thread(probe_root, location, key, token)


def check_store_reachable(client: Client, store) -> None:
    """Fail, before anything is written, unless every worker of ``client`` opens ``store``.

    The client writes a probe file with a random token under the store; each worker must
    read that token there (the same folder or bucket, not merely one with the same name)
    and write and remove a file of its own. ``StoreUnreachable`` (a user error, exit 2)
    names the store and the workers that cannot, and why. Workers that join later meet
    the same store through their tasks, which raise ``StoreUnavailable`` (permanent).
    A cluster with no worker yet (an adaptive one) is not checked.
    """
    import asyncio

    from ..store.root import TMP_PREFIX, LocalRoot

    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers:
        return
    root, location = store.root, store.location
    token = secrets.token_hex(16)
    key = f"{TMP_PREFIX}probe-{token[:12]}"
    created = _missing_folders(root.path) if isinstance(root, LocalRoot) else []
    try:
        root.write_bytes(key, token.encode())
    except OSError as exc:
        _remove_folders(created)
        raise StoreError(f"store: cannot write to {location}: {exc.strerror or exc}") from None
    try:
        answers = client.run(_probe_store, location, key, token, on_error="return")
    finally:
        root.delete(key)
        _remove_folders(created)
    bad = {}
    for addr, answer in sorted(answers.items()):
        if isinstance(answer, str):
            bad[addr] = answer
        elif isinstance(answer, BaseException) and not isinstance(answer, (OSError, asyncio.TimeoutError)):
            # OSError: the worker left under the question (a comm error), not a store problem
            bad[addr] = f"cannot run panicflow there: {type(answer).__name__}: {_one_line(answer)}"
    if not bad:
        return
    shown = "; ".join(f"{addr} ({why})" for addr, why in list(bad.items())[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    if str(location).startswith("memory://"):
        fix = ("memory:// lives in one process and works only with an in-process cluster "
               "(LocalCluster(processes=False)); use a folder shared by every worker or object storage")
    else:
        fix = "every worker must reach the store: use a folder shared by all of them, or object storage (docs/clusters.md)"
    raise StoreUnreachable(
        f"store {location} cannot be used by {len(bad)} of {len(answers)} workers: {shown}{more}; {fix}"
    )


def _missing_folders(path: str) -> list[str]:
    """The folders a write under ``path`` would create, deepest first."""
    out = []
    while not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def _remove_folders(folders: list[str]) -> None:
    """Remove the folders a probe created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return
