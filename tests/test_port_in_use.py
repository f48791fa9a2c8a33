"""The dashboard's port taken (another Dask cluster on 8787): one panicflow line, not Dask's
UserWarning with its site-packages path (issue 21 item 7)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

TINY = {"networks": [["DummyT2I", "DummyI2T"]], "seeds": [1], "prompts": ["a cat"],
        "embedding_models": ["DummyText"], "max_length": 4}


def test_a_taken_dashboard_port_is_one_panicflow_line(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(TINY))
    with socket.socket() as taken:  # what another cluster's dashboard does to the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "panicflow", "experiment", "run", str(config), "--workers", "1",
             "--dashboard-address", f"127.0.0.1:{port}", "--store", str(tmp_path / "store")],
            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
        )
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning" not in proc.stderr and "site-packages" not in proc.stderr and "warnings.warn" not in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if f"port {port}" in line]
    assert len(said) == 1, proc.stderr
    got = re.fullmatch(rf"panicflow: port {port} is in use \(another Dask dashboard\?\); "
                       r"the dashboard listens on port (\d+) instead", said[0])
    assert got, said
    assert f"Dask dashboard: http://127.0.0.1:{got[1]}/status" in proc.stderr  # the link names the port it got
