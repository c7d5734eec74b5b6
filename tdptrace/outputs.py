"""Output files and directories that commands write for people: figures, reports, exported traces."""
from __future__ import annotations

from pathlib import Path

from tdptrace.errors import BadInput


def output_dir(path: Path) -> Path:
    """A directory to write figures into (created if its parent exists)."""
    if path.exists() and not path.is_dir():
        raise BadInput(f"{path} exists and is not a directory", "give a directory for -o")
    if not path.parent.exists():
        raise BadInput(f"directory {path.parent} does not exist", "create it first or choose another -o")
    path.mkdir(exist_ok=True)
    return path
