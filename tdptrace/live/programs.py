"""The BPF C programs shipped with tdptrace (probes/, installed as the tdptrace.probes package data) and
the one way settings reach their compiler: integer -D defines under TDP_* names, never text."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np

_DEFINE_NAME = re.compile(r"^TDP_[A-Z0-9_]+$")


def probes_dir() -> Path:
    """Where the BPF C sources and their headers are (the tdptrace.probes package data)."""
    return Path(str(resources.files("tdptrace.probes")))


def cflag(name: str, value: int | bool) -> str:
    """One -D setting; only integers under TDP_* names reach the compiler (never text from the command line)."""
    if not _DEFINE_NAME.match(name):
        raise ValueError(f"bad define name {name!r}")
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: defines must be integers, not {type(value).__name__}")
    return f"-D{name}={int(value)}"
