"""`tdptrace export`: the Perfetto trace decodes with Perfetto's own protos, with one slice per zap span whose
duration is the span's, holds and yields on each task's mmu_lock track, counters and kernel log instants."""
from __future__ import annotations

import os
import stat
from collections import defaultdict

import pytest
from smallcaps import P, span, write_capture

import tdptrace
from tdptrace.cli import main

STALL = ("[   24.700000] rcu: INFO: rcu_sched self-detected stall on CPU\n"
         "[   24.700002] \t(t=5251 jiffies g=12345 q=678 ncpus=2)\n")


def decode(path):
    """(tracks by uuid, slices [(track name, name, begin, end, args)], counters {name: [values]}, instants)."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    trace = Trace()
    trace.ParseFromString(path.read_bytes())
    tracks, slices, open_, counters, instants = {}, [], defaultdict(list), defaultdict(list), []
    for p in trace.packet:
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            tracks[d.uuid] = d
            continue
        te = p.track_event
        args = {a.name: a.WhichOneof("value") and getattr(a, a.WhichOneof("value")) for a in te.debug_annotations}
        if te.type == TrackEvent.TYPE_SLICE_BEGIN:
            open_[te.track_uuid].append((te.name, p.timestamp, args))
        elif te.type == TrackEvent.TYPE_SLICE_END:
            name, begin, a = open_[te.track_uuid].pop()  # raises on an end without a begin: bad nesting
            slices.append((te.track_uuid, name, begin, p.timestamp, a))
        elif te.type == TrackEvent.TYPE_COUNTER:
            counters[tracks[te.track_uuid].name].append(te.counter_value)
        elif te.type == TrackEvent.TYPE_INSTANT:
            instants.append((te.track_uuid, te.name, p.timestamp, args))
    assert not any(open_.values()), "slices left open"
    return tracks, slices, counters, instants


@pytest.fixture(scope="module")
def hog_trace(reference_captures, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    (d / "dmesg.txt").write_text(STALL)
    out = d / "hog.perfetto-trace"
    assert main(["export", str(reference_captures["k61-512m-hog"]), "-o", str(out), "--dmesg",
                 str(d / "dmesg.txt")]) == 0
    return out


def test_one_slice_per_span_with_the_span_duration(hog_trace, reference_captures):
    cap = tdptrace.open(reference_captures["k61-512m-hog"])
    tracks, slices, _, _ = decode(hog_trace)
    thread_tracks = {u for u, d in tracks.items() if d.HasField("thread")}
    spans = [s for s in slices if s[0] in thread_tracks]
    assert len(spans) == len(cap.spans) == 5
    got = {a["span_id"]: (name, end - begin, a) for _, name, begin, end, a in spans}
    for r in cap.spans.itertuples():
        name, dur, a = got[r.span_id]
        assert name == r.function and dur == r.duration_ns
    assert got[1][1] == 195_329_000 and got[1][2]["lock_mode"] == "read" and got[1][2]["zap_level"] == 3
    assert got[0][2]["lock_mode"] == "write" and (got[0][2]["gfn_start"], got[0][2]["gfn_end"]) == (0x10000, 0x20000)
    assert got[1][2]["leaf_l1"] == 130_564 and got[1][2]["yields"] == 1
    (t,) = {tracks[s[0]].thread.tid for s in spans}
    assert t == 134 and {tracks[s[0]].thread.thread_name for s in spans} == {"kvmtouch"}


def test_holds_and_yields_sit_under_the_task(hog_trace):
    tracks, slices, _, instants = decode(hog_trace)
    lock = {u for u, d in tracks.items() if d.name.startswith("mmu_lock")}
    assert len(lock) == 1 and tracks[next(iter(lock))].parent_uuid in tracks
    holds = [s for s in slices if s[0] in lock and s[1] == "hold"]
    away = [s for s in slices if s[0] in lock and s[1].startswith("without a yield")]
    yields = [s for s in slices if s[0] in lock and s[1].startswith("yield")]
    assert sorted(e - b for _, _, b, e, _ in holds)[-1] == 99_724_000
    assert [e - b for _, _, b, e, _ in away] == [95_605_000]
    assert len(yields) == 7  # write yields have their return traced: slices
    assert len([i for i in instants if i[0] in lock and i[1] == "yield rwlock_read"]) == 1  # the read one: not


def test_counters_and_kernel_log(hog_trace):
    tracks, _, counters, instants = decode(hog_trace)
    assert max(counters["retained non-leaf page tables"]) == 128
    assert counters["SPTE zaps L1 leaf (cumulative)"][-1] == 196_100
    assert counters["SPTE zaps L2 non-leaf (cumulative)"][-1] == 256
    (log,) = [i for i in instants if tracks[i[0]].name == "kernel log"]
    assert log[1] == "rcu stall" and log[2] == 24_700_000_000 and log[3]["explained"] is False


def test_file_is_private_and_not_replaced_without_force(hog_trace, reference_captures, tmp_path, capsys):
    assert stat.S_IMODE(hog_trace.stat().st_mode) == 0o600
    out = tmp_path / "x.perfetto-trace"
    out.write_bytes(b"keep")
    assert main(["export", str(reference_captures["k61-256m-thp"]), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert main(["export", str(reference_captures["k61-256m-thp"]), "-o", str(out), "--force"]) == 0
    assert len(decode(out)[1]) > 0
    link = tmp_path / "link.perfetto-trace"
    os.symlink(tmp_path / "elsewhere", link)
    assert main(["export", str(reference_captures["k61-256m-thp"]), "-o", str(link), "--force"]) == 2
    assert "not a regular file" in capsys.readouterr().err and not (tmp_path / "elsewhere").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_span_that_never_returned_ends_at_the_capture_end(tmp_path):
    path = write_capture(tmp_path / "open.tdp", spans=[span(0, 1_000_000, None, "__tdp_mmu_zap_root", shared=0)],
                         sptes=[{"ts": 40_000_000, "gfn": 9, "old_spte": P, "new_spte": 0}])
    from tdptrace.oncall.timeline import export

    st = export(tdptrace.open(path), tmp_path / "o.perfetto-trace")
    assert st.span_slices == 1
    tracks, slices, _, _ = decode(tmp_path / "o.perfetto-trace")
    (s,) = [s for s in slices if tracks[s[0]].HasField("thread")]
    assert (s[2], s[3], s[4]["complete"], s[4]["lock_mode"]) == (1_000_000, 40_000_000, False, "write")
