"""`tdptrace top [INTERVAL] [COUNT] [-p PID,...]`: a live per-VM view of zaps, page tables, spans and gaps
(like kvm_stat).

Counts come from the in-kernel aggregation of tdptrace/live/stats.py: one read of the BPF maps per interval,
no per-event streaming. `--json` prints one JSON object per interval; `--once` prints one interval and exits.
"""

import json
import re
import signal
import sys
import threading
import time
from typing import Annotated, Any, Callable, Optional

import typer

from tdptrace.errors import BadInput
from tdptrace.options import duration_argument, pid_option
from tdptrace.units import fmt_duration

SORT_KEYS: dict[str, Callable[[Any], Any]] = {
    "zaps": lambda v: v.zaps,
    "pt": lambda v: int(v.pt_alloc.sum() + v.pt_free.sum()),
    "fast": lambda v: v.zap_all_fast,
    "gap": lambda v: v.max_gap_ns,
    "retained": lambda v: int(v.retained.sum()),
    "pid": lambda v: -v.vm,
}


def register(app: typer.Typer) -> None:
    from tdptrace.options import command

    command(app, "top", "Live per-VM zaps, page tables, spans and gaps (like kvm_stat).",
            ("tdptrace top", "every VM, one screen per second, until q or ^C"),
            ("tdptrace top 5 12 -p 4242", "VM process 4242 only, 5 s intervals, 12 of them"),
            ("tdptrace top --once --json 10", "one 10 s interval as one JSON object, then exit"))(top_cmd)


def top_cmd(
    interval: Annotated[int, duration_argument("INTERVAL", help="Length of each interval.", above_zero=True)]
    = "1",
    count: Annotated[Optional[int], typer.Argument(metavar="COUNT", help="Stop after this many intervals "
                                                   "(default: until q or ^C).")] = None,
    pid: Annotated[Optional[list[int]], pid_option("Only these VM processes (one pid is filtered in the kernel, "
                                                   "several when printed).")] = None,
    sort: Annotated[str, typer.Option("-s", "--sort", metavar="KEY", help="Sort rows by zaps, pt, fast, gap, "
                                      "retained or pid (keys z/t/f/g/r/p while running).")] = "zaps",
    comm: Annotated[Optional[str], typer.Option("-c", "--comm", metavar="REGEX", help="Only VMs whose process "
                                                "name matches this regular expression.")] = None,
    active: Annotated[bool, typer.Option("-a", "--active", help="Hide VMs with nothing in the interval.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Print one interval and exit (same as COUNT 1).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per interval on stdout.")] = False,
    spans: Annotated[bool, typer.Option("--spans/--no-spans", help="Measure spans and gaps with kprobes where "
                                        "available.")] = True,
    ebpf: Annotated[bool, typer.Option("--ebpf", hidden=True, help="Print the BPF program and exit.")] = False,
) -> None:
    """Live per-VM zaps by level, page tables, fast zaps, spans, yields, worst gaps, retained tables.

    Counts are aggregated in the kernel and read once per interval (no per-event streaming), like kvm_stat.
    """
    from tdptrace.live.stats import StatsReader
    from tdptrace.live.stats import interval as deltas

    if ebpf:
        from tdptrace.live.stats import stats_program_text

        typer.echo(stats_program_text(spans=spans))
        return
    from tdptrace.options import in_range

    in_range("COUNT", count, 1, 1 << 40)
    if sort not in SORT_KEYS:
        raise BadInput(f"unknown sort key {sort!r}", f"use one of {', '.join(SORT_KEYS)}")
    try:
        comm_re = re.compile(comm) if comm else None
    except re.error as exc:
        raise BadInput(f"--comm {comm!r} is not a regular expression ({exc})", "e.g. --comm 'qemu|kvm'")
    if once:
        count = 1
    seconds = interval / 1e9
    pids = set(pid or ())
    reader = StatsReader(pid=next(iter(pids)) if len(pids) == 1 else 0, spans=spans)
    stop = threading.Event()
    # Explicit handlers: a shell starting top in the background leaves SIGINT ignored, not KeyboardInterrupt.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    state = {"sort": sort}
    missing = reader.features.unavailable()
    view = None if as_json else _LiveView(state, seconds)
    prev = reader.read()
    not_here = f"; not measured here: {', '.join(sorted(missing))}" if missing else ""
    print(f"tdptrace top: watching {len(reader.features.attached)} probe points, {fmt_duration(interval)} "
          f"intervals{not_here}", file=sys.stderr, flush=True)
    n = 0
    try:
        if view is not None:
            view.start(stop)
        while count is None or n < count:
            if stop.wait(max(0.0, prev.mono_ns / 1e9 + seconds - time.monotonic_ns() / 1e9)) and not as_json:
                break
            cur = reader.read()  # with --json, a signal still prints the partial interval: nothing is lost
            rows = [r for r in deltas(prev, cur) if (comm_re is None or comm_re.search(r.comm))
                    and (not pids or r.vm in pids)
                    and (not active or _busy(r))]
            rows.sort(key=SORT_KEYS[state["sort"]], reverse=True)
            lost = {k: v - prev.lost.get(k, 0) for k, v in cur.lost.items()}
            if as_json:
                obj = {"time": round(cur.unix_s, 3), "interval_s": round((cur.mono_ns - prev.mono_ns) / 1e9, 3),
                       "kernel": reader.release, "vms": [r.to_dict(cur.features) for r in rows],
                       "lost_events": {"interval": lost, "total": cur.lost}, "unavailable": missing}
                typer.echo(json.dumps(obj))
            else:
                view.update(rows, cur, lost, missing)
            prev = cur
            n += 1
            if stop.is_set():
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if view is not None:
            view.close()
        reader.close()


