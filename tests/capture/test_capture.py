"""Capture files: modes, chunk safety when a writer dies, no raw kernel pointers, damage reported clearly."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

import tdptrace
from tdptrace.capture import Capture, CaptureMeta, CaptureWriter
from tdptrace.capture.hashing import PointerHasher
from tdptrace.errors import BadCapture, BadInput
from tdptrace.metrics.summary import summarize


def _sptes(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"ts": range(start, start + n), "seq": range(start, start + n), "cpu": 0, "tid": 1,
                         "pid": -1, "comm": "t", "as_id": 0, "gfn": range(n), "level": 1,
                         "old_spte": 0x800, "new_spte": 0})


def test_files_0600_dirs_0700(reference_captures):
    root = reference_captures["k61-128m"]
    for dirpath, dirnames, filenames in os.walk(root):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for f in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) == 0o600, f


def test_no_raw_kernel_pointers(reference_captures):
    """The traces hold root=0xffff8bae1344d508 etc.; no capture file may contain such a value."""
    raw = re.compile(rb"ffff8[0-9a-f]{11}", re.I)
    for cap in reference_captures.values():
        for dirpath, _, filenames in os.walk(cap):
            for f in filenames:
                p = os.path.join(dirpath, f)
                data = open(p, "rb").read()
                assert not raw.search(data), p
                if f.endswith(".parquet"):
                    for col in pq.read_table(p).columns:
                        if str(col.type) in ("uint64", "int64"):
                            v = col.to_numpy(zero_copy_only=False)
                            assert not ((v.astype("uint64") >> 44) == 0xFFFF8).any(), (p, col)
    roots = tdptrace.open(reference_captures["k61-512m-hog"]).spans["root"]
    assert roots.nunique() == 1 and len(roots.iloc[0]) == 16


def test_hash_is_salted_per_capture():
    a, b = PointerHasher(), PointerHasher()
    v = 0xFFFF8BAE1344D508
    assert a.one(v) == a.one(v) and a.one(v) != b.one(v)
    assert a.column(pd.Series([v, None, 0], dtype="UInt64")).tolist()[1:] == [pd.NA, pd.NA]


def test_writer_killed_leaves_finished_chunks(tmp_path):
    """A writer process SIGKILLed after two chunks: both chunks read back, status says 'recording'."""
    out = tmp_path / "k.tdp"
    code = f"""
import os, signal, pandas as pd, sys
sys.path.insert(0, {str(os.path.dirname(__file__))!r})
from test_capture import _sptes
from tdptrace.capture import CaptureMeta, CaptureWriter
w = CaptureWriter({str(out)!r}, CaptureMeta(source={{"kind": "test"}}))
w.append("sptes", _sptes(100)); w.write_meta()
w.append("sptes", _sptes(50, 100)); w.write_meta()
os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert p.returncode == -9
    cap = Capture.open(out)
    assert not cap.complete
    assert len(cap.sptes) == 150
    s = summarize(cap)
    assert any("incomplete" in n for n in s["notes"])


def test_existing_output_needs_force(tmp_path):
    meta = CaptureMeta(source={"kind": "test"})
    CaptureWriter(tmp_path / "a.tdp", meta).close()
    with pytest.raises(BadInput, match="already exists"):
        CaptureWriter(tmp_path / "a.tdp", meta)
    CaptureWriter(tmp_path / "a.tdp", meta, overwrite=True).close()
    (tmp_path / "plain").mkdir()
    with pytest.raises(BadInput, match="not a capture"):
        CaptureWriter(tmp_path / "plain", meta, overwrite=True)


@pytest.mark.parametrize("damage,match", [
    ("no-meta", "meta.json is missing"),
    ("bad-json", "unreadable meta.json"),
    ("version", "format version 99"),
    ("not-ours", "not a tdptrace capture"),
    ("table-gone", "table 'sptes' is missing"),
    ("garbage-chunk", "table 'sptes' is damaged"),
])
def test_damaged_capture(tmp_path, damage, match):
    path = tmp_path / "d.tdp"
    with CaptureWriter(path, CaptureMeta(source={"kind": "test"})) as w:
        w.append("sptes", _sptes(10))
    meta = path / "meta.json"
    if damage == "no-meta":
        meta.unlink()
    elif damage == "bad-json":
        meta.write_text("{not json")
    elif damage == "version":
        d = json.loads(meta.read_text()); d["format_version"] = 99; meta.write_text(json.dumps(d))
    elif damage == "not-ours":
        meta.write_text("[]")
    elif damage == "table-gone":
        for f in (path / "sptes").iterdir():
            f.unlink()
        (path / "sptes").rmdir()
    elif damage == "garbage-chunk":
        (path / "sptes" / "part-000000.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BadCapture, match=match):
        summarize(Capture.open(path))


def test_capture_readable_with_plain_pyarrow(reference_captures):
    import pyarrow.dataset as ds

    t = ds.dataset(str(reference_captures["k61-128m"] / "sptes"), format="parquet").to_table()
    assert t.num_rows == 98888


def test_capture_readable_with_duckdb(reference_captures):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a test extra (pip install -e .[test])")
    cap = reference_captures["k61-512m-hog"]
    rows = duckdb.sql(f"select function, yields, max_gap_ns from read_parquet('{cap}/spans/*.parquet') "
                      "order by ts").fetchall()
    assert rows[0] == ("tdp_mmu_zap_leafs", 7, 8047000)
    n = duckdb.sql(f"select count(*) from read_parquet('{cap}/markers/*.parquet') "
                   "where event = 'kvm_mmu_set_spte'").fetchall()[0][0]
    assert n == 196100
