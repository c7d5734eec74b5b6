"""Output files and directories that commands write for people: figures, reports, exported traces.

All of them go through tdptrace.safefs: a new directory is created 0700 (also inside a shared sticky directory
such as /tmp), an existing one is written into only when it is the caller's own and nobody else can write to
it, and files are written 0600 under a random temporary name and renamed into place, so a link that another
user planted under the final or the temporary name is replaced, never written through.
"""
from __future__ import annotations

import stat
from pathlib import Path

from tdptrace.errors import BadInput
from tdptrace.safefs import Dir, open_parent, write_file

__all__ = ["Dir", "output_dir", "write_file"]


def output_dir(path: str | Path) -> Dir:
    """The directory to write figures into, open (close it, or use it as a context manager, when done)."""
    p = Path(path)
    if p.name in ("", ".", ".."):
        d = Dir.open(p, what="output directory")
    else:
        parent, name = open_parent(p)
        with parent:
            st = parent.lstat(name)
            if st is None:
                try:
                    return parent.make_private_dir(name)
                except FileExistsError:  # created between the look and the mkdir: judge what is there now
                    st = parent.lstat(name)
            if st is None or stat.S_ISLNK(st.st_mode):
                d = Dir.open(p, what="output directory")  # the caller's (or root's) own link only
            elif not stat.S_ISDIR(st.st_mode):
                raise BadInput(f"{p} exists and is not a directory", "give a directory for -o")
            else:
                d = parent.subdir(name)
    try:
        d.require_private("output directory")
    except BaseException:
        d.close()
        raise
    return d