def _busy(r: Any) -> bool:
    return bool(r.zaps or r.pt_alloc.sum() or r.pt_free.sum() or r.zap_all_fast or r.spans)


def _num(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}" if x == int(x) else f"{x:.1f}"


def _us(ns: Optional[int]) -> str:
    if not ns:
        return "-"
    return f"{ns / 1e6:.1f}ms" if ns >= 1e6 else f"{ns / 1e3:.0f}us"


def render_table(rows: list, snap: Any, lost: dict[str, int], missing: dict[str, str], sort: str) -> Any:
    """The screen for one interval as a rich renderable (fits 80 columns)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    # zaps/s at 4K, 2M, 1G and above; page tables allocated/freed per s; fast zaps; spans; yield points;
    # worst gap in the interval and since start; retained non-leaf tables now.
    for c in ("PID", "COMM", "4K/s", "2M/s", "1G+/s", "PT+/s", "PT-/s", "FAST", "SPAN", "YLD", "GAP", "MAXGAP",
              "RET"):
        t.add_column(c, justify="left" if c == "COMM" else "right", no_wrap=True)
    spans_ok = snap.features.spans
    ret_ok = "retained" not in missing
    zaps_ok = "zaps" not in missing  # shadow MMU: no SPTE zaps are traced, so "-" rather than a made-up 0
    for r in rows:
        sec = r.seconds or 1.0
        lvl = [(r.zap_leaf[i] + r.zap_nonleaf[i]) / sec for i in range(1, 6)]
        na = "-"
        zaps = (_num(lvl[0]), _num(lvl[1]), _num(sum(lvl[2:]))) if zaps_ok else (na, na, na)
        t.add_row(str(r.vm), r.comm[:10], *zaps,
                  _num(r.pt_alloc.sum() / sec), _num(r.pt_free.sum() / sec), str(r.zap_all_fast),
                  str(r.spans) if spans_ok else na, str(r.yields) if spans_ok else na,
                  _us(r.max_gap_ns) if spans_ok else na, _us(r.max_gap_since_start_ns) if spans_ok else na,
                  str(int(r.retained.sum())) if ret_ok else na)
    head = Text(f"tdptrace top {time.strftime('%H:%M:%S')}  VMs {len(rows)}  sort {sort}  lost "
                f"{sum(lost.values())}/{sum(snap.lost.values())}  keys z t f g r p, q")
    notes = [Text(f"- {k}: {v}", style="yellow") for k, v in sorted(missing.items()) if k in ("spans", "zaps")]
    return Group(head, t, *notes)


class _LiveView:
    """rich Live screen plus single-key commands (sort keys, q) read from the terminal when it is one."""

    KEYS = {"z": "zaps", "t": "pt", "f": "fast", "g": "gap", "r": "retained", "p": "pid"}

    def __init__(self, state: dict[str, str], interval: float) -> None:
        from rich.console import Console
        from rich.live import Live

        self.state = state
        self.console = Console()
        self.live = Live(console=self.console, auto_refresh=False, screen=True) if self.console.is_terminal else None
        self._tty = None

    def start(self, stop: threading.Event) -> None:
        if self.live is None:
            return  # not a terminal: print each interval instead of redrawing
        self.live.start()
        if sys.stdin.isatty():
            import termios
            import tty

            fd = sys.stdin.fileno()
            self._tty = (fd, termios.tcgetattr(fd))
            tty.setcbreak(fd)
            threading.Thread(target=self._keys, args=(stop,), daemon=True).start()

    def _keys(self, stop: threading.Event) -> None:
        while not stop.is_set():
            ch = sys.stdin.read(1)
            if ch in ("q", ""):
                stop.set()
            elif ch in self.KEYS:
                self.state["sort"] = self.KEYS[ch]

    def update(self, rows: list, snap: Any, lost: dict[str, int], missing: dict[str, str]) -> None:
        screen = render_table(rows, snap, lost, missing, self.state["sort"])
        if self.live is None:
            self.console.print(screen)
        else:
            self.live.update(screen, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        if self._tty is not None:
            import termios

            termios.tcsetattr(self._tty[0], termios.TCSADRAIN, self._tty[1])
