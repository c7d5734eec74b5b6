"""`tdptrace calibrate CAPTURE... -o cost.json`: fit the simulator's cost model from real captures."""

import json
from pathlib import Path
from typing import Annotated

import typer

from tdptrace.options import command, force_option, refuse_existing, writer_json


def register(app: typer.Typer) -> None:
    command(app, "calibrate", "Fit the simulator's cost model from captures.",
            ("tdptrace calibrate lab/*.tdp -o cost.json", "fit the cost model from lab captures"),
            ("tdptrace calibrate a.tdp b.tdp -o cost.json --force --json", "refit over an earlier file, as JSON"))(
        calibrate_cmd)


def calibrate_cmd(
    captures: Annotated[list[Path], typer.Argument(metavar="CAPTURE...",
                                                   help="Captures with zap spans and SPTE events (lab or host).")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="Cost model JSON to write.")],
    force: Annotated[bool, force_option("the file at -o")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written and the fitted model as one JSON "
                                          "object.")] = False,
) -> None:
    """Fit ns per leaf zap, per non-leaf zap, per table freed, per yield and per call from captures.

    The result is what `tdptrace simulate --costs FILE` reads.
    """
    import tdptrace
    from tdptrace.errors import BadInput
    from tdptrace.sim.costs import FIT_TERMS, TERM_FIELDS, CostModel, fit

    refuse_existing([output], force)
    if not output.parent.exists():
        raise BadInput(f"directory {output.parent} does not exist", "create it first or choose another -o")
    from tdptrace.progressbar import progress

    parts = []
    with progress("reading captures", quiet=as_json) as update:
        for i, p in enumerate(captures):
            update(f"reading {p.name}", i, len(captures))
            cap = tdptrace.open(p)
            pt = cap.page_tables
            parts.append((cap.spans, pt[pt["kind"] == "free"]))
        update("fitting the cost model", len(captures), len(captures))
        model, stats = fit(parts, [str(p) for p in captures])
    model.save(output)
    if as_json:
        typer.echo(json.dumps(writer_json([output], captures=[str(p) for p in captures], spans=stats["spans"],
                                          residual_rms_ns=stats["residual_rms_ns"], model=model.to_dict()), indent=1))
        return
    default = CostModel()
    typer.echo(f"{output}: fitted from {stats['spans']} zap spans in {len(captures)} capture(s); "
               f"rms residual {stats['residual_rms_ns'] / 1000:,.1f} us")
    typer.echo(f"  {'term':<16}{'fitted ns':>12}{'default ns':>12}")
    for k in (*(f for t in FIT_TERMS for f in TERM_FIELDS[t]), "iter_ns"):
        mark = "" if stats["identified"].get(k, False) else "  (not in the data: default x scale)"
        typer.echo(f"  {k:<16}{getattr(model, k):>12,.1f}{getattr(default, k):>12,.1f}{mark}")
