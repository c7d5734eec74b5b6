"""`tdptrace serve [INTERVAL] [-p PID,...]`: a Prometheus exporter of the in-kernel per-VM statistics
(tdptrace/live/exporter.py)."""

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.options import DAY, HOUR, YEAR, command, duration_argument, duration_option, pid_option
from tdptrace.units import fmt_duration


def register(app: typer.Typer) -> None:
    command(app, "serve", "Prometheus exporter of the per-VM zap statistics.",
            ("tdptrace serve", "every VM on 127.0.0.1:9464/metrics, maps read every second"),
            ("tdptrace serve 5 -p 4242,4343", "two VM processes, maps read every 5 s"),
            ("tdptrace serve --record-dir /var/lib/tdptrace --retain-for 48h",
             "also keep an hour-long capture per hour for two days"))(serve_cmd)


def serve_cmd(
    interval: Annotated[int, duration_argument("INTERVAL", help="How often the BPF maps are read: a scrape "
                                               "sees counts at most this old (as in top, not Prometheus' "
                                               "scrape interval).", above_zero=True)] = "1",
    listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT", help="Address for /metrics (loopback "
                                        "unless told otherwise; ':9464' listens on every address).")]
    = "127.0.0.1:9464",
    pid: Annotated[Optional[list[int]], pid_option("Only count these VM processes (one pid is filtered in the "
                                                   "kernel, several when exported).")] = None,
    spans: Annotated[bool, typer.Option("--spans/--no-spans", help="Measure zap spans and gaps with kprobes "
                                        "where the kernel has them.")] = True,
    forget_after: Annotated[int, duration_option("--forget-after", help="Drop a VM's series this long after its "
                                                 "process exits.", hi=10 * DAY)] = "5m",
    record_dir: Annotated[Optional[Path], typer.Option("--record-dir", metavar="DIR", help="Also keep rolling "
                                                       "captures here (one per hour) for triage after an alert.")]
    = None,
    retain_for: Annotated[int, duration_option("--retain-for", help="With --record-dir: delete captures older "
                                               "than this.", hi=10 * YEAR, above_zero=True)] = "48h",
    retain_mib: Annotated[int, typer.Option("--retain-mib", metavar="N", help="With --record-dir: keep the "
                                            "directory under N MiB, oldest captures go first.")] = 2048,
    roll: Annotated[int, duration_option("--roll", help="With --record-dir: length of each capture (tests).",
                                         above_zero=True, hidden=True)] = "1h",
    duration: Annotated[Optional[int], duration_option("-d", "--duration", help="Stop after this long (tests, "
                                                       "benchmarks).", hi=YEAR, above_zero=True, hidden=True)]
    = None,
    ebpf: Annotated[bool, typer.Option("--ebpf", hidden=True, help="Print the BPF program and exit.")] = False,
) -> None:
    """Export zap, page-table, span and gap metrics for Prometheus (runs until SIGINT or SIGTERM).

    INTERVAL is positional as in top; there is no COUNT, and no --json: serve prints no result, its
    output is the /metrics page.
    """
    from tdptrace.live.exporter import Poller, StatsCollector, parse_listen, start_http
    from tdptrace.live.stats import StatsReader

    if ebpf:
        from tdptrace.live.stats import stats_program_text

        typer.echo(stats_program_text(spans=spans))
        return
    host, port = parse_listen(listen)
    from tdptrace.options import in_range

    in_range("--retain-mib", retain_mib, 1, 1 << 30)
    seconds = interval / 1e9
    pids = set(pid or ())
    roller = None
    if record_dir is not None:
        from tdptrace.live.rolling import CaptureRoller

        roller = CaptureRoller(record_dir, retain_hours=retain_for / HOUR, retain_bytes=retain_mib << 20,
                               period_s=roll / 1e9)
    reader = StatsReader(pid=next(iter(pids)) if len(pids) == 1 else 0, spans=spans,
                         forget_after_s=forget_after / 1e9)
    read = reader.read if len(pids) < 2 else lambda: _only(reader.read(), pids)
    poller = Poller(read, reader.release, seconds)
    stop = threading.Event()
    try:
        poller.poll_once()
        server = start_http(StatsCollector(poller.current), host, port)
        poller.start()
        if roller is not None:
            roller.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        missing = reader.features.unavailable()
        print(f"tdptrace serve: http://{host}:{port}/metrics (maps read every {fmt_duration(interval)}"
              + (f"; not measured here: {', '.join(sorted(missing))}" if missing else "") + ")",
              file=sys.stderr, flush=True)
        stop.wait(None if duration is None else duration / 1e9)
        if server is not None:
            server.shutdown()
    finally:
        poller.stop()
        if poller.is_alive():
            poller.join(timeout=5)
        if roller is not None:
            roller.stop()
        reader.close()


def _only(snap, pids: set[int]):
    """The snapshot with only these VM processes (several -p pids: the kernel filters one at most)."""
    from dataclasses import replace

    return replace(snap, vms={vm: t for vm, t in snap.vms.items() if vm in pids})
