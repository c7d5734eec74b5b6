"""Text rendering of a Triage for a person at a terminal: verdict first, under 100 columns."""
from __future__ import annotations

from tdptrace.oncall.triage import Stretch, Triage
from tdptrace.units import fmt_ns


def _zaps(z: dict[str, dict[str, int]] | None) -> str:
    if z is None:
        return "unknown (no SPTE events)"
    parts = []
    for lv, v in z.items():
        if v["leaf"]:
            parts.append(f"L{lv} {v['leaf']:,} leaf")
        if v["nonleaf"]:
            parts.append(f"L{lv} {v['nonleaf']:,} non-leaf")
    return ", ".join(parts) or "none"


def _range(a: int | None, b: int | None) -> str:
    return "-" if a is None else f"0x{a:x}-0x{b:x}"


def stretch_lines(i: int, s: Stretch, threshold_ns: int) -> list[str]:
    """The lines describing one stretch."""
    flag = "  ABOVE THRESHOLD" if s.above_threshold else ""
    held = ("at least " if s.lower_bound else "") + fmt_ns(s.gap_ns)
    task = f"{s.comm} tid {s.tid}" + (f" pid {s.pid}" if s.pid is not None else "") + f", cpu {s.cpu}"
    out = [
        f"{i}. {held} holding mmu_lock without a yield (ends at {s.ends_at}){flag}",
        f"   {s.function}: {s.operation}" + (f"; {s.context}" if s.context else ""),
        f"   task {task}, VM {s.vm or 'unknown'}",
        f"   path ({s.path_source}): {' -> '.join(s.caller_path)}",
        f"   from {s.start_ns / 1e9:.6f} s; span {s.span_id} lasted {fmt_ns(s.span_duration_ns)} with "
        f"{s.span_yields} yield{'s' if s.span_yields != 1 else ''}, longest gap {fmt_ns(s.span_max_gap_ns)}",
    ]
    rng = f"   span gfn range {_range(s.gfn_start, s.gfn_end)}"
    if s.zapped_gfn_min is not None:
        rng += f", zapped gfns {_range(s.zapped_gfn_min, s.zapped_gfn_max)} in this stretch"
    out.append(rng)
    freed = "" if s.page_tables_freed is None else f"; {s.page_tables_freed:,} page tables freed"
    out.append(f"   zapped in this stretch: {_zaps(s.sptes_zapped)}{freed}")
    if s.span_sptes_zapped is not None and s.span_sptes_zapped != s.sptes_zapped:
        out.append(f"   zapped in the whole span: {_zaps(s.span_sptes_zapped)}")
    if s.inner_spans:
        out.append(f"   inside: {', '.join(s.inner_spans[:6])}")
    if s.note:
        out.append(f"   note: {s.note}")
    return out


def _wrap(text: str, indent: str = "", width: int = 99) -> str:
    import textwrap

    return textwrap.fill(text, width=width, initial_indent="", subsequent_indent=indent + "  ",
                         break_on_hyphens=False, break_long_words=False)


def render(t: Triage, dmesg_given: bool) -> None:
    """Print the triage as wrapped plain text; the verdict in colour on a terminal."""
    import typer

    def out(line: str = "") -> None:
        indent = line[:len(line) - len(line.lstrip())]
        typer.echo(_wrap(line, indent) if line else "")

    typer.secho(_wrap(t.verdict), fg="red" if t.risk else "green", bold=True)
    if t.kernel_log_summary:
        out(t.kernel_log_summary)
    out()
    out(f"Longest stretches without a yield (threshold {fmt_ns(t.threshold_ns)}, {t.spans} zap spans, "
        f"{t.spans_above_threshold} above):")
    for i, s in enumerate(t.stretches, 1):
        for ln in stretch_lines(i, s, t.threshold_ns):
            out(ln)
    out()
    if t.levels:
        shares = ", ".join(f"{lv.size} {lv.kind} {lv.share:.1%} ({lv.count:,})" for lv in t.levels[:4])
        out(f"Zap levels ({t.zaps_source}): {shares}")
    else:
        out("Zap levels: no zaps in this capture")
    r = t.retained
    if r is None:
        out("Retained non-leaf page tables: unknown (no SPTE events)")
    else:
        peak_at = f" at {r['peak_ts_ns'] / 1e9:.6f} s" if r.get("peak_ts_ns") is not None else ""
        out(f"Retained non-leaf page tables: {r['at_end']} at end ({r['bytes_at_end'] // 1024} KiB), "
            f"peak {r['peak']} ({r['peak_bytes'] // 1024} KiB){peak_at}")
    if dmesg_given:
        out()
        if not t.kernel_reports:
            out("Kernel log: no RCU stall, soft/hard lockup or hung task reports")
        for m in t.kernel_reports:
            at = f" = {m.capture_ns / 1e9:.6f} s on the capture clock" if m.capture_ns is not None else ""
            out(f"Kernel log line {m.line_no} {m.log_time}{at}: {m.kind.replace('_', ' ')}")
            out(f"   {m.text}")
            out(f"   {m.explanation}")
    for n in t.notes:
        out(f"note: {n}")
