"""Importers: trace text written by tracefs, trace-cmd or perf -> a capture directory.

`import_file(path, out)` detects the format, streams the file in blocks (bounded memory), decodes the
events, and assembles the capture with the same definitions the live recorder uses.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tdptrace.capture import CaptureMeta, CaptureWriter, default_host
from tdptrace.capture.assemble import Assembler
from tdptrace.errors import BadInput, OutputFull
from tdptrace.importers import fastscan, formats, tracefs
from tdptrace.importers.fastscan import Scanned
from tdptrace.importers.decode import RawChunk, decode
from tdptrace.importers.reader import (
    BLOCK_BYTES,
    PERF_DATA_MAGIC,
    TRACE_DAT_MAGIC,
    Block,
    blocks,
    sniff,
)
from tdptrace.importers.tracefs import ParsedBlock
from tdptrace.kernel import validate
from tdptrace.kernel.spte import encoding_for_release
from tdptrace.kernel.validate import Evidence

FORMATS = ("auto", "tracefs", "trace-cmd", "perf")
# Special events (kprobes, page tables, waits) of the native path are decoded in batches of about this many rows.
DEFERRED_ROWS = 65536


@dataclass
class ImportResult:
    """What an import did: where the capture is and what the input held."""

    capture: Path
    format: str
    lines: int = 0
    events: int = 0
    unparsed: int = 0
    unparsed_example: str = ""
    long_lines: int = 0
    long_line_bytes: int = 0
    truncated_tail: str = ""
    lost: int = 0
    spans: int = 0
    unknown: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def detect_format(path: Path) -> str:
    """Which text format (or binary container) the file holds; BadInput when none."""
    head = sniff(path)
    if head.startswith(TRACE_DAT_MAGIC):
        return "trace-cmd-dat"
    if head.startswith(PERF_DATA_MAGIC):
        return "perf-data"
    if not head.strip():
        raise BadInput(f"{path} is empty", "give the text of tracefs 'trace', 'trace-cmd report' or 'perf script'")
    if b"\x00" in head[:4096]:
        raise BadInput(f"{path} is binary, not trace text",
                       "give the text of tracefs 'trace', 'trace-cmd report' or 'perf script' (or a trace.dat)")
    text = head.decode("utf-8", errors="replace")
    for name, probe in formats.PROBES:
        if probe(text):
            return name
    raise BadInput(f"{path}: not a trace format tdptrace knows",
                   "expected tracefs trace/trace_pipe text, 'trace-cmd report' or 'perf script' output")


def _pure(parser, data: bytes) -> Scanned:
    """One block read by the pure line parser of the format, in the native scanner's terms."""
    parsed = parser(tracefs.split_lines(data), 0)
    n = parsed.events.num_rows
    return Scanned(n, parsed.unparsed, parsed.unparsed_example, parsed.comment_lines,
                   parsed.header_overrun, parsed.lost, decode(parsed.events) if n else None)


def _parsed_blocks(path: Path, parser, native: bool) -> Iterator[tuple[Block, Scanned | None]]:
    """Parse and decode the file block by block (one block in memory at a time), numbering each from 0.
    With the native scanner (tracefs text), the next block is read, scanned and split in Arrow on a second
    thread while this one's few special events are decoded (pandas, which holds the GIL) and it is written."""
    from concurrent.futures import ThreadPoolExecutor

    def read(block: Block) -> tuple[Block, Scanned | None]:
        if not block.data:
            return block, None
        return block, fastscan.scan_block(block.data) if native else _pure(parser, block.data)

    if not native:
        for block in blocks(path):
            yield read(block)
        return
    it = blocks(path)

    def step() -> tuple[Block, fastscan.Prescanned | None] | None:
        block = next(it, None)
        return None if block is None else (block, fastscan.prescan(block.data) if block.data else None)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdptrace-scan") as pool:
        pending = pool.submit(step)
        while True:
            got = pending.result()
            if got is None:
                return
            pending = pool.submit(step)  # the file's next block is read and scanned meanwhile
            block, pre = got
            yield block, (fastscan.finish_scan(pre, defer=True) if pre is not None else None)  # pandas: here


# What `uname -r` prints: 6.1.0-56-amd64, 5.10.0-32-cloud-amd64, 6.12.9+bpo-amd64 (nothing else lands in meta).
_RELEASE = re.compile(r"\d+\.\d+[0-9A-Za-z.+_~-]*")


