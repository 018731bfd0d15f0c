"""`shmpiped bench load`, run as the real program: four runs, hogs started and ended by the benchmark."""

from __future__ import annotations

import json
import os

from .test_cli import shmpiped


def hog_processes() -> list[int]:
    """Processes running the benchmark's hog (``python -c "while True: pass"``)."""
    from shmpiped.bench_load import HOG

    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if handle.read().split(b"\0")[1:3] == [b"-c", HOG.encode()]:
                    found.append(int(entry))
        except OSError:
            pass
    return found


def test_bench_load_runs_quiet_and_beside_hogs_with_and_without_real_time():
    result = shmpiped("bench", "load", "--duration", "1", "--hogs", "1", "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["realtime"], r["hogs"]) for r in rows] == [(False, 0), (False, 1), (True, 0), (True, 1)]
    for row in rows:
        assert row["output_stream"] == "dm_command" and row["frames"] > 100
        assert 0 < row["p50_us"] <= row["p99_us"] <= row["max_us"]
        assert row["target_rate_hz"] == 500.0 and row["delivered"] > 0.5
    assert all(r["effective_policies"] == ["other"] for r in rows[:2])
    assert all(r["effective_policies"] == ["fifo"] for r in rows[2:])  # read back from /proc (root here)
    assert hog_processes() == []  # every hog it started, it ended
