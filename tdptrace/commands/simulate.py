"""`tdptrace simulate -o CAPTURE [--json]`: what a VM's zaps would look like on another kernel era, as a
capture."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput
from tdptrace.options import SECOND, command, duration_option, force_option, writer_json


def register(app: typer.Typer) -> None:
    command(app, "simulate", "Another kernel era's zaps of a VM, written as a capture.",
            ("tdptrace simulate -o 515.tdp --size 1T --strategy 5.15 --contention 1",
             "a 1 TiB VM torn down by 5.15's zap, with a task waiting for the CPU"),
            ("tdptrace simulate -o k.tdp --size 128M --workload kvmtouch --costs cost.json",
             "the lab's workload with costs fitted by calibrate"))(simulate_cmd)


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
    output: Annotated[Path, typer.Option("-o", "--output", metavar="CAPTURE", help="Capture directory to create "
                                         "(NAME.tdp).")],
    size: Annotated[str, typer.Option("--size", metavar="SIZE", help="Guest memory, e.g. 128M, 64G, 1T.")] = "64G",
    backing: Annotated[str, typer.Option("--backing", metavar="PAGE", help="Host page size backing guest memory: "
                                         "4k, 2m, 1g.")] = "4k",
    paging: Annotated[int, typer.Option("--paging", metavar="N", help="TDP paging levels: 4 or 5.")] = 4,
    populated: Annotated[float, typer.Option("--populated", metavar="FRACTION", help="Fraction of guest memory "
                                             "touched (0..1).")] = 1.0,
    pattern: Annotated[str, typer.Option("--pattern", metavar="PATTERN",
                                         help="contiguous (first part of memory) or spread "
                                         "(a share of every 2 MiB region).")] = "contiguous",
    scenario: Annotated[str, typer.Option("--scenario", metavar="SCENARIO",
                                          help="teardown, delete-slot, unmap or madvise.")]
    = "teardown",
    zap_range: Annotated[Optional[str], typer.Option("--range", metavar="START:END",
                                                     help="For unmap/madvise: START:END in guest "
                                                     "bytes (default: all of it).")] = None,
    workload: Annotated[Optional[str], typer.Option("--workload", metavar="WORKLOAD",
                                                    help="'kvmtouch': the lab's workload (touch, "
                                                    "madvise upper half, retouch, delete memslot, close) on "
                                                    "--size with --backing 4k or 2m; replaces --scenario.")]
    = None,
    strategy: Annotated[str, typer.Option("--strategy", metavar="ERA",
                                          help="5.15, 2021, two-pass (5.18-6.8) or four-pass "
                                          "(6.9+); aliases 6.1, 6.12.")] = "two-pass",
    costs: Annotated[Optional[Path], typer.Option("--costs", metavar="FILE",
                                                  help="Cost model JSON from 'tdptrace calibrate'.")]
    = None,
    contention: Annotated[int, typer.Option("--contention", metavar="N", help="Other runnable tasks on the zapping CPU "
                                            "(0: idle, need_resched never set).")] = 0,
    tick: Annotated[int, duration_option("--tick", help="Scheduler tick (HZ=250: 4ms).", hi=10 * SECOND,
                                         above_zero=True)] = "4ms",
    slice_: Annotated[int, duration_option("--slice", help="Scheduler slice before need_resched.", hi=10 * SECOND,
                                           above_zero=True)] = "3ms",
    phase: Annotated[int, duration_option("--phase", help="Slice already used when each zap starts.",
                                          hi=10 * SECOND)] = "0",
    sptes: Annotated[str, typer.Option("--sptes", metavar="WHEN", help="Per-SPTE rows: auto (small VMs), yes, no.")]
    = "auto",
    phys_bits: Annotated[Optional[int], typer.Option("--phys-bits", metavar="N",
                                                     help="Host MAXPHYADDR (default 46, 52 with "
                                                     "5-level paging).")] = None,
    force: Annotated[bool, force_option("the capture at -o")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written and its phases as one JSON "
                                          "object.")] = False,
) -> None:
    """Model the TDP page tables of a VM and one era's zap algorithm; write the result as a capture."""
    from tdptrace.sim.run import SimSpec, simulate

    if sptes not in ("auto", "yes", "no"):
        raise BadInput(f"--sptes must be auto, yes or no, not '{sptes}'", "pick one of the three")
    from tdptrace.options import in_range

    in_range("--contention", contention, 0, 4096)
    start, end = _range(zap_range)
    spec = SimSpec(size=size, backing=backing, paging=paging, populated=populated, pattern=pattern,
                   scenario=scenario, start=start, end=end, workload=workload, strategy=strategy,
                   costs=costs, contention=contention, tick_ns=tick, slice_ns=slice_, phase_ns=phase,
                   sptes=sptes, phys_bits=phys_bits)
    from tdptrace.progressbar import progress

    with progress("simulating", quiet=as_json) as update:
        path, res = simulate(spec, output, overwrite=force, progress=update)
    if as_json:
        typer.echo(json.dumps(writer_json([path], capture=str(path), phases=res.phases, notes=res.notes), indent=1))
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