def import_file(path: str | Path, out: str | Path, *, fmt: str = "auto", kernel_release: str | None = None,
                kallsyms: str | Path | None = None, kprobe_events: str | Path | None = None,
                force: bool = False, progress: Callable[[str, int, int], None] | None = None) -> ImportResult:
    """Import a trace file into a new capture directory `out`.

    `progress(step, done, total)` hears how far the import is: step "reading" with bytes of the file read
    (compressed, if it is) against its size, then each finishing step by name with done == total.

    A trace.dat / perf.data is first reported to text by its own tool. When the import fails, the capture it
    had started is removed, so the same command can simply be run again."""
    path = Path(path)
    if fmt not in FORMATS:
        raise BadInput(f"unknown format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    for opt, given in (("--kallsyms", kallsyms), ("--kprobe-events", kprobe_events)):
        if given is not None and not Path(given).is_file():
            raise BadInput(f"{opt} {given}: no such file", "give the traced host's file, copied next to the trace")
    if fmt == "auto":
        kind = detect_format(path)
    else:  # a trace.dat / perf.data is reported by its own tool whatever --format says
        head = sniff(path, 16)
        kind = ("trace-cmd-dat" if head.startswith(TRACE_DAT_MAGIC) else
                "perf-data" if head.startswith(PERF_DATA_MAGIC) else fmt)
    reported = None
    if kind in ("trace-cmd-dat", "perf-data"):
        reported = formats.report_binary(path, kind, Path(out).resolve().parent)
        kallsyms = kallsyms or reported.kallsyms
    try:
        return _import_text(reported.text if reported else path, out, kind=reported.kind if reported else kind,
                            kernel_release=kernel_release, kallsyms=kallsyms, kprobe_events=kprobe_events,
                            force=force, progress=progress, input_name=path.name)
    except BaseException as exc:
        if _discard_partial(Path(out)) and isinstance(exc, OutputFull):  # say what is left: nothing
            exc.hint = "free space or choose another -o; the unfinished capture was removed"
        raise
    finally:
        if reported:
            reported.cleanup()


def _gather(evidence: Evidence, chunk: RawChunk) -> None:
    """Fold one decoded block's kernel evidence in: tracepoints seen, functions probed, SPTE values written."""
    sp = chunk.sptes
    new = (sp.column("new_spte").to_numpy() if isinstance(sp, pa.Table) else sp["new_spte"].to_numpy()) \
        if len(sp) else None
    calls = chunk.calls
    functions = calls["function"].unique() if len(calls) and "function" in calls else ()
    evidence.add(events=chunk.counts.keys(), functions=functions, new_sptes=new)


def _discard_partial(out: Path) -> bool:
    """Remove a capture this import left unfinished (status 'recording'); a complete one is never touched.
    True when one was removed."""
    import json

    from tdptrace.capture.store import STATUS_RECORDING, remove_capture

    try:
        status = json.loads((out / "meta.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return False
    return status == STATUS_RECORDING and remove_capture(out)


def _import_text(path: Path, out: str | Path, *, kind: str, kernel_release: str | None,
                 kallsyms: str | Path | None, kprobe_events: str | Path | None, force: bool,
                 progress: Callable[[str, int, int], None] | None, input_name: str) -> ImportResult:
    """Import trace text of a known format (see import_file)."""

    enc = encoding_for_release(kernel_release) if kernel_release else None
    if kernel_release and (enc is None or not _RELEASE.fullmatch(kernel_release)):
        raise BadInput(f"--kernel '{kernel_release}' is not a kernel release", "give e.g. 6.1.0-56-amd64")
    parser = formats.line_parser(kind, kallsyms=kallsyms, kprobe_events=kprobe_events)
    meta = CaptureMeta(
        source={"kind": "import", "format": kind, "input": input_name},
        kernel={"release": kernel_release} if kernel_release else {},
        host=default_host() | {"hostname": None, "note": "imported: the host that recorded is unknown"},
        clock={"name": "trace (as printed)", "unit": "ns"},
    )
    result = ImportResult(capture=Path(out), format=kind)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    evidence = Evidence()
    with CaptureWriter(out, meta, overwrite=force) as writer:
        asm = Assembler(writer, enc)
        seq = 0
        # Blocks' special events (seq of the whole file) not decoded yet, each with the evidence as it stood after
        # its block: a --kernel the trace contradicts is refused with the facts of the block that did it, as if
        # every block had been decoded at once.
        deferred: list[tuple[pa.Table, Evidence]] = []

        def check() -> None:
            try:
                validate.check(kernel_release, evidence)
            except validate.KernelContradiction:
                seen = Evidence()
                for rest, before in deferred:  # which deferred block first contradicts the release
                    _gather(seen, decode(rest))
                    validate.check(kernel_release, Evidence(before.events | seen.events,
                                                            before.functions | seen.functions,
                                                            before.markers | seen.markers))
                raise

        def add(chunk, gathered: bool = False) -> None:  # noqa: ANN001 - a RawChunk, seq of the whole file
            if not gathered:
                _gather(evidence, chunk)
            if kernel_release:  # refuse a --kernel the trace contradicts before writing more of it
                check()
            asm.add(chunk)

        def flush_deferred() -> None:  # decoded in event order, before anything later is added
            if deferred:
                add(decode(pa.concat_tables([rest for rest, _ in deferred])))
                deferred.clear()

        native = kind == "tracefs" and fastscan.available()
        for block, parsed in _parsed_blocks(path, parser, native):
            if block.long_lines:
                result.long_lines += block.long_lines
                result.long_line_bytes = result.long_line_bytes or block.long_line_bytes
            if block.data:
                chunk = parsed.chunk
                n = parsed.events
                result.lines += n + parsed.unparsed + parsed.comment_lines + len(parsed.lost)
                result.unparsed += parsed.unparsed
                if parsed.unparsed and not result.unparsed_example:
                    result.unparsed_example = parsed.unparsed_example
                asm.lost.extend((cpu, count, pos + seq) for cpu, count, pos in parsed.lost)
                asm.header_overrun += parsed.header_overrun
                if parsed.rest is None and chunk is not None and deferred:
                    flush_deferred()  # this block decoded its own: what came before goes first
                if parsed.rest is not None:
                    rest = parsed.rest
                    deferred.append((rest.set_column(1, "seq", pc.add(rest.column("seq"), pa.scalar(seq, pa.int64())))
                                     .cast(tracefs.empty_events().schema), Evidence()))
                if chunk is not None:
                    _gather(evidence, chunk)
                if parsed.rest is not None:  # the evidence after this block, but for the rests not decoded
                    deferred[-1][1].events |= evidence.events
                    deferred[-1][1].functions |= evidence.functions
                    deferred[-1][1].markers |= evidence.markers
                if chunk is not None:
                    add(chunk.shifted(seq), gathered=True)
                if sum(t.num_rows for t, _ in deferred) >= DEFERRED_ROWS:
                    flush_deferred()
                seq += n
                result.events += n
                if progress:
                    progress("reading", min(block.consumed, size), size)
            if block.last and block.truncated_tail.strip():
                result.truncated_tail = block.truncated_tail.decode("utf-8", errors="replace")[:80]
        flush_deferred()
        if result.long_lines:  # skipped, never held: counted as lines that could not be read
            result.lines += result.long_lines
            result.unparsed += result.long_lines
            result.unparsed_example = result.unparsed_example or f"<a line of {result.long_line_bytes:,} bytes>"
            writer.meta.notes.append(f"{result.long_lines} lines longer than {BLOCK_BYTES >> 20} MiB were skipped "
                                     "(no trace line is that long)")
        if result.events == 0:
            writer.meta.notes.append("no events")
            first = writer.hasher.scrub_str(result.unparsed_example)[:60]
            example = f" (first line: '{first}')" if result.unparsed_example else ""
            raise BadInput(f"{path}: no trace events found{example}",
                           "is this tracefs, trace-cmd report or perf script text?")
        if not kernel_release and (said := validate.guess(evidence)):
            writer.meta.notes.append(said)
        stats = asm.finish(step=(lambda name: progress(name, size, size)) if progress else None)
        result.spans = stats["spans"]
        result.lost = stats["lost"]
        # What is printed from the trace's own text carries no raw kernel address either: hashed like in meta.json.
        scrub = writer.hasher.scrub_str
        unknown: dict[str, int] = {}
        for name, count in asm.unknown.items():
            unknown[scrub(name)] = unknown.get(scrub(name), 0) + count
        result.unknown = unknown
        if result.unparsed:
            writer.meta.notes.append(f"{result.unparsed} lines could not be read, e.g. '{result.unparsed_example[:80]}'")
        if result.truncated_tail:
            writer.meta.notes.append(f"the input's last line is truncated and was not imported: "
                                     f"'{result.truncated_tail}'")
        result.notes = [scrub(n) for n in writer.meta.notes]
        result.unparsed_example = scrub(result.unparsed_example)
        result.truncated_tail = scrub(result.truncated_tail)
        if progress:
            progress("writing meta.json", size, size)
    return result
