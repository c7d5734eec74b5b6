"""Shared fixtures: the lab's reference traces (../shared/data) imported once per session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REFERENCE = ("k61-128m", "k61-256m-thp", "k61-512m-hog")


def reference_trace(name: str) -> Path:
    p = SHARED_DATA / f"{name}.trace.txt.xz"
    if not p.exists():
        pytest.skip(f"reference trace {p} not present (the repository's ../shared/data is missing)")
    return p


def expected(name: str) -> dict:
    return json.loads((SHARED_DATA / "expected" / f"{name}.json").read_text())


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
