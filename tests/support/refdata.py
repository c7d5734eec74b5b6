"""The lab's reference traces (../shared/data beside the repository) and the figures each must give."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
REFERENCE = ("k61-128m", "k61-256m-thp", "k61-512m-hog")


def reference_trace(name: str) -> Path:
    p = SHARED_DATA / f"{name}.trace.txt.xz"
    if not p.exists():
        pytest.skip(f"reference trace {p} not present (the repository's ../shared/data is missing)")
    return p


def expected(name: str) -> dict:
    return json.loads((SHARED_DATA / "expected" / f"{name}.json").read_text())
