"""Where the work runs: an embedded LocalCluster, or a cluster the user already has."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from distributed import Client, LocalCluster

from ..errors import UserError


@contextlib.contextmanager
def connect(
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    dashboard_address: str = "127.0.0.1:8787",
) -> Iterator[Client]:
    """Yield a client: the one given, one connected to ``scheduler``, or a new LocalCluster's.

    A cluster started here listens on localhost only and is closed on exit.
    """
    if client is not None:
        yield client
        return
    if scheduler:
        try:
            c = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise UserError(f"--scheduler: cannot connect to {scheduler}: {exc}") from None
        with c:
            yield c
        return
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    n = workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=dashboard_address,
    ) as cluster, Client(cluster) as c:
        yield c
