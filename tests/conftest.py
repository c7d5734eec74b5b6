"""Shared fixtures: the lab's reference traces (../shared/data) imported once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
from refdata import REFERENCE, SHARED_DATA, expected, reference_trace  # noqa: F401 - re-exported for fixtures


@pytest.fixture(scope="session")
def reference_captures(tmp_path_factory) -> dict[str, Path]:
    """Each reference trace imported into a capture (6.1.0-56-amd64, as recorded)."""
    from tdptrace.importers import import_file

    out = {}
    d = tmp_path_factory.mktemp("ref")
    for name in REFERENCE:
        cap = d / f"{name}.tdp"
        import_file(reference_trace(name), cap, kernel_release="6.1.0-56-amd64")
        out[name] = cap
    return out
