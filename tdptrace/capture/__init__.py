"""Captures: the on-disk format (schema, store), the one assembler every writer uses, spans and page tables.

`Capture` opens a capture for reading; `CaptureWriter` is what the importers, the recorder and the
simulator write through.
"""
from tdptrace.capture.store import (
                                    STATUS_COMPLETE,
                                    STATUS_RECORDING,
                                    Capture,
                                    CaptureMeta,
                                    CaptureWriter,
                                    default_host,
)

__all__ = ["Capture", "CaptureMeta", "CaptureWriter", "STATUS_COMPLETE", "STATUS_RECORDING", "default_host"]
