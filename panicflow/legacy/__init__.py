"""Importing databases of the earlier PANIC-TDA tool (docs/legacy-import.md).

``import_legacy(path, store=)`` writes every experiment of such a SQLite database into a
panicflow store as experiments ``legacy-<uuid>``; ``locate(uuid, store=)`` finds where a legacy
experiment, run or invocation UUID (as a paper cites it) went.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .importer import LEGACY, import_legacy
from .plan import experiment_id_for
from .report import ImportReport
from .schema import hyphenated, legacy_uuid


def locate(legacy_id: str, store: Any = None) -> dict[str, Any] | None:
    """Where a legacy experiment, run or invocation UUID (with or without hyphens) is in the store:
    ``{"experiment_id", "run", "step"}`` (run and step None where they do not apply), or None."""
    from ..store import Store

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
