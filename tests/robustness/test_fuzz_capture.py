"""Mutation fuzzing of capture loading: byte-level damage to any chunk file or to meta.json of a small real
capture, then open + summary. Each case either works or raises BadCapture (one line on the command line);
nothing else may escape. Complements tests/capture/test_capture_damage.py (named damage cases, meta values) with
thousands of blind mutations. derandomize=True keeps the cases the same on every run.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracegen import Trace, leaf4k, nonleaf

import tdptrace
from tdptrace.errors import TdpError
from tdptrace.importers import import_file
from tdptrace.metrics.summary import summarize


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzzcap")
    t = (Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
         .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
         .spte(1, 1, leaf4k(1), 0).yield_().ret("tdp_mmu_zap_leafs", args="ret=1").prepare_zap(0, 1)
         .raw("CPU:0 [LOST 2 EVENTS]").spte(2, 1, 0, leaf4k(2)))
    (d / "t.txt").write_text(t.text())
    import_file(d / "t.txt", d / "c.tdp", kernel_release="6.1.0")
    return d / "c.tdp"


def _files(cap: Path) -> list[str]:
    return sorted(str(p.relative_to(cap)) for p in cap.rglob("*") if p.is_file())


@st.composite
def mutation(draw, size: int) -> list[tuple[str, int, bytes]]:
    """A few edits: (op, position, bytes) with op in flip, insert, delete, cut."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        pos = draw(st.integers(0, max(size - 1, 0)))
        edits.append((op, pos, draw(st.binary(min_size=1, max_size=8))))
    return edits


def _apply(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    b = bytearray(data)
    for op, pos, blob in edits:
        pos = min(pos, max(len(b) - 1, 0))
        if op == "flip" and b:
            b[pos] ^= blob[0] or 1
        elif op == "insert":
            b[pos:pos] = blob
        elif op == "delete":
            del b[pos:pos + len(blob) * 4]
        else:
            del b[pos:]
    return bytes(b)


CASES = int(os.environ.get("TDPTRACE_FUZZ_CASES", "800"))  # a release check runs 5,000


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_capture_files_open_or_fail_cleanly(pristine, data):
    names = _files(pristine)
    target = data.draw(st.sampled_from(names))
    size = (pristine / target).stat().st_size
    edits = data.draw(mutation(size))
    with tempfile.TemporaryDirectory() as d:
        cap = Path(d) / "c.tdp"
        shutil.copytree(pristine, cap)
        f = cap / target
        f.write_bytes(_apply(f.read_bytes(), edits))
        try:
            s = summarize(tdptrace.open(cap))
        except TdpError as exc:
            assert exc.line().strip() and "\n" not in exc.line()
            return
        assert isinstance(s["zaps_by_level"], dict)
