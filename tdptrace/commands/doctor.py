"""`tdptrace doctor [--json]`: what this host lets `record` measure, one row per check with the exact fix.

Exit status: 0 all three figures, 1 only some (the missing ones are named), 2 none.
"""

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from tdptrace.options import command

    command(app, "doctor", "What this host lets record measure; the fix for what is missing.",
            ("sudo tdptrace doctor", "one row per check, with the fix for each missing piece"),
            ("tdptrace doctor --json | jq .figures_available", "what record can measure, for scripts"))(doctor_cmd)


STYLE = {"ok": "green", "missing": "bold red", "warn": "yellow", "info": "dim"}


def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON (same exit status).")] = False,
    root: Annotated[Path, typer.Option("--root", metavar="DIR",
                                       hidden=True, help="Read /proc, /sys, /lib/modules below "
                                       "this directory (tests).")] = Path("/"),
) -> None:
    """Check root, bcc, kernel headers, BTF, tracefs, kprobes, fentry, KVM and its zap functions.

    Exit status: 0 record can give all three figures, 1 only some (the missing ones are named), 2 none.
    """
    from tdptrace.errors import BadInput
    from tdptrace.live.host import HostEnv, check_host

    if not root.is_dir():
        raise BadInput(f"--root {root}: no such directory", "give the top of a host tree, or leave it out for /")
    report = check_host(HostEnv(root=root))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
        raise typer.Exit(code=report.exit_code)

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    con = Console(highlight=False)
    t = Table(title=f"tdptrace doctor: kernel {report.kernel_release}", title_justify="left",
              show_lines=False, pad_edge=False)
    t.add_column("check", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("detail / fix", overflow="fold")
    for c in report.checks:
        cell = Text(c.detail)
        if c.fix:
            cell.append("\nfix: ", style="bold")
            cell.append(c.fix)
        t.add_row(c.name, Text(c.status, style=STYLE.get(c.status, "")), cell)
    con.print(t)
    figs = "  ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in report.figures_available.items())
    con.print(f"figures: {figs}")
    colour = {0: "green", 1: "yellow", 2: "bold red"}[report.exit_code]
    con.print(Text(report.verdict(), style=colour))
    tdp = next((c for c in report.checks if c.name == "tdp_mmu" and c.status != "ok"), None)
    if tdp is not None and report.can_record:
        con.print(Text(f"note: tdp_mmu {tdp.detail}", style="yellow"))
    raise typer.Exit(code=report.exit_code)
