"""serve --record-dir: captures roll per period and old ones are pruned by age and size, never other files."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tdptrace.errors import BadInput
from tdptrace.live.rolling import CaptureRoller, prune, seconds_to_next_boundary


def _capture(d: Path, size: int, age_s: float, now: float) -> Path:
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"format": "tdptrace-capture"}))
    (d / "part.parquet").write_bytes(b"x" * size)
    os.utime(d, (now - age_s, now - age_s))
    return d


def test_prune_by_age_then_by_size_oldest_first(tmp_path):
    now = time.time()
    old = _capture(tmp_path / "a.tdp", 100, 50 * 3600, now)
    b = _capture(tmp_path / "b.tdp", 1000, 3 * 3600, now)
    c = _capture(tmp_path / "c.tdp", 1000, 2 * 3600, now)
    d = _capture(tmp_path / "d.tdp", 1000, 1 * 3600, now)
    other = tmp_path / "notes"
    other.mkdir()
    os.utime(other, (now - 99 * 3600, now - 99 * 3600))
    removed = prune(tmp_path, 48 * 3600, 2500, now, keep={d})
    assert removed == [old, b]
    assert c.exists() and d.exists() and other.exists()


def test_boundary_lines_up_with_the_period():
    assert seconds_to_next_boundary(7200.0 + 600, 3600) == 3000
    assert seconds_to_next_boundary(7200.0, 3600) == 3600


def test_roller_runs_one_child_per_period_and_prunes(tmp_path):
    # A stand-in for `tdptrace record`: writes a capture directory of 1000 bytes and exits.
    script = ("import json,sys,pathlib; p=pathlib.Path(sys.argv[1]); p.mkdir(); "
              "(p/'meta.json').write_text(json.dumps({'format':'tdptrace-capture'})); "
              "(p/'x').write_bytes(b'x'*1000)")

    asked: list[float] = []

    def fake(path: Path, seconds: float) -> list[str]:
        asked.append(seconds)
        return [sys.executable, "-c", script, str(path)]

    logs: list[str] = []
    r = CaptureRoller(tmp_path, retain_hours=1, retain_bytes=2500, period_s=1.0, command_for=fake,
                      log=logs.append)
    r.start()
    deadline = time.monotonic() + 20
    while len(r.captures) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    r.stop()
    assert len(r.captures) >= 4 and r.failures == 0
    assert all(0.5 < a <= 1.5 for a in asked)  # to the next boundary plus the overlap (half a period at most)
    left = sorted(p for p in tmp_path.iterdir())
    assert 1 <= len(left) <= 2  # at most 2 x 1000 bytes fit in 2500
    assert any(m.startswith("removed old capture") for m in logs)


def test_record_dir_must_exist(tmp_path):
    with pytest.raises(BadInput):
        CaptureRoller(tmp_path / "missing")
