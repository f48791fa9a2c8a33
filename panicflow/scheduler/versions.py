"""What each process of an experiment computes with: the versions of the libraries that shape its
results, on the coordinator and on every worker, and a warning where a worker's differ.

A worker with another torch or diffusers than the coordinator's computes other images from the
same seed; Dask's own version check covers only its dependencies (numpy, pandas, cloudpickle...).
"""

from __future__ import annotations

import asyncio
import functools
import platform
import socket
from importlib import metadata
from typing import Any

PROVENANCE_PACKAGES = ("panicflow", "giotto-ph", "numpy", "torch", "diffusers", "transformers",
                       "sentence-transformers", "dask", "distributed", "zarr", "xarray", "Pillow")

Versions = dict[str, "str | None"]  # package -> version; None: not installed


def package_versions() -> Versions:
    """This process's Python and ``PROVENANCE_PACKAGES`` versions."""
    return {"python": platform.python_version(), **_installed_versions()}


@functools.cache
def _installed_versions() -> Versions:
    """Looked up once per process (~25 ms of metadata scans, at every experiment and on every worker before): a
    process computes with the modules it imported, whatever is installed over them later."""
    versions: Versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


async def worker_info() -> dict[str, Any]:
    """Run on a worker (``Client.run``), off its event loop: its host name and versions."""
    versions = await asyncio.to_thread(package_versions)  # looked up when called: a test may replace it
    return {"host": socket.gethostname(), "versions": versions}


def differences(mine: Versions, theirs: Versions) -> dict[str, tuple[str | None, str | None]]:
    """package -> (coordinator's, worker's) version, for the packages whose versions differ."""
    return {name: (mine.get(name), theirs.get(name)) for name in sorted(set(mine) | set(theirs))
            if mine.get(name) != theirs.get(name)}


def mismatch_lines(mine: Versions, workers: dict[str, dict[str, Any]]) -> list[str]:
    """One line per set of differences: the workers that have it (three named) and each package,
    with the worker's and the coordinator's version."""
    by_diff: dict[tuple, list[str]] = {}
    for address, info in sorted(workers.items()):
        diff = differences(mine, info.get("versions") or {}) if "versions" in info else {}
        if diff:
            by_diff.setdefault(tuple(sorted(diff.items())), []).append(address)
    lines = []
    for diff, addresses in by_diff.items():
        who = ", ".join(addresses[:3]) + (f" and {len(addresses) - 3} more" if len(addresses) > 3 else "")
        what = "; ".join(f"{name} {theirs or 'not installed'} (coordinator: {ours or 'not installed'})"
                         for name, (ours, theirs) in diff)
        lines.append(f"worker{'s' if len(addresses) > 1 else ''} {who} run{'' if len(addresses) > 1 else 's'} "
                     f"other versions than the coordinator: {what}; their results may differ")
    return lines
