"""`tdptrace import FILE -o CAPTURE [--json]`: trace text (tracefs, trace-cmd, perf) -> capture."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import TdpError
from tdptrace.options import command, force_option, writer_json


def register(app: typer.Typer) -> None:
    command(app, "import", "Trace text (tracefs, trace-cmd, perf) into a capture.",
            ("tdptrace import trace.txt.xz -o host42.tdp --kernel 6.1.0-56-amd64", "tracefs text, Debian 6.1"),
            ("tdptrace import trace.dat -o t.tdp --kallsyms kallsyms.txt", "a trace-cmd recording"))(import_cmd)


def import_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Trace text (tracefs trace/trace_pipe, trace-cmd "
                                         "report, perf script; .xz/.gz/.zst read directly) or a trace.dat.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="CAPTURE", help="Capture directory to create "
                                         "(NAME.tdp).")],
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="auto, tracefs, trace-cmd or perf.")]
    = "auto",
    kernel: Annotated[Optional[str], typer.Option("--kernel", metavar="RELEASE", help="Kernel release that wrote "
                                                  "the trace (decides SPTE decoding), e.g. 6.1.0-56-amd64.")] = None,
    kallsyms: Annotated[Optional[Path], typer.Option("--kallsyms", metavar="FILE", help="/proc/kallsyms of the "
                                                     "traced host, to name kprobe addresses (trace-cmd, perf).")]
    = None,
    kprobe_events: Annotated[Optional[Path], typer.Option("--kprobe-events", metavar="FILE", help="Text of tracefs "
                                                          "kprobe_events of the traced host (names perf's kprobe "
                                                          "events).")] = None,
    force: Annotated[bool, force_option("the capture at -o")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written and its counts as one JSON "
                                          "object.")] = False,
) -> None:
    """Import trace text into a capture directory (then summary, triage, plot, report, compare read it).

    --kernel decides how SPTE values are decoded: give the release of the host that wrote the trace.
    """
    from tdptrace.importers import import_file
    from tdptrace.progressbar import progress

    # Reading is measured against the file's own size (compressed, if it is): %, rate and time left; then each
    # finishing step by name.
    with progress("reading", quiet=quiet, in_bytes=True) as update:
        result = import_file(file, output, fmt=fmt, kernel_release=kernel, kallsyms=kallsyms,
                             kprobe_events=kprobe_events, force=force, progress=update)
    if as_json:
        typer.echo(json.dumps(writer_json([result.capture], capture=str(result.capture), format=result.format,
                                          events=result.events, spans=result.spans, lost=result.lost,
                                          unknown=dict(result.unknown), unparsed=result.unparsed,
                                          truncated_tail=bool(result.truncated_tail)), indent=1))
    else:
        _print(result)
    if result.truncated_tail:
        raise TdpError(f"the last line of {file} is truncated and was not imported ('{result.truncated_tail[:40]}')",
                       f"everything before it is in {result.capture}; re-copy the trace if it should be complete",
                       exit_code=1)


def _print(result) -> None:
    typer.echo(f"{result.capture}: {result.events} events from {result.format} text, {result.spans} zap spans, "
               f"{result.lost} lost")
    if result.unknown:
        typer.echo("unknown events kept as markers: " + ", ".join(f"{k} ({v})" for k, v in result.unknown.items()))
    if result.unparsed:
        typer.echo(f"tdptrace: warning: {result.unparsed} lines could not be read, e.g. "
                   f"'{result.unparsed_example[:60]}'", err=True)
