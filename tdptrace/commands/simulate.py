"""`tdptrace simulate -o OUT.tdp`: what a VM's zaps would look like on another kernel era, as a capture."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)


def _range(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """'64M:128M' (guest-physical bytes) -> gfn range."""
    from tdptrace.sim.layout import PAGE, parse_size

    if not text:
        return None, None
    if ":" not in text:
        raise BadInput(f"cannot read range '{text}'", "write it as START:END in guest-physical bytes, e.g. 0:64G")
    a, b = text.split(":", 1)
    return parse_size(a) // PAGE, parse_size(b) // PAGE


def simulate_cmd(
    output: Annotated[Path, typer.Option("-o", "--output", help="Capture directory to create (NAME.tdp).")],
    size: Annotated[str, typer.Option("--size", help="Guest memory, e.g. 128M, 64G, 1T.")] = "64G",
    backing: Annotated[str, typer.Option("--backing", help="Host page size backing guest memory: 4k, 2m, 1g.")]
    = "4k",
    paging: Annotated[int, typer.Option("--paging", help="TDP paging levels: 4 or 5.")] = 4,
    populated: Annotated[float, typer.Option("--populated", help="Fraction of guest memory touched (0..1).")]
    = 1.0,
    pattern: Annotated[str, typer.Option("--pattern", help="contiguous (first part of memory) or spread "
                                         "(a share of every 2 MiB region).")] = "contiguous",
    scenario: Annotated[str, typer.Option("--scenario", help="teardown, delete-slot, unmap or madvise.")]
    = "teardown",
    zap_range: Annotated[Optional[str], typer.Option("--range", help="For unmap/madvise: START:END in guest "
                                                     "bytes (default: all of it).")] = None,
    workload: Annotated[Optional[str], typer.Option("--workload", help="'kvmtouch': the lab's workload (touch, "
                                                    "madvise upper half, retouch, delete memslot, close) on "
                                                    "--size with --backing 4k or 2m; replaces --scenario.")]
    = None,
    strategy: Annotated[str, typer.Option("--strategy", help="5.15, 2021, two-pass (5.18-6.8) or four-pass "
                                          "(6.9+); aliases 6.1, 6.12.")] = "two-pass",
    costs: Annotated[Optional[Path], typer.Option("--costs", help="Cost model JSON from 'tdptrace calibrate'.")]
    = None,
    contention: Annotated[int, typer.Option("--contention", help="Other runnable tasks on the zapping CPU "
                                            "(0: idle, need_resched never set).")] = 0,
    tick_us: Annotated[int, typer.Option("--tick-us", help="Scheduler tick (HZ=250: 4000).")] = 4000,
    slice_us: Annotated[int, typer.Option("--slice-us", help="Scheduler slice before need_resched.")] = 3000,
    phase_us: Annotated[int, typer.Option("--phase-us", help="Slice already used when each zap starts.")] = 0,
    sptes: Annotated[str, typer.Option("--sptes", help="Per-SPTE rows: auto (small VMs), yes, no.")] = "auto",
    phys_bits: Annotated[Optional[int], typer.Option("--phys-bits", help="Host MAXPHYADDR (default 46, 52 with "
                                                     "5-level paging).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing capture at -o.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the phases as JSON.")] = False,
) -> None:
    """Model the TDP page tables of a VM and one era's zap algorithm; write the result as a capture."""
    from tdptrace.sim.run import SimSpec, simulate

    if sptes not in ("auto", "yes", "no"):
        raise BadInput(f"--sptes must be auto, yes or no, not '{sptes}'", "pick one of the three")
    from tdptrace.options import in_range

    in_range("--contention", contention, 0, 4096)
    for opt, us in (("--tick-us", tick_us), ("--slice-us", slice_us), ("--phase-us", phase_us)):
        in_range(opt, us, 0, 10_000_000, unit=" microseconds")  # ns values must fit the int64 timestamps
    start, end = _range(zap_range)
    spec = SimSpec(size=size, backing=backing, paging=paging, populated=populated, pattern=pattern,
                   scenario=scenario, start=start, end=end, workload=workload, strategy=strategy,
                   costs=costs, contention=contention, tick_ns=tick_us * 1000, slice_ns=slice_us * 1000,
                   phase_ns=phase_us * 1000,
                   sptes=sptes, phys_bits=phys_bits)
    path, res = simulate(spec, output, overwrite=force)
    if as_json:
        typer.echo(json.dumps({"capture": str(path), "phases": res.phases, "notes": res.notes}, indent=1))
        return
    typer.echo(f"{path}: simulated {spec.describe()}")
    for ph in res.phases:
        if ph["op"] == "touch":
            typer.echo(f"  {ph['name']:<28} installed {sum(ph['installed'].values()):,} SPTEs, "
                       f"{ph['tables_allocated']:,} tables")
        else:
            typer.echo(f"  {ph['name']:<28} {ph['duration_ns'] / 1e6:,.3f} ms, {ph['yields']} yields, longest "
                       f"hold {ph['max_gap_ns'] / 1e6:,.3f} ms (no check for {ph['max_unbreakable_ns'] / 1e6:,.3f} "
                       f"ms), retained tables after {ph['retained_after']:,}")
    for n in res.notes:
        typer.echo(f"note: {n}")
