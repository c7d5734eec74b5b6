"""tdptrace: watch the KVM x86 TDP MMU with eBPF and analyse what it did.

Analysis entry point: `tdptrace.open(path)` returns a Capture with pandas frames and metric functions.
"""
from __future__ import annotations

__version__ = "0.1.0"


def open(path):  # noqa: A001 - mirrors the builtin on purpose: tdptrace.open(capture)
    """Open a capture directory (NAME.tdp) for analysis."""
    from tdptrace.capture import Capture

    return Capture.open(path)
