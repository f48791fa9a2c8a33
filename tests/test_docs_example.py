"""The runnable example in docs/ runs as documented."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs/examples/quickstart.py"), str(tmp_path / "store")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stop_reason" in proc.stdout and "state='complete'" in proc.stdout
    assert "text vectors of run 0: 25" in proc.stdout  # 50 steps, every other one a caption


def test_background_example_runs(tmp_path):
    """docs/examples/background.py: submit, watch, cancel, resume (docs/api.md, "In the background")."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs/examples/background.py"), str(tmp_path / "store")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "submitted " in out and "of at most 1200 steps" in out
    assert "stopped: experiment" in out and "state: interrupted" in out
    assert "state='complete', 1200 steps" in out
