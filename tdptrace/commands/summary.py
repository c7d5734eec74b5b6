"""`tdptrace summary CAPTURE [--json]`: the three figures, as rich tables or the JSON contract."""

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from tdptrace.options import command

    command(app, "summary", "Zaps by level, spans and gaps, retained tables, lost events.",
            ("tdptrace summary host42.tdp", "zaps by level, spans and gaps, retained tables"),
            ("tdptrace summary --json /var/lib/tdptrace", "every capture below a directory and a fleet total"))(
        summary_cmd)


def summary_cmd(
    captures: Annotated[list[Path], typer.Argument(metavar="CAPTURE...",
                                                   help="Capture directory (NAME.tdp); several, or directories "
                                                        "holding captures, give one row each and a fleet total.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary JSON object (docs/metrics.md contract).")]
    = False,
) -> None:
    """Zaps by level, yields and gaps per zap span, retained page tables, lost events."""
    import tdptrace
    from tdptrace.metrics.fleet import find_captures
    from tdptrace.metrics.summary import summarize

    paths = find_captures(captures)
    if len(captures) > 1 or paths != captures:
        from tdptrace.oncall.summary_many import summarize_many

        summarize_many(paths, as_json)
        return
    capture = paths[0]
    s = summarize(tdptrace.open(capture))
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    from tdptrace.oncall.summary_text import render

    render(s)


