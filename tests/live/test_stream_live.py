"""tdptrace.stream()/record() on this host (root, /dev/kvm, tracefs): the batches hold exactly the rows the
capture written alongside holds, with the same columns and dtypes, their lost counts add up to the capture's,
a stream without an output leaves nothing behind, and the analysis example's figures equal `summary`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

import tdptrace
from tdptrace.capture.schema import TABLES

REPO = Path(__file__).resolve().parents[2]
EXERCISE = [sys.executable, "-m", "tdptrace.cli", "exercise", "--json"]


def _need_live() -> None:
    if os.geteuid() != 0:
        pytest.skip("recording needs root")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm, so no KVM activity to record")
    if not Path("/sys/kernel/tracing/events/kvmmmu").is_dir():
        pytest.skip("tracefs with kvmmmu events is not mounted at /sys/kernel/tracing")


def _concat(batches: list, table: str) -> pd.DataFrame:
    parts = [b.frame(table) for b in batches if b.rows(table)]
    return pd.concat(parts, ignore_index=True) if parts else batches[0].frame(table)


@pytest.mark.live
@pytest.mark.parametrize("backend", ["bcc", "ftrace"])
def test_batches_hold_what_the_capture_holds(tmp_path, backend):
    _need_live()
    if backend == "bcc":
        pytest.importorskip("bcc", reason="bcc (python3-bpfcc) is not installed")
    out = tmp_path / "s.tdp"
    with tdptrace.record(out, backend=backend, sptes=True, command=EXERCISE, batch_seconds=0.3) as s:
        batches = list(s)
        assert s.result is not None and s.result.stopped_by == "command exited"
    assert s.backend == backend and batches[-1].final and not any(b.final for b in batches[:-1])
    assert [b.index for b in batches] == list(range(len(batches)))
    cap = tdptrace.open(out)
    assert cap.complete
    for table in TABLES:
        streamed = _concat(batches, table)
        pd.testing.assert_frame_equal(streamed, cap.table(table), check_index_type=False)
        pd.testing.assert_frame_equal(s.frames.table(table), cap.table(table))
    pt = cap.page_tables
    assert (pt["kind"] == "free").sum() >= 1 and len(cap.markers) >= 1  # the exercise zapped something
    assert sum(b.lost_events for b in batches) == cap.meta.lost_events["total"]
    assert tdptrace.zaps_by_level(s.frames) == tdptrace.zaps_by_level(cap)
    assert tdptrace.summarize(s.frames)["page_tables"] == tdptrace.summarize(cap)["page_tables"]


@pytest.mark.live
def test_a_stream_without_output_leaves_nothing_and_stop_ends_it():
    _need_live()
    before = set(Path(tempfile.gettempdir()).glob("tdptrace-stream-*"))
    with tdptrace.stream(keep=False, batch_seconds=0.2) as s:
        assert s.capture is None and s.frames is None
        for b in s:
            if not b.final:
                s.stop()
        assert s.result is not None and s.result.stopped_by == "stopped"
        assert s.result.capture.is_dir()  # the private capture while the stream is open
        private = s.result.capture
    assert not private.exists() and not private.parent.exists()
    assert set(Path(tempfile.gettempdir()).glob("tdptrace-stream-*")) == before


@pytest.mark.live
def test_leaving_the_block_early_still_finishes_the_capture(tmp_path):
    _need_live()
    out = tmp_path / "early.tdp"
    with tdptrace.record(out, batch_seconds=0.2, duration=30) as s:
        for _ in s:
            break
    assert tdptrace.open(out).complete and s.result.stopped_by == "stopped"
    with pytest.raises(ZeroDivisionError):
        with tdptrace.record(tmp_path / "error.tdp", batch_seconds=0.2, duration=30) as s:
            next(iter(s))
            1 / 0
    cap = tdptrace.open(tmp_path / "error.tdp")
    assert cap.complete and cap.meta.source["stopped_by"] == "error"


@pytest.mark.live
def test_the_example_streams_the_exercise_and_equals_summary(tmp_path):
    """analysis/live-stream/stream_zaps.py: the zaps-by-level table computed from the batches as they arrive
    equals `tdptrace summary --json` of the capture it wrote alongside (checked here again, independently)."""
    _need_live()
    out = tmp_path / "example.tdp"
    run = subprocess.run([sys.executable, str(REPO / "analysis" / "live-stream" / "stream_zaps.py"), "-o", str(out),
                          "--runs", "2"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    summary = json.loads(subprocess.run([sys.executable, "-m", "tdptrace.cli", "summary", "--json", str(out)],
                                        capture_output=True, text=True, check=True).stdout)
    assert got["stream"] == summary["zaps_by_level"] and got["stream_source"] == summary["zaps_source"]
    assert got["stream"], "the exercise zapped nothing the recording saw"
    assert got["batches"] >= 2 and got["lost_events"] == summary["lost_events"] == 0


@pytest.mark.live
def test_a_text_duration_ends_the_stream():
    _need_live()
    with tdptrace.stream(duration="1s", keep=False, batch_seconds=0.25) as s:
        result = s.wait()
    assert result.stopped_by == "duration" and result.status.elapsed_s >= 1.0
