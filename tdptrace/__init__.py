"""tdptrace: watch the KVM x86 TDP MMU with eBPF and analyse what it did.

The public API (docs/api.md): `open(path)` reads a capture; `stream(...)` / `record(path, ...)` record live
and yield Batches of the same frames; the metric functions take either (a Capture, or a Stream's `frames`).
Errors are the typed exceptions of tdptrace.errors. Importing tdptrace is cheap: pandas, the recorder and bcc
load only when used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tdptrace.errors import (
    BadInputError,
    CapabilityError,
    CaptureError,
    MissingEventsError,
    OutputFullError,
    TdptraceError,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from contextlib import AbstractContextManager
    from typing import Callable, Optional

    import pandas as pd

    from tdptrace.api import Batch, Stream
    from tdptrace.capture.frames import Frames
    from tdptrace.capture.store import Capture
    from tdptrace.live.recording import LiveStatus

__version__ = "0.1.0"

__all__ = [
    "open", "stream", "record", "Capture", "Frames", "Stream", "Batch",
    "zaps_by_level", "gaps", "stretches", "retained", "summarize",
    "TdptraceError", "BadInputError", "CaptureError", "CapabilityError", "OutputFullError", "MissingEventsError",
]

# Classes loaded on first use (PEP 562), so that `import tdptrace` does not import pandas.
_LAZY = {"Capture": "tdptrace.capture.store", "Frames": "tdptrace.capture.frames", "Stream": "tdptrace.api",
         "Batch": "tdptrace.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tdptrace' has no attribute {name!r}")


def open(path: str | os.PathLike) -> Capture:  # noqa: A001 - mirrors the builtin on purpose: tdptrace.open(capture)
    """Open a capture directory (NAME.tdp) for analysis; CaptureError when it is missing or damaged."""
    from tdptrace.capture import Capture

    return Capture.open(path)


def stream(*, pids: Sequence[int] = (), duration: float | str | None = None, backend: str = "auto",
           sptes: bool = False, spans: bool = True, stacks: bool = False, stack_threshold_ns: int = 1_000_000,
           waiters: bool = False,
           output: str | os.PathLike | None = None, force: bool = False, command: Optional[Sequence[str]] = None,
           batch_seconds: float = 1.0, keep: bool = True, on_note: Optional[Callable[[str, str], None]] = None,
           on_status: Optional[Callable[[LiveStatus], None]] = None) -> AbstractContextManager[Stream]:
    """Record the host's KVM MMU live (root): a context manager giving a Stream of Batches of capture frames,
    with the options of `tdptrace record` (docs/api.md "stream"; tdptrace.api.stream)."""
    from tdptrace.api import stream as _stream

    return _stream(pids=pids, duration=duration, backend=backend, sptes=sptes, spans=spans, stacks=stacks,
                   stack_threshold_ns=stack_threshold_ns, waiters=waiters, output=output, force=force,
                   command=command, batch_seconds=batch_seconds, keep=keep, on_note=on_note, on_status=on_status)


def record(output: str | os.PathLike, **options: Any) -> AbstractContextManager[Stream]:
    """stream() writing the capture to `output`, as `tdptrace record -o output` does (same keyword options)."""
    from tdptrace.api import record as _record

    return _record(output, **options)


def zaps_by_level(capture: Capture | Frames) -> tuple[dict[str, dict[str, int]], str]:
    """SPTE zaps per level, {"1": {"leaf": n, "nonleaf": m}, ...} for levels with any, and the figure's source
    (SPTE changes, in-kernel counters, zap spans, or shadow-MMU page-table frees)."""
    from tdptrace.metrics.zaps import zaps_by_level as _zaps

    return _zaps(capture)


def gaps(capture: Capture | Frames) -> pd.DataFrame:
    """Every gap of every complete span (mmu_lock held between yield points): span_id, function, tid, start,
    gap_ns, ends_at."""
    from tdptrace.metrics.gaps import df_gaps

    return df_gaps(capture)


def stretches(capture: Capture | Frames, capture_end_ns: int | None = None) -> pd.DataFrame:
    """Every stretch without a yield, deduplicated across nested spans, longest first: span_id, function,
    tid, start, gap_ns, ends_at, lower_bound. Unfinished spans run to capture_end_ns (default: last event)."""
    from tdptrace.metrics.stretches import capture_bounds, df_stretches

    end = capture_bounds(capture)[1] if capture_end_ns is None else int(capture_end_ns)
    return df_stretches(capture, end)


def retained(capture: Capture | Frames) -> pd.DataFrame:
    """The retained non-leaf page-table count over time (needs SPTE changes): ts, seq, level, delta, retained."""
    from tdptrace.metrics.retained import df_retained

    return df_retained(capture)


def summarize(capture: Capture | Frames) -> dict[str, Any]:
    """The `tdptrace summary --json` object of a capture."""
    from tdptrace.metrics.summary import summarize as _summarize

    return _summarize(capture)
