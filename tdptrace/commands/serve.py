"""`tdptrace serve`: a Prometheus exporter of the in-kernel per-VM statistics (see tdptrace/live/exporter.py)."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def serve_cmd(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT for /metrics (loopback unless told "
                                        "otherwise; ':9464' listens on every address).")] = "127.0.0.1:9464",
    interval: Annotated[float, typer.Option("--interval", help="Seconds between reads of the BPF maps.")] = 1.0,
    pid: Annotated[int, typer.Option("-p", "--pid", help="Only count this VM process (0 = all).")] = 0,
    spans: Annotated[bool, typer.Option("--spans/--no-spans", help="Measure zap spans and gaps with kprobes "
                                        "where the kernel has them.")] = True,
    forget_after: Annotated[float, typer.Option("--forget-after", metavar="SECONDS", help="Drop a VM's series "
                                                "this long after its process exits.")] = 300.0,
    record_dir: Annotated[Optional[Path], typer.Option("--record-dir", help="Also keep rolling captures here "
                                                       "(one per hour) for triage after an alert.")] = None,
    retain_hours: Annotated[float, typer.Option("--retain-hours", help="With --record-dir: delete captures "
                                                "older than this.")] = 48.0,
    retain_mib: Annotated[int, typer.Option("--retain-mib", help="With --record-dir: keep the directory under "
                                            "this size, oldest captures go first.")] = 2048,
    roll_seconds: Annotated[float, typer.Option("--roll-seconds", hidden=True, help="With --record-dir: "
                                                "seconds per capture (default one hour).")] = 3600.0,
    duration: Annotated[Optional[float], typer.Option("--duration", metavar="SECONDS", hidden=True,
                                                      help="Stop after this long (tests, benchmarks).")] = None,
    ebpf: Annotated[bool, typer.Option("--ebpf", hidden=True, help="Print the BPF program and exit.")] = False,
) -> None:
    """Export zap, page-table, span and gap metrics for Prometheus."""
    from tdptrace.live.exporter import Poller, StatsCollector, parse_listen, start_http
    from tdptrace.live.stats import StatsReader, probes_dir

    if ebpf:
        typer.echo((probes_dir() / "stats.bpf.c").read_text())
        return
    host, port = parse_listen(listen)
    from tdptrace.options import in_range
    from tdptrace.options import pid as check_pid

    in_range("--interval", interval, 0, 86400, lo_open=True, unit=" seconds")
    check_pid("--pid", pid)
    in_range("--forget-after", forget_after, 0, 10 * 86400, unit=" seconds")
    in_range("--retain-hours", retain_hours, 0, 24 * 3650, lo_open=True)
    in_range("--retain-mib", retain_mib, 1, 1 << 30)
    in_range("--roll-seconds", roll_seconds, 0, 86400, lo_open=True)
    in_range("--duration", duration, 0, 10 * 365 * 86400, lo_open=True, unit=" seconds")
    roller = None
    if record_dir is not None:
        from tdptrace.live.rolling import CaptureRoller

        roller = CaptureRoller(record_dir, retain_hours=retain_hours, retain_bytes=retain_mib << 20,
                               period_s=roll_seconds)
    reader = StatsReader(pid=pid, spans=spans, forget_after_s=forget_after)
    poller = Poller(reader.read, reader.release, interval)
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
        print(f"tdptrace serve: http://{host}:{port}/metrics (maps read every {interval:g}s"
              + (f"; not measured here: {', '.join(sorted(missing))}" if missing else "") + ")",
              file=sys.stderr, flush=True)
        stop.wait(duration)
        if server is not None:
            server.shutdown()
    finally:
        poller.stop()
        if poller.is_alive():
            poller.join(timeout=5)
        if roller is not None:
            roller.stop()
        reader.close()
