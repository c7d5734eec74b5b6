"""Kernel release strings ('6.1.0-56-amd64', '7.3.4+deb14-amd64') and the (major, minor) version they name.

The one parser every module uses: a version decides SPTE encoding, the era-table fallback and BPF features.
"""
from __future__ import annotations

import re

Version = tuple[int, int]

_RELEASE = re.compile(r"(\d+)\.(\d+)")


def parse_version(release: str | None) -> Version | None:
    """(major, minor) of a release string such as '6.1.0-56-amd64'; None when it names no version."""
    m = _RELEASE.match(release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def version_at_least(release: str | None, version: Version, unknown: bool = True) -> bool:
    """Whether `release` is `version` or newer; `unknown` when the release names no version."""
    v = parse_version(release)
    return unknown if v is None else v >= version


# BPF ring buffers (BPF_MAP_TYPE_RINGBUF) exist since Linux 5.8; older kernels use the perf buffer.
RINGBUF_SINCE: Version = (5, 8)


def ringbuf_supported(release: str | None) -> bool:
    """True when the kernel has BPF ring buffers (assumed for an unreadable release)."""
    return version_at_least(release, RINGBUF_SINCE)
