"""`tdptrace exercise`: run a small KVM guest through the phases that make KVM zap (tdptrace/lab/exercise.py)."""

import json
from typing import Annotated, Optional

import typer

from tdptrace.errors import TdpError
from tdptrace.options import command, duration_option


def register(app: typer.Typer) -> None:
    command(app, "exercise", "Run a small VM on /dev/kvm through phases that make KVM zap.",
            ("tdptrace exercise", "64 MiB guest, all five phases, one line per phase"),
            ("sudo tdptrace record -o ex.tdp -- tdptrace exercise --hugepages --hold 2s",
             "record it with THP backing, VM kept 2 s before closing"))(exercise_cmd)


def _parse_phases(text: Optional[str]) -> tuple[str, ...]:
    """"populate,delete" or "all" -> the phase names, in the order they always run."""
    from tdptrace.lab.exercise import PHASES

    if not text or text == "all":
        return PHASES
    names = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    bad = [p for p in names if p not in PHASES]
    if bad:
        raise TdpError(f"unknown phase {', '.join(bad)}", f"--phases takes a comma list of {', '.join(PHASES)}")
    return tuple(p for p in PHASES if p in names)


def exercise_cmd(
    mib: Annotated[int, typer.Option("--mib", metavar="N", help="Guest memory in MiB (multiple of 4).")] = 64,
    hugepages: Annotated[bool, typer.Option("--hugepages", help="2 MiB-aligned, MADV_HUGEPAGE guest memory "
                                            "(THP, so KVM can map 2 MiB pages).")] = False,
    hold: Annotated[int, duration_option("--hold", help="Keep the VM alive this long before closing it.")] = "0",
    phases: Annotated[Optional[str], typer.Option("--phases", metavar="PHASE[,PHASE...]",
                                                  help="Comma list of populate, madvise, touch, "
                                                  "delete, close (default all; they always run in this "
                                                  "order and the VM is always closed at the end).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run a small VM on /dev/kvm: populate, madvise half, touch again, delete the memslot, close.

    Each phase makes KVM zap in its own way (an MMU notifier range, a memslot deletion, the VM's teardown):
    a workload to record, or to check that a host records at all.
    """
    from tdptrace.lab.exercise import (
        ExerciseConfig,
        ExerciseReport,
        PhaseResult,
        run_exercise,
    )

    cfg = ExerciseConfig(mib=mib, hugepages=hugepages, hold_s=hold / 1e9, phases=_parse_phases(phases))
    cfg.validate()
    if as_json:
        report = run_exercise(cfg)
        typer.echo(json.dumps(report.to_dict(), indent=1))
        return

    from rich.console import Console

    con = Console(highlight=False)
    from tdptrace.lab.exercise import PHASES

    only = "" if cfg.phases == PHASES else f", phases {','.join(cfg.phases)}"

    def start(r: ExerciseReport) -> None:
        con.print(f"[bold]exercise[/]: {mib} MiB guest, {'THP' if hugepages else '4 KiB'} backing{only}, "
                  f"pid {r.pid}")

    def show(p: PhaseResult) -> None:
        what = f"{p.pages:,} pages" if p.pages else (f"{p.bytes // (1 << 20):,} MiB" if p.bytes else "")
        con.print(f"  {p.name:<9}{p.duration_ns / 1e6:>9.1f} ms  {what:>14}  {p.note}")

    report = run_exercise(cfg, on_phase=show, on_start=start)
    huge = "" if report.anon_huge_kib is None else f", AnonHugePages {report.anon_huge_kib // 1024} MiB"
    hold = f" (held {cfg.hold_s:g} s)" if cfg.hold_s else ""
    con.print(f"  total {report.total_ns / 1e6:.1f} ms{hold}, THP {report.thp_mode}{huge}")
    if hugepages and report.thp_mode == "never":
        con.print("[yellow]warning:[/] transparent hugepages are disabled (never): no 2 MiB mappings")
