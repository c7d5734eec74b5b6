"""The public API: its names, cheap import, typed errors with the commands' one-line messages, no process exit
inside the library, and the metric functions giving the same figures on a capture and on the same tables held
in memory chunk by chunk (as a live stream accumulates them)."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from refdata import reference_trace

import tdptrace
from tdptrace import api
from tdptrace.capture.schema import TABLES
from tdptrace.capture.store import table_frame

PACKAGE = Path(tdptrace.__file__).resolve().parent
TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]


def test_every_public_name_exists_and_import_is_cheap():
    for name in tdptrace.__all__:
        assert getattr(tdptrace, name) is not None, name
    code = "import sys, tdptrace\nprint(','.join(m for m in ('pandas', 'pyarrow', 'bcc') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == ""
    with pytest.raises(AttributeError):
        tdptrace.no_such_name  # noqa: B018


def test_stream_has_the_signature_of_the_recorder_it_wraps():
    assert inspect.signature(tdptrace.stream).parameters.keys() == inspect.signature(api.stream).parameters.keys()
    for name, p in inspect.signature(api.stream).parameters.items():
        assert inspect.signature(tdptrace.stream).parameters[name].default == p.default, name


def test_the_library_never_exits_the_process():
    """Only the command line turns an error into an exit status (tdptrace/cli.py, and commands' own statuses)."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "commands" or rel.name == "cli.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bsys\.exit\(|\bSystemExit\b|\bos\._exit\(|\btyper\.Exit\b", line):
                bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, bad


def test_errors_are_typed_and_the_same_classes_the_package_raises():
    from tdptrace import errors

    assert errors.BadInput is tdptrace.BadInputError and errors.BadCapture is tdptrace.CaptureError
    assert errors.MissingCapability is tdptrace.CapabilityError and errors.TdpError is tdptrace.TdptraceError
    for name in ("BadInputError", "CaptureError", "CapabilityError", "OutputFullError", "MissingEventsError"):
        assert issubclass(getattr(tdptrace, name), tdptrace.TdptraceError)
    with pytest.raises(tdptrace.CaptureError, match="no such capture"):
        tdptrace.open("/nonexistent/x.tdp")


def _command_error(*args: str) -> str:
    run = subprocess.run(TDPTRACE + ["record", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    return run.stderr.strip().removeprefix("tdptrace: error: ")


@pytest.mark.parametrize("kwargs,args", [
    ({"backend": "dtrace"}, ["--backend", "dtrace"]),
    ({"pids": [4194303]}, ["-p", "4194303"]),
    ({"waiters": True, "backend": "bcc"}, ["--waiters", "--backend", "bcc"]),
])
def test_bad_options_raise_bad_input_with_the_commands_line(tmp_path, kwargs, args):
    with pytest.raises(tdptrace.BadInputError) as exc:
        with tdptrace.stream(output=tmp_path / "x.tdp", **kwargs):
            pass
    assert exc.value.line() == _command_error(*args, "-o", str(tmp_path / "y.tdp"))
    assert not (tmp_path / "x.tdp").exists()


def test_a_duration_reads_like_the_commands(tmp_path):
    """Text durations use the command's grammar; its line names the option around the same message."""
    with pytest.raises(tdptrace.BadInputError) as exc:
        with tdptrace.stream(output=tmp_path / "x.tdp", duration="soon"):
            pass
    assert exc.value.line() in _command_error("-d", "soon", "-o", str(tmp_path / "y.tdp"))
    with pytest.raises(tdptrace.BadInputError, match="is not positive"):
        with tdptrace.stream(output=tmp_path / "x.tdp", duration=0):
            pass


def test_missing_root_is_a_capability_error(tmp_path):
    """A host without root (a fake host tree) cannot record: the command's line, as a CapabilityError."""
    from tdptrace.live.attach import plan_probes
    from tdptrace.live.host import HostEnv, check_host
    from tdptrace.live.recording import RecordOptions

    report = check_host(HostEnv(root=tmp_path, euid=1000))
    plan = api.RecordingPlan(RecordOptions(output=tmp_path / "x.tdp"), report, plan_probes(report), "ftrace",
                             "auto")
    with pytest.raises(tdptrace.CapabilityError, match=r"^record needs root \(BPF and tracefs\)$") as exc:
        api.require_recordable(plan)
    assert exc.value.line() == "record needs root (BPF and tracefs); run it with sudo"


@pytest.fixture(scope="module")
def ref_capture(tmp_path_factory) -> Path:
    from tdptrace.importers import import_file

    cap = tmp_path_factory.mktemp("api") / "k61-128m.tdp"
    import_file(reference_trace("k61-128m"), cap, kernel_release="6.1.0-56-amd64")
    return cap


def _in_chunks(cap, pieces: int = 7) -> tdptrace.Frames:
    """The capture's tables as a live stream holds them: Arrow chunks added one after another."""
    frames = tdptrace.Frames(cap.meta)
    for name, schema in TABLES.items():
        tbl = pa.Table.from_pandas(cap.table(name), schema=schema, preserve_index=False)
        for part in np.array_split(np.arange(tbl.num_rows), pieces):
            if len(part):
                frames.add(name, tbl.slice(int(part[0]), len(part)))
    return frames


def test_metric_functions_take_frames_in_memory_as_they_take_a_capture(ref_capture):
    cap = tdptrace.open(ref_capture)
    frames = _in_chunks(cap)
    for name in TABLES:
        pd.testing.assert_frame_equal(frames.table(name), cap.table(name))
    zbl, source = tdptrace.zaps_by_level(frames)
    assert (zbl, source) == tdptrace.zaps_by_level(cap)
    assert zbl == {"1": {"leaf": 48_644, "nonleaf": 0}, "2": {"leaf": 0, "nonleaf": 64},
                   "3": {"leaf": 0, "nonleaf": 1}, "4": {"leaf": 0, "nonleaf": 1}}  # the lab's reference figures
    assert source == "kvm_tdp_mmu_spte_changed"
    pd.testing.assert_frame_equal(tdptrace.gaps(frames), tdptrace.gaps(cap))
    pd.testing.assert_frame_equal(tdptrace.stretches(frames), tdptrace.stretches(cap))
    pd.testing.assert_frame_equal(tdptrace.retained(frames), tdptrace.retained(cap))
    assert int(tdptrace.retained(frames)["retained"].max()) == 32
    a, b = tdptrace.summarize(frames), tdptrace.summarize(cap)
    a.pop("capture"), b.pop("capture")
    assert a == b


def test_frames_follow_chunks_added_after_a_read(ref_capture):
    """A metric read between two batches sees only the first; read again, it sees both."""
    cap = tdptrace.open(ref_capture)
    tbl = pa.Table.from_pandas(cap.sptes, schema=TABLES["sptes"], preserve_index=False)
    frames = tdptrace.Frames(cap.meta)
    half = tbl.num_rows // 2
    frames.add("sptes", tbl.slice(0, half))
    first = tdptrace.zaps_by_level(frames)[0]
    frames.add("sptes", tbl.slice(half))
    assert first != tdptrace.zaps_by_level(frames)[0] == tdptrace.zaps_by_level(cap)[0]
    assert frames.rows("sptes") == len(cap.sptes)


def test_a_batch_has_every_table_with_the_readers_columns_and_dtypes():
    b = api.Batch(index=0, elapsed_s=0.0, lost_events=0, lost_per_cpu={}, final=True, chunks={})
    for name in TABLES:
        df = b.frame(name)
        assert list(df.columns) == TABLES[name].names and len(df) == 0
        assert df.dtypes.to_dict() == table_frame(name).dtypes.to_dict()
    for attr in ("sptes", "spans", "yields", "page_tables", "markers", "waits", "stacks", "lost"):
        assert list(getattr(b, attr).columns) == TABLES[attr].names
    with pytest.raises(KeyError):
        b.frame("nope")
