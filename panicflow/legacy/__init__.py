"""Importing databases of the earlier PANIC-TDA tool (docs/legacy-import.md).

``import_legacy(path, store=)`` writes every experiment of such a SQLite database into a
panicflow store as experiments ``legacy-<uuid>``; ``locate(uuid, store=)`` finds where a legacy
experiment, run or invocation UUID (as a paper cites it) went.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .importer import import_legacy
    from .report import ImportReport


def __getattr__(name: str) -> Any:
    """``import_legacy`` and ``ImportReport`` on first use: `panicflow --help` imports this package
    (legacy/cli.py) and should not load the importer, the store and Zarr (tests/test_cli_startup.py)."""
    if name == "import_legacy":
        from .importer import import_legacy as value
    elif name == "ImportReport":
        from .report import ImportReport as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def locate(legacy_id: str, store: Any = None) -> dict[str, Any] | None:
    """Where a legacy experiment, run or invocation UUID (with or without hyphens) is in the store:
    ``{"experiment_id", "run", "step"}`` (run and step None where they do not apply), or None."""
    import numpy as np

    from ..store import Store
    from .importer import LEGACY
    from .plan import experiment_id_for
    from .schema import hyphenated, legacy_uuid

    hex32 = legacy_uuid(legacy_id)
    if hex32 is None:
        raise ValueError(f"not a UUID: {legacy_id!r}")
    st = store if isinstance(store, Store) else Store(store)
    wanted = hyphenated(hex32)
    for eid in st.experiment_ids():
        if eid == experiment_id_for(hex32):
            return {"experiment_id": eid, "run": None, "step": None}
        if not eid.startswith("legacy-"):
            continue
        g = st.experiment(eid).group(read_only=True)[LEGACY]
        runs = np.flatnonzero(g["run_id"][:] == wanted)
        if runs.size:
            return {"experiment_id": eid, "run": int(runs[0]), "step": None}
        ids = g["invocation_id"]
        for run in range(ids.shape[0]):  # one run's row at a time: memory stays flat
            steps = np.flatnonzero(ids[run] == wanted)
            if steps.size:
                return {"experiment_id": eid, "run": run, "step": int(steps[0])}
    return None


__all__ = ["ImportReport", "import_legacy", "locate"]
