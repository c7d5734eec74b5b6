"""import_file reports its progress: reading against the file's own (compressed) size, monotonically, up to
all of it, then every finishing step by name."""
from __future__ import annotations

from refdata import reference_trace

from tdptrace.importers import import_file


def test_import_reports_reading_then_finishing_steps(tmp_path):
    trace = reference_trace("k61-128m")
    seen: list[tuple[str, int, int]] = []
    import_file(trace, tmp_path / "c.tdp", kernel_release="6.1.0-56-amd64", progress=lambda *a: seen.append(a))
    size = trace.stat().st_size
    reading = [d for step, d, t in seen if step == "reading"]
    assert reading and reading == sorted(reading) and reading[-1] == size
    assert all(t == size for _, _, t in seen)
    steps = [s for s, _, _ in seen if s != "reading"]
    assert steps == ["zap spans and yield points", "retained page tables", "writing page tables and markers",
                     "writing meta.json"]
