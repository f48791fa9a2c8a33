"""Where the work runs: an embedded LocalCluster, or a cluster the user already has."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator

from distributed import Client, LocalCluster

from ..errors import UserError

if TYPE_CHECKING:
    from distributed.security import Security

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
) -> Iterator[Client]:
    """Yield a client: the one given, one connected to ``scheduler``, or a new LocalCluster's.

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
    check_security(security)
    if scheduler:
        try:
            c = Client(scheduler, timeout="10s", security=security)
        except TypeError as exc:
            if "ssl_context" not in str(exc):
                raise
            raise UserError(f"--scheduler: {scheduler} is a TLS scheduler; {_TLS_HINT}") from None
        except RuntimeError as exc:
            if "encryption required" not in str(exc):
                raise
            raise UserError(f"--scheduler: TLS options were given, so the address must start with tls:// (got {scheduler})") from None
        except ValueError as exc:  # e.g. an unknown scheme
            raise UserError(f"--scheduler: cannot use {scheduler!r}: {_one_line(exc)}") from None
        except (OSError, TimeoutError) as exc:
            hint = "" if security else f" (if it requires TLS, use its tls:// address and {_TLS_HINT})"
            raise UserError(f"--scheduler: cannot connect to {scheduler}: {_one_line(exc)}{hint}") from None
        with c:
            yield c
        return
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    tls = {"security": security, "protocol": "tls://"} if security is not None else {}
    if gpus is not None:
        with _cuda_cluster(gpus, workers, host, dashboard_bind(dashboard_address, host), tls) as cluster, \
                Client(cluster, security=security) as c:
            yield c
        return
    n = workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, host=host,
        dashboard_address=dashboard_bind(dashboard_address, host), **tls,
    ) as cluster, Client(cluster, security=security) as c:
        yield c


def _cuda_cluster(gpus: int, workers: int | None, host: str, dashboard: str, tls: dict):
    """A LocalCUDACluster with one single-threaded worker per GPU, each declaring ``GPU: 1``.

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
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=list(range(gpus)), n_workers=gpus, threads_per_worker=1,
        resources={"GPU": 1}, host=host, dashboard_address=dashboard, **tls,
    )
