"""Text rendering of a Triage for a person at a terminal: verdict first, under 100 columns."""
from __future__ import annotations

from typing import Any

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


def limits_text(lim: dict[str, Any]) -> str:
    """One line on the host limits a hold is judged against."""
    if lim.get("source") == "unknown":
        d = lim["kernel_defaults"]
        return (f"Host limits: unknown for this capture (kernel defaults: RCU stall {fmt_ns(d['rcu_stall_ns'])}, "
                f"soft lockup {fmt_ns(d['soft_lockup_ns'])}; give --limits to judge against the host's own)")
    parts = [f"RCU stall {fmt_ns(lim['rcu_stall_ns'])}" if lim.get("rcu_stall_ns") else "RCU stall unknown",
             f"soft lockup {fmt_ns(lim['soft_lockup_ns'])}" if lim.get("soft_lockup_ns") else "soft lockup off/unknown"]
    if lim.get("hz"):
        parts.append(f"HZ {lim['hz']}")
    if lim.get("preempt"):
        parts.append(f"preempt={lim['preempt']}")
    return f"Host limits ({lim['source']}): " + ", ".join(parts)


def _limit_line(s: Stretch) -> str | None:
    d = s.limits or {}
    bits = []
    for key, name in (("rcu_stall", "RCU stall timeout"), ("soft_lockup", "soft-lockup threshold")):
        v = d.get(key) or {}
        if v.get("limit_ns"):
            bits.append(f"{v['share']:.2%} of the {fmt_ns(v['limit_ns'])} {name} "
                        f"({fmt_ns(v['headroom_ns'])} to go)")
    return "   against the host's limits: " + "; ".join(bits) if bits else None


def waiters_text(w: dict[str, Any] | None) -> str | None:
    """'2 tasks waited: mmu_lock write 3 waits p50 1.0 ms ...; vCPU faults 5 p99 ...'."""
    if w is None:
        return None
    if not w.get("tasks"):
        return "nobody waited for mmu_lock or a vCPU fault meanwhile (waiters were recorded)"
    parts = []
    for mode, v in sorted(w["lock"].get("by_mode", {}).items()):
        parts.append(f"mmu_lock {mode}: {v['tasks']} task{'s' if v['tasks'] != 1 else ''}, {v['count']} waits, "
                     f"p50 {fmt_ns(v['p50_ns'])} p99 {fmt_ns(v['p99_ns'])} max {fmt_ns(v['max_ns'])}")
    f = w["fault"]
    if f["count"]:
        parts.append(f"vCPU faults: {f['tasks']} vCPU thread{'s' if f['tasks'] != 1 else ''}, {f['count']} faults, "
                     f"p50 {fmt_ns(f['p50_ns'])} p99 {fmt_ns(f['p99_ns'])} max {fmt_ns(f['max_ns'])}")
    who = ", ".join(w.get("task_names", [])[:4])
    return f"{w['tasks']} task{'s' if w['tasks'] != 1 else ''} waited ({who}): " + "; ".join(parts)


def stretch_lines(i: int, s: Stretch, threshold_ns: int) -> list[str]:
    """The lines describing one stretch."""
    flag = "  ABOVE THRESHOLD" if s.above_threshold else ""
    held = ("at least " if s.lower_bound else "") + fmt_ns(s.gap_ns)
    task = f"{s.comm} tid {s.tid}" + (f" pid {s.pid}" if s.pid is not None else "") + f", cpu {s.cpu}"
    what = ("holding mmu_lock" + (f" for {s.lock_mode}" if s.lock_mode else "") + " without a yield"
            if s.kind == "hold" else "without a yield, including time away in the yield (not a hold)")
    out = [
        f"{i}. {held} {what} (ends at {s.ends_at}){flag}",
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
    if s.kind != "hold":
        for a in s.actions:
            out.append(f"   next ({a['kind']}): {a['text']}" + (f": {a['command']}" if a.get("command") else ""))
        return out
    if s.lock_mode:
        out.append(f"   lock: {s.lock_mode} (from the {s.lock_mode_source}); blocks {s.blocks}")
    else:
        out.append(f"   lock: mode unknown; {s.blocks}")
    lim = _limit_line(s)
    if lim:
        out.append(lim)
    wt = waiters_text(s.waiters)
    if wt:
        out.append(f"   waiters: {wt}")
    e = s.extrapolation
    if e and "unavailable" not in e:
        out.append(f"   on a {e['guest_size']} guest ({e['label']}): {e['scenario']} under {e['strategy']} lasts "
                   f"{fmt_ns(e['duration_ns'])}, longest hold {fmt_ns(e['max_hold_ns'])} with {e['yields']} yields"
                   f"; on an idle CPU {fmt_ns(e['idle_max_hold_ns'])} without a yield")
    elif e:
        out.append(f"   on the given guest size: no model ({e['unavailable']})")
    for a in s.actions:
        out.append(f"   next ({a['kind']}): {a['text']}" + (f": {a['command']}" if a.get("command") else ""))
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
    out(f"Time base: {t.time_base.get('text', 'capture clock')}.")
    out(limits_text(t.limits))
    if t.era:
        out(f"Kernel {t.kernel} ({t.era['era']}): {t.era['root_teardown']}; {t.era['range_zap']}.")
    if t.waiters is not None:
        out("Waiters: " + (waiters_text(t.waiters.get("all")) or "none"))
    out()
    holds = [s for s in t.stretches if s.kind == "hold"]
    away = [s for s in t.stretches if s.kind != "hold"]
    out(f"Longest holds of mmu_lock without a yield (threshold {fmt_ns(t.threshold_ns)}, {t.spans} zap spans, "
        f"{t.spans_above_threshold} above):")
    for i, s in enumerate(holds, 1):
        for ln in stretch_lines(i, s, t.threshold_ns):
            out(ln)
    if away:
        out()
        out("Stretches that include time away in a yield (not holds, never above the threshold):")
        for i, s in enumerate(away, len(holds) + 1):
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
            at = f" = {m.capture_ns / 1e9:.6f} s" if m.capture_ns is not None else ""
            verdict = "explained by this capture" if m.consistent else "NOT explained by this capture"
            out(f"Kernel log line {m.line_no} {m.log_time}{at}: {m.kind.replace('_', ' ')}, {verdict}")
            out(f"   {m.text}")
            out(f"   {m.explanation}")
    overall = [a for a in t.actions if a["kind"] == "command" and a["text"].startswith("open the capture")]
    for a in overall:
        out()
        out(f"Next: {a['text']}: {a['command']}")
    for n in t.notes:
        out(f"note: {n}")
