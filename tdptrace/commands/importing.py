"""`tdptrace import FILE -o CAPTURE`: trace text (tracefs, trace-cmd, perf) -> capture."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import TdpError


def register(app: typer.Typer) -> None:
    app.command("import")(import_cmd)


def import_cmd(
    file: Annotated[Path, typer.Argument(help="Trace text (tracefs trace/trace_pipe, trace-cmd report, perf script; "
                                              ".xz/.gz/.zst read directly) or a trace.dat.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Capture directory to create (NAME.tdp).")],
    fmt: Annotated[str, typer.Option("--format", help="auto, tracefs, trace-cmd or perf.")] = "auto",
    kernel: Annotated[Optional[str], typer.Option("--kernel", help="Kernel release that wrote the trace "
                                                  "(decides SPTE decoding), e.g. 6.1.0-56-amd64.")] = None,
    kallsyms: Annotated[Optional[Path], typer.Option("--kallsyms", help="/proc/kallsyms of the traced host, "
                                                     "to name kprobe addresses (trace-cmd, perf).")] = None,
    kprobe_events: Annotated[Optional[Path], typer.Option("--kprobe-events", help="Text of tracefs kprobe_events "
                                                          "of the traced host (names perf's kprobe events).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing capture at -o.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
) -> None:
    """Import trace text into a capture directory."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from tdptrace.importers import import_file

    err = Console(stderr=True)
    size = file.stat().st_size if file.is_file() else 0
    progress = Progress(TextColumn("importing"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=quiet or not err.is_terminal)
    with progress:
        task = progress.add_task("import", total=None)

        def advance(n: int) -> None:
            progress.update(task, advance=n)

        result = import_file(file, output, fmt=fmt, kernel_release=kernel, kallsyms=kallsyms,
                             kprobe_events=kprobe_events, force=force, progress=advance)
    del size
    typer.echo(f"{result.capture}: {result.events} events from {result.format} text, {result.spans} zap spans, "
               f"{result.lost} lost")
    if result.unknown:
        typer.echo("unknown events kept as markers: " + ", ".join(f"{k} ({v})" for k, v in result.unknown.items()))
    if result.unparsed:
        typer.echo(f"tdptrace: warning: {result.unparsed} lines could not be read, e.g. "
                   f"'{result.unparsed_example[:60]}'", err=True)
    if result.truncated_tail:
        raise TdpError(f"the last line of {file} is truncated and was not imported ('{result.truncated_tail[:40]}')",
                       f"everything before it is in {result.capture}; re-copy the trace if it should be complete",
                       exit_code=1)
