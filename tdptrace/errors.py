"""User-facing errors: one clear line saying what is wrong and what to do, never a traceback.

The library raises these and never exits the process; the command line prints `line()` and exits with
`exit_code` in one place (tdptrace.cli). Public names: TdptraceError (the base), BadInputError,
CaptureError, CapabilityError, OutputFullError, MissingEventsError; the shorter names are the same classes.
"""
from __future__ import annotations


class TdptraceError(Exception):
    """An error the user can act on. `hint` says what to do; `exit_code` is the process status."""

    def __init__(self, message: str, hint: str = "", exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def line(self) -> str:
        """The one line printed to stderr; control characters from user input are escaped so it stays one line."""
        return one_line(f"{self.message}; {self.hint}" if self.hint else self.message)


def one_line(text: str) -> str:
    """`text` with newlines and other non-printable characters escaped (\\n, \\x01): always a single line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class BadInputError(TdptraceError):
    """The file or value given cannot be read as what it claims to be."""


class CaptureError(TdptraceError):
    """A capture directory is missing, damaged or of an unknown format version."""


class CapabilityError(TdptraceError):
    """The host lacks something a live command needs (root, bcc, headers, tracefs, kprobes...)."""


class OutputFullError(TdptraceError):
    """The disk (or quota) under the output filled up; what was written before is intact."""


class MissingEventsError(TdptraceError):
    """An analysis needs events the capture does not contain."""


# The names the package's own modules use (same classes).
TdpError = TdptraceError
BadInput = BadInputError
BadCapture = CaptureError
MissingCapability = CapabilityError
OutputFull = OutputFullError
MissingEvents = MissingEventsError
