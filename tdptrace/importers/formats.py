"""Which text formats tdptrace reads, how each is recognised, and the line parser for each."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from tdptrace.errors import BadInput
from tdptrace.importers import perf, trace_cmd, tracefs
from tdptrace.importers.tracefs import ParsedBlock

LineParser = Callable[[pa.Array, int], ParsedBlock]

# (name, recogniser over the first decoded 64 KiB); first match wins, most specific first: trace-cmd text
# also matches the tracefs recogniser, perf's never does (no '-' before the tid).
PROBES: list[tuple[str, Callable[[str], bool]]] = [
    ("trace-cmd", trace_cmd.looks_like),
    ("perf", perf.looks_like),
    ("tracefs", tracefs.looks_like),
]


def line_parser(kind: str, kallsyms: str | Path | None = None, kprobe_events: str | Path | None = None) -> LineParser:
    """The parser turning a block of lines into common columns for format `kind`."""
    if kind == "tracefs":
        return tracefs.parse_lines
    if kind in ("trace-cmd", "perf"):
        from tdptrace.importers.kallsyms import load_kallsyms
        from tdptrace.importers.kprobe_events import load_kprobe_events

        syms = load_kallsyms(kallsyms) if kallsyms else None
        probes = load_kprobe_events(kprobe_events) if kprobe_events else None
        module = trace_cmd if kind == "trace-cmd" else perf
        return module.line_parser(syms, probes)
    raise BadInput(f"format '{kind}' is not supported by this build", "convert it to tracefs text")


@dataclass
class Reported:
    """A binary trace turned into text by its own tool, in a private directory removed by cleanup()."""

    text: Path
    kind: str
    kallsyms: Path | None
    workdir: tempfile.TemporaryDirectory

    def cleanup(self) -> None:
        self.workdir.cleanup()


# kind -> (program, Debian package, report command, kallsyms command or None)
_TOOLS = {
    # -N: no plugins, so kvm_mmu_get_page/prepare_zap_page print all raw fields (the kvm plugin drops the gfn);
    # -t: full nanosecond timestamps.
    "trace-cmd-dat": ("trace-cmd", "trace-cmd", ["report", "-N", "-t", "-i"], ["dump", "--kallsyms", "-i"]),
    # --show-lost-events: PERF_RECORD_LOST lines; --ns: nanoseconds; -f: a file recorded by another user.
    "perf-data": ("perf", "linux-perf", ["script", "-f", "--ns", "--show-lost-events", "-i"], None),
}


def report_binary(path: Path, kind: str, workdir: Path | None = None) -> Reported:
    """Turn a binary trace (trace.dat, perf.data) into text with its own tool (streamed to a file next to
    the capture, never held in memory). trace-cmd also dumps the kallsyms the trace.dat carries."""
    prog, package, report, dump = _TOOLS[kind]
    exe = shutil.which(prog)
    if exe is None:
        what = "trace.dat" if kind == "trace-cmd-dat" else "perf.data"
        raise BadInput(f"{path} is a {what} file and {prog} is not installed to report it",
                       f"apt-get install {package}, or report it to text where it was recorded")
    try:
        tmp = tempfile.TemporaryDirectory(prefix=".tdptrace-report-", dir=workdir)
    except OSError as exc:
        raise BadInput(f"cannot write the {prog} report next to the capture, in {workdir} ({exc.strerror})",
                       "create that directory or choose another -o")
    try:
        text = Path(tmp.name) / "report.txt"
        _run([exe, *report, str(path)], text, path, prog)
        if kind == "perf-data" and not _has_event_lines(text):
            raise _no_perf_samples(exe, path)
        syms = None
        if dump is not None:
            syms = Path(tmp.name) / "kallsyms"
            try:
                _run([exe, *dump, str(path)], syms, path, prog)
            except BadInput:
                syms = None
            if syms is not None and not _has_symbols(syms):
                syms = None  # a trace.dat recorded without kallsyms: raw kprobes then need --kallsyms
        out_kind = "trace-cmd" if kind == "trace-cmd-dat" else "perf"
        return Reported(text=text, kind=out_kind, kallsyms=syms, workdir=tmp)
    except BaseException:
        tmp.cleanup()
        raise


def _run(cmd: list[str], out: Path, source: Path, prog: str) -> None:
    with open(out, "wb") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        err = [ln.strip() for ln in p.stderr.decode("utf-8", errors="replace").splitlines() if ln.strip()]
        why = "; ".join(err[:2])[:160] or f"exit status {p.returncode}"
        raise BadInput(f"{prog} cannot read {source}: {why}", "the file is damaged or from an incompatible version")


def _has_event_lines(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return any(ln.strip() and not ln.lstrip().startswith(b"#") for ln in head.splitlines())


def _no_perf_samples(exe: str, path: Path) -> BadInput:
    """perf.data without a single sample: say which events perf was asked for and the usual reason. A BPF
    program attached to the same tracepoint that returns 0 hides every event from all perf users while it
    runs (the kernel delivers a tracepoint event to perf only when all its BPF programs return non-zero)."""
    try:
        p = subprocess.run([exe, "evlist", "-f", "-i", str(path)], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        events = [ln.strip() for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    except (OSError, subprocess.TimeoutExpired):
        events = []
    asked = f" of {', '.join(events[:4])}{' ...' if len(events) > 4 else ''}" if events else ""
    tracepoints = any(":" in e for e in events)
    return BadInput(f"{path}: perf recorded no samples{asked}",
                    "an eBPF program attached to these tracepoints while perf recorded (a bcc tool, bpftrace) may "
                    "have hidden their events from perf; record again without it running, or with tdptrace record"
                    if tracepoints or not events else
                    "the workload did not hit the recorded events; check perf record's -e and the command")


def _has_symbols(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", errors="replace")
    return bool(re.search(r"^[0-9a-fA-F]{8,16} [tTwW] \S", head, re.M))
