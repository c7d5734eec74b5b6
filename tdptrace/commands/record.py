"""`sudo tdptrace record [-o CAPTURE] [-p PID,...] [-d DURATION] [--sptes] [--stacks] [--json] [-- COMMAND ...]`.

Records the host's KVM MMU until Ctrl-C, SIGTERM, the duration or the end of COMMAND, with a live line;
then prints the capture's summary. `--ebpf` prints the BPF program (with its settings) and exits.
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.options import HOUR, YEAR, duration_option, force_option, pid_option, refuse_existing, writer_json
from tdptrace.options import command as add_command


def register(app: typer.Typer) -> None:
    add_command(app, "record", "Record the host's KVM MMU zaps (root), then summarize the capture.",
                ("sudo tdptrace record -d 30s -o stall.tdp", "every VM for 30 s, then the summary"),
                ("sudo tdptrace record -p 4242,4343 --stacks", "two VMMs until ^C, with stacks of long spans"),
                ("sudo tdptrace record -o ex.tdp -- tdptrace exercise", "while a command runs (a small test VM)"),
                context_settings={"allow_interspersed_args": False})(record_cmd)


def record_cmd(
    command: Annotated[Optional[list[str]], typer.Argument(metavar="COMMAND", help="Command to run while "
                                                           "recording (after --); recording stops when it exits.")]
    = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="CAPTURE", help="Capture directory "
                                                   "to create (default tdptrace-DATE-TIME.tdp).")] = None,
    pid: Annotated[Optional[list[int]], pid_option("Only these VMMs' VMs (filtered in the kernel).")] = None,
    duration: Annotated[Optional[int], duration_option("-d", "--duration", help="Stop after this long (default: "
                                                       "Ctrl-C, SIGTERM or the end of COMMAND).", hi=YEAR,
                                                       above_zero=True)] = None,
    sptes: Annotated[bool, typer.Option("--sptes", help="Also keep every SPTE change (deep dives; large).")] = False,
    no_spans: Annotated[bool, typer.Option("--no-spans", help="Tracepoints only: zaps by level and page tables, "
                                           "no kprobes, so no spans, yields or lock-hold gaps (the cheapest).")]
    = False,
    stacks: Annotated[bool, typer.Option("--stacks", help="Keep the kernel stack of spans whose max gap "
                                         "reaches --stack-threshold.")] = False,
    stack_threshold: Annotated[int, duration_option("--stack-threshold", help="Max gap from which --stacks "
                                                    "keeps a span's stack.", hi=HOUR)] = "1ms",
    backend: Annotated[str, typer.Option("--backend", metavar="BACKEND", help="bcc, ftrace (tracefs only: no "
                                         "compiler, no headers) or auto.")] = "auto",
    ebpf: Annotated[bool, typer.Option("--ebpf", help="Print the BPF program and exit.", hidden=True)] = False,
    force: Annotated[bool, force_option("the capture at -o")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No live line, no summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written and the summary as one JSON "
                                          "object (no summary tables).")] = False,
    waiters: Annotated[bool, typer.Option("--waiters", help="Also record who waited: mmu_lock contention "
                                          "(5.19+) and vCPU fault latency (ftrace backend).")] = False,
) -> None:
    """Record the host's KVM MMU zaps (needs root), then print the capture's summary.

    Stops at Ctrl-C, SIGTERM, -d or the end of COMMAND; every way of stopping leaves a valid capture.
    OVERHEAD: a BPF program runs for every SPTE a zap clears (span state, level counters, the page
    table's entry count) and kprobes on every zap call and yield point. Measured in the lab under
    emulation (bench/RESULTS.md): --no-spans cost a root teardown 1.1-3.4x, the default 2.2-6.8x (a 3x
    drift of the shared host's baseline blurs both); --sptes costs about what the default does. A zap
    span is one record however many SPTEs it zaps.
    """
    from tdptrace import api
    from tdptrace.live.recording import RecordOptions

    api.check_backend(backend)
    out = output or Path(time.strftime("tdptrace-%Y%m%d-%H%M%S.tdp"))
    if ebpf:
        from tdptrace.live.bcc_recorder import program_defines, program_text

        opts = RecordOptions(output=out, pids=tuple(pid or ()), sptes=sptes, spans=not no_spans, stacks=stacks,
                             stack_min_gap_ns=stack_threshold, force=force, waiters=waiters)
        plan = api.plan_recording(opts, backend).probes
        typer.echo(program_text(program_defines(plan, opts), plan))
        return
    refuse_existing([out], force)
    secs = duration / 1e9 if duration is not None else None

    def note(kind: str, line: str) -> None:  # -q keeps only the note that the backend changed
        if not quiet or kind == "backend":
            typer.echo(f"tdptrace: note: {line}", err=True)

    from rich.console import Console

    err = Console(stderr=True)
    with _stdout_to_stderr(as_json and bool(command)):  # COMMAND inherits fd 1: stdout carries the JSON alone
        with api.record(out, pids=tuple(pid or ()), duration=secs, backend=backend, sptes=sptes,
                        spans=not no_spans, stacks=stacks,
                        stack_threshold_ns=stack_threshold, waiters=waiters, force=force, command=command,
                        keep=False, on_note=note) as stream:
            result = _watch(stream, err, quiet)
    _report(result, err, quiet, as_json)


def _watch(stream, err, quiet: bool):
    """What the recording cannot see here, then the live line until it ends; returns how it ended."""
    from rich.live import Live
    from rich.text import Text

    from tdptrace.live.recording import LiveStatus

    plan = stream.plan.probes
    if not quiet:
        for line in plan.unavailable():
            err.print(f"[yellow]note:[/] {line}")
        missing = [m["probe"] for m in plan.missing]
        if missing:
            err.print(f"[yellow]not attached:[/] {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if quiet or not err.is_terminal:
        return stream.wait()

    def line(st: LiveStatus) -> Text:
        gap = "-" if st.worst_gap_ns is None else f"{st.worst_gap_ns / 1e6:.2f} ms"
        style = "red" if st.drops else ""
        return Text(f"recording {st.elapsed_s:6.1f}s  {st.events_per_s:9,.0f} ev/s  {st.events:,} events  "
                    f"spans {st.spans:,}  worst gap {gap}  drops {st.drops:,}", style=style)

    with Live(line(LiveStatus()), console=err, refresh_per_second=4, transient=True) as live:
        stream.on_status = lambda st: live.update(line(st))
        return stream.wait()


def _report(result, err, quiet: bool, as_json: bool) -> None:
    """The closing line, the summary (or the JSON object), and COMMAND's exit status as ours."""
    st = result.status
    err.print(f"recorded {st.elapsed_s:.1f}s, stopped by {result.stopped_by}: {result.capture}")
    if as_json or not quiet:
        import tdptrace
        from tdptrace.metrics.summary import summarize

        summary = summarize(tdptrace.open(result.capture))
        if as_json:
            typer.echo(json.dumps(writer_json([result.capture], capture=str(result.capture),
                                              stopped_by=result.stopped_by, seconds=round(st.elapsed_s, 3),
                                              events=st.events, spans=st.spans, drops=st.drops,
                                              command_status=result.command_status, summary=summary), indent=1))
        else:
            from tdptrace.oncall.summary_text import render

            render(summary)
    if result.command_status:
        raise typer.Exit(code=result.command_status if result.command_status > 0 else 128 - result.command_status)


@contextlib.contextmanager
def _stdout_to_stderr(on: bool) -> Iterator[None]:
    """COMMAND (which inherits fd 1) prints to stderr while this is on; fd 1 is restored afterwards."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
