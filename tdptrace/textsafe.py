"""Terminal-safe text: nothing tdptrace prints carries a raw control character from the data it shows.

Task names (any bytes a process put in its comm), kernel log lines, trace lines quoted in warnings and file
names can hold escape sequences that retitle a terminal window, clear the screen or hide text. `clean` escapes
every non-printable character the way Python writes it in a string literal (ESC becomes \\x1b), so the text
stays readable and nothing reaches the terminal as a command.

`install` applies it to everything a command prints: sys.stdout and sys.stderr are wrapped so plain writes are
cleaned (newlines and tabs kept), and rich consoles clean the text of each segment before styling it, so rich's
own colours and cursor control (the `top` screen) still work while the data inside them cannot add any.
"""
from __future__ import annotations

import io
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, TextIO

# Everything str.isprintable() rejects is escaped: C0 and C1 controls, DEL, and the Unicode format and separator
# characters that reorder or hide text. Multi-line output keeps its newlines and tabs.
_LAYOUT = frozenset("\n\t")


def _escape(c: str) -> str:
    return repr(c)[1:-1] if c not in ("'", '"', "\\") else c


def clean(text: str, keep: frozenset[str] = frozenset()) -> str:
    """`text` with every non-printable character escaped (\\x1b, \\n, \\u202e); those in `keep` stay."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


def clean_lines(text: str) -> str:
    """Like clean, but newlines and tabs stay: for multi-line text written to a terminal."""
    return clean(text, _LAYOUT)


class _Clean(str):
    """Text already made safe (rich's rendering after its segments were cleaned): written as it is."""


class SafeStream(io.TextIOBase):
    """A text stream that escapes control characters in everything written through it."""

    def __init__(self, raw: TextIO) -> None:
        super().__init__()
        self.raw = raw

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.raw.write(str(s) if isinstance(s, _Clean) else clean_lines(s))
        return len(s)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.raw, "errors", None)

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return getattr(self.raw, "closed", False)


def _patch_rich() -> None:
    """Make every rich Console clean segment text before it is styled (idempotent)."""
    try:
        from rich.console import Console
    except ImportError:
        return
    if getattr(Console._render_buffer, "_tdptrace_clean", False):
        return
    original = Console._render_buffer

    def _render_buffer(self, buffer: Iterable) -> str:
        from rich.segment import Segment

        safe = [seg if seg.control or seg.text.isprintable() else Segment(clean_lines(seg.text), seg.style, None)
                for seg in buffer]
        return _Clean(original(self, safe))

    _render_buffer._tdptrace_clean = True  # type: ignore[attr-defined]
    Console._render_buffer = _render_buffer  # type: ignore[method-assign]


@contextmanager
def installed() -> Iterator[None]:
    """While active, sys.stdout/sys.stderr escape control characters and rich consoles clean their text."""
    _patch_rich()
    out, err = sys.stdout, sys.stderr
    wrapped = [s for s in (out, err) if s is not None and not isinstance(s, SafeStream)]
    if out is not None and not isinstance(out, SafeStream):
        sys.stdout = SafeStream(out)
    if err is not None and not isinstance(err, SafeStream):
        sys.stderr = SafeStream(err)
    try:
        yield
    finally:
        if wrapped:
            sys.stdout, sys.stderr = out, err


__all__ = ["SafeStream", "clean", "clean_lines", "installed"]
