"""`sudo tdptrace record [-o CAPTURE] [-p PID,...] [-d DURATION] [--sptes] [--stacks] [-- COMMAND ...]`.

Records the host's KVM MMU until Ctrl-C, SIGTERM, the duration or the end of COMMAND, with a live line;
then prints the capture's summary. `--ebpf` prints the BPF program (with its settings) and exits.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.errors import BadInput, MissingCapability

BACKENDS = ("auto", "bcc", "ftrace")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def register(app: typer.Typer) -> None:
    app.command("record", context_settings={"allow_interspersed_args": False})(record_cmd)


def parse_duration(text: str) -> float:
    """'30', '30s', '500ms', '2m', '1h' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise BadInput(f"-d {text!r} is not a duration", "give e.g. 30, 30s, 500ms, 2m")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_pids(text: str) -> tuple[int, ...]:
    """'1234,5678' -> (1234, 5678)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise BadInput(f"-p {text!r} is not a list of process ids", "give e.g. -p 1234 or -p 1234,5678")
    return tuple(int(p) for p in parts)


def record_cmd(
    command: Annotated[Optional[list[str]], typer.Argument(help="Command to run while recording (after --); "
                                                           "recording stops when it exits.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Capture directory to create "
                                                   "(default tdptrace-DATE-TIME.tdp).")] = None,
    pid: Annotated[Optional[str], typer.Option("-p", "--pid", help="Only these VMMs' VMs: PID[,PID...].")] = None,
    duration: Annotated[Optional[str], typer.Option("-d", "--duration", help="Stop after this long "
                                                    "(30, 30s, 500ms, 2m).")] = None,
    sptes: Annotated[bool, typer.Option("--sptes", help="Also keep every SPTE change (deep dives; large).")] = False,
    stacks: Annotated[bool, typer.Option("--stacks", help="Keep the kernel stack of spans whose max gap "
                                         "reaches --stack-threshold.")] = False,
    stack_threshold_ms: Annotated[float, typer.Option("--stack-threshold", help="Max gap (ms) from which "
                                                      "--stacks keeps a span's stack.")] = 1.0,
    backend: Annotated[str, typer.Option("--backend", help="bcc, ftrace (tracefs only: no compiler, no "
                                         "headers) or auto.")] = "auto",
    ebpf: Annotated[bool, typer.Option("--ebpf", help="Print the BPF program and exit.", hidden=True)] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing capture at -o.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No live line, no summary.")] = False,
) -> None:
    """Record the host's KVM MMU zaps (needs root)."""
    from tdptrace.live.recording import RecordOptions

    if backend not in BACKENDS:
        raise BadInput(f"--backend {backend!r} is unknown", f"use one of {', '.join(BACKENDS)}")
    if not 0 <= stack_threshold_ms <= 1e9:  # also NaN and inf, before int() meets them
        raise BadInput(f"--stack-threshold {stack_threshold_ms} is out of range", "give milliseconds between 0 and 10^9")
    out = output or Path(time.strftime("tdptrace-%Y%m%d-%H%M%S.tdp"))
    opts = RecordOptions(output=out, pids=parse_pids(pid) if pid else (), sptes=sptes, stacks=stacks,
                         stack_min_gap_ns=int(stack_threshold_ms * 1e6), force=force)
    secs = parse_duration(duration) if duration else None
    opts.validate()
    from tdptrace.live.attach import plan_probes
    from tdptrace.live.host import check_host

    report = check_host()
    plan = plan_probes(report)
    chosen = _choose_backend(backend, report)
    if ebpf:
        from tdptrace.live.bcc_recorder import program_defines, program_text

        typer.echo(program_text(program_defines(plan, opts)))
        return
    if not report.check("root").ok:
        raise MissingCapability("record needs root (BPF and tracefs)", "run it with sudo")
    if report.tracefs is None:
        raise MissingCapability("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing "
                                "(sudo bash scripts/bootstrap.sh does it)")
    _refuse_what_cannot_work(report, chosen, backend)
    if not quiet:
        tdp = _row(report, "tdp_mmu")
        if tdp is not None and not tdp.ok:
            typer.echo(f"tdptrace: note: {tdp.detail}", err=True)
    from tdptrace.live.ftrace_backend import FtraceRecorder

    if chosen == "bcc":
        from tdptrace.live.bcc_recorder import BccRecorder

        try:
            _run(BccRecorder(plan, opts, argv=command), plan, secs, command, quiet)
            return
        except MissingCapability as exc:  # raised before anything was recorded or COMMAND started
            if backend != "auto":
                raise
            typer.echo(f"tdptrace: note: {exc.message}; recording with --backend ftrace instead", err=True)
    _run(FtraceRecorder(plan, opts, argv=command), plan, secs, command, quiet)


def _row(report, name: str):
    try:
        return report.check(name)
    except KeyError:
        return None


def _refuse_what_cannot_work(report, chosen: str, backend: str) -> None:
    """One line naming the missing piece (the doctor row's detail and fix) instead of an empty capture or a
    compiler error: nothing recordable at all, or --backend bcc without bcc or kernel headers."""
    if not report.can_record:
        first = ("kvm", "vendor module", "kvmmmu tracepoints", "zap functions")  # the cause, before its effects
        rows = sorted((c for c in report.checks if c.status == "missing" and c.fix),
                      key=lambda c: first.index(c.name) if c.name in first else len(first))
        row = rows[0] if rows else None
        raise MissingCapability(report.verdict(), row.fix if row else "run tdptrace doctor")
    if backend == "bcc" and not report.methods.get("bcc_tracepoints"):
        for name in ("bcc", "kernel headers"):
            row = _row(report, name)
            if row is not None and row.status == "missing":
                raise MissingCapability(f"--backend bcc: {row.detail}", f"{row.fix}; or use --backend ftrace")


def _choose_backend(backend: str, report) -> str:
    if backend != "auto":
        return backend
    return "bcc" if report.methods.get("bcc_tracepoints") else "ftrace"


def _run(recorder, plan, secs: float | None, command: list[str] | None, quiet: bool) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from tdptrace.live.recording import LiveStatus, run

    err = Console(stderr=True)
    if not quiet:
        for line in plan.unavailable():
            err.print(f"[yellow]note:[/] {line}")
        missing = [m["probe"] for m in plan.missing]
        if missing:
            err.print(f"[yellow]not attached:[/] {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")

    def line(st: LiveStatus) -> Text:
        gap = "-" if st.worst_gap_ns is None else f"{st.worst_gap_ns / 1e6:.2f} ms"
        style = "red" if st.drops else ""
        return Text(f"recording {st.elapsed_s:6.1f}s  {st.events_per_s:9,.0f} ev/s  {st.events:,} events  "
                    f"spans {st.spans:,}  worst gap {gap}  drops {st.drops:,}", style=style)

    live = Live(line(LiveStatus()), console=err, refresh_per_second=4, transient=True,
                auto_refresh=err.is_terminal)
    if quiet or not err.is_terminal:
        result = run(recorder, duration=secs, command=command)
    else:
        with live:
            result = run(recorder, duration=secs, command=command, tick=lambda st: live.update(line(st)))
    st = result.status
    err.print(f"recorded {st.elapsed_s:.1f}s, stopped by {result.stopped_by}: {result.capture}")
    if not quiet:
        import tdptrace
        from tdptrace.metrics.summary import summarize
        from tdptrace.oncall.summary_text import render

        render(summarize(tdptrace.open(result.capture)))
    if result.command_status:
        raise typer.Exit(code=result.command_status if result.command_status > 0 else 128 - result.command_status)
