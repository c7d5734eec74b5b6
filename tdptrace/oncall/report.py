"""One self-contained HTML report of a capture: triage verdict, summary tables and the figures embedded as
base64 PNG. No scripts, fonts or images from the network: the file opens anywhere, offline, and can be
attached to a ticket as it is."""
from __future__ import annotations

import base64
import html
import time
from typing import Any

from tdptrace import __version__
from tdptrace.capture import Capture
from tdptrace.errors import MissingEvents
from tdptrace.metrics.summary import page_table_lines, summarize
from tdptrace.oncall.kernel_log import KernelReport
from tdptrace.oncall.triage import LEVEL_SIZE, Triage, triage
from tdptrace.units import fmt_ns

MAX_SPAN_ROWS = 200

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.5em;margin-bottom:0}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
.verdict{padding:12px 16px;border-radius:6px;font-weight:600;margin:16px 0}
.risk{background:#fdecea;border-left:6px solid #c0392b}.clean{background:#e9f6ec;border-left:6px solid #2e8b57}
.unknown{background:#fff6e0;border-left:6px solid #d68910}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top}th{background:#f4f4f4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td:nth-child(3),td:nth-child(7),td:nth-child(9){white-space:nowrap}
tr.above td{background:#fdf2f0}tr.away td{background:#f6f6f6;color:#555}
code{font-size:.95em}.fn{font-family:monospace}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.note{color:#8a6d3b}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_class: list[str] | None = None) -> str:
    """An HTML table; cells are already escaped HTML."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        tds = "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(r))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _zaps_text(z: dict[str, dict[str, int]] | None) -> str:
    if z is None:
        return "unknown"
    parts = [f"L{lv} {v['leaf']:,} leaf" for lv, v in z.items() if v["leaf"]]
    parts += [f"L{lv} {v['nonleaf']:,} non-leaf" for lv, v in z.items() if v["nonleaf"]]
    return ", ".join(parts) or "none"


def _verdict_html(t: Triage | None, why: str | None) -> str:
    if t is None:
        return f'<div class="verdict unknown">Cannot tell: {_e(why)}</div>'
    cls = "risk" if t.risk else "clean"
    log = f"<div>{_e(t.kernel_log_summary)}</div>" if t.kernel_log_summary else ""
    return f'<div class="verdict {cls}">{_e(t.verdict)}{log}</div>'


def _lock_html(s) -> str:
    if s.kind != "hold":
        return '<span class="note">not a hold: includes time away in the yield</span>'
    mode = _e(s.lock_mode or "unknown")
    lim = (s.limits or {}).get("rcu_stall") or {}
    share = f"<br>{lim['share']:.2%} of the {_e(fmt_ns(lim['limit_ns']))} RCU stall timeout" \
        if lim.get("limit_ns") else ""
    return f"<b>{mode}</b> ({_e(s.lock_mode_source)})<br>{_e(s.blocks)}{share}"


def _next_html(s) -> str:
    items = []
    for a in s.actions:
        cmd = f"<br><code>{_e(a['command'])}</code>" if a.get("command") else ""
        items.append(f"<li>{_e(a['kind'])}: {_e(a['text'])}{cmd}</li>")
    e = s.extrapolation
    if e and "unavailable" not in e:
        items.append(f"<li>on a {_e(e['guest_size'])} guest ({_e(e['label'])}): {_e(e['scenario'])} under "
                     f"{_e(e['strategy'])} lasts {_e(fmt_ns(e['duration_ns']))}, longest hold "
                     f"{_e(fmt_ns(e['max_hold_ns']))}; idle CPU {_e(fmt_ns(e['idle_max_hold_ns']))}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "-"


def _stretches_html(t: Triage) -> str:
    from tdptrace.oncall.triage_text import waiters_text

    rows, classes = [], []
    for i, s in enumerate(t.stretches, 1):
        held = ("&ge; " if s.lower_bound else "") + _e(fmt_ns(s.gap_ns))
        task = f"{_e(s.comm)} tid {s.tid}" + (f" pid {s.pid}" if s.pid is not None else "") + f", cpu {s.cpu}"
        what = f'<span class="fn">{_e(s.function)}</span>: {_e(s.operation)}'
        if s.context:
            what += f"<br>{_e(s.context)}"
        path = " &rarr; ".join(f'<span class="fn">{_e(p)}</span>' for p in s.caller_path)
        rng = "-" if s.gfn_start is None else f"0x{s.gfn_start:x}-0x{s.gfn_end:x}"
        zapped = _e(_zaps_text(s.sptes_zapped))
        if s.page_tables_freed is not None:
            zapped += f"; {s.page_tables_freed:,} tables freed"
        if s.note:
            zapped += f'<br><span class="note">{_e(s.note)}</span>'
        wt = waiters_text(s.waiters)
        if wt:
            zapped += f"<br>waiters: {_e(wt)}"
        yl = f"{s.span_yields} yield" + ("" if s.span_yields == 1 else "s")
        rows.append([str(i), held + f"<br>from {s.start_ns / 1e9:.6f} s", _e(s.ends_at), what, _lock_html(s), task,
                     path + f"<br>({_e(s.path_source)})", rng, zapped,
                     f"span {s.span_id}<br>{_e(fmt_ns(s.span_duration_ns))}<br>{yl}", _next_html(s)])
        classes.append("above" if s.above_threshold else "away" if s.kind != "hold" else "")
    return _table(["#", "held", "ends at", "zap", "lock", "task", "caller path", "gfn range",
                   "zapped in the stretch", "span", "next"], rows, numeric={0, 1}, row_class=classes)


def _reports_html(t: Triage) -> str:
    if not t.kernel_reports:
        return "<p>No RCU stall, soft/hard lockup or hung task reports in the kernel log.</p>"
    rows = [[str(m.line_no), _e(m.log_time), "-" if m.capture_ns is None else f"{m.capture_ns / 1e9:.6f}",
             _e(m.kind.replace("_", " ")), f"<code>{_e(m.text)}</code>",
             "yes" if m.consistent else "<b>no</b>", _e(m.explanation)] for m in t.kernel_reports]
    classes = ["" if m.consistent else "above" for m in t.kernel_reports]
    return _table(["line", "log time", "time (s)", "kind", "text", "explained", "lined up with"], rows,
                  numeric={0, 2}, row_class=classes)


def _spans_html(summary: dict[str, Any], threshold_ns: int) -> str:
    spans = summary["spans"]
    if not spans:
        return f"<p>{_e(summary.get('spans_unavailable', 'no zap spans'))}</p>"
    rows, classes = [], []
    for i, sp in enumerate(spans[:MAX_SPAN_ROWS]):
        name = "&nbsp;&nbsp;" * sp["depth"] + f'<span class="fn">{_e(sp["function"])}</span>'
        caller = _e(sp["caller"] or "-")
        rows.append([str(i), name, f"{sp['start_ns'] / 1e9:.6f}", _e(fmt_ns(sp["duration_ns"])),
                     str(sp["yields"]), _e(fmt_ns(sp["max_gap_ns"])),
                     "-" if sp["retained_nonleaf_after"] is None else str(sp["retained_nonleaf_after"]),
                     _e(_zaps_text(sp["zaps_by_level"])), caller])
        classes.append("above" if (sp["max_gap_ns"] or 0) > threshold_ns else "")
    more = (f"<p>{len(spans) - MAX_SPAN_ROWS} more spans not shown (tdptrace summary --json lists all).</p>"
            if len(spans) > MAX_SPAN_ROWS else "")
    return _table(["#", "function", "start (s)", "duration", "yields", "max gap", "retained after",
                   "zapped", "caller"], rows, numeric={0, 2, 3, 4, 5, 6}, row_class=classes) + more


def _levels_html(summary: dict[str, Any]) -> str:
    z = summary["zaps_by_level"]
    if not z:
        return "<p>No zaps in this capture.</p>"
    total = sum(v["leaf"] + v["nonleaf"] for v in z.values())
    rows = [[lv, LEVEL_SIZE.get(int(lv), "?"), f"{v['leaf']:,}", f"{v['nonleaf']:,}",
             f"{(v['leaf'] + v['nonleaf']) / total:.1%}"] for lv, v in z.items()]
    return (f"<p>Source: {_e(summary['zaps_source'])}</p>"
            + _table(["level", "size per SPTE", "leaf", "non-leaf", "share"], rows, numeric={0, 2, 3, 4}))


def _page_tables_html(summary: dict[str, Any]) -> str:
    items = page_table_lines(summary)
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _figures_html(cap: Capture, threshold_ns: int) -> str:
    from tdptrace.oncall.plots import figures, png_bytes

    captions = {
        "zaps_by_level": "SPTE zaps per level, leaf and non-leaf (log scale).",
        "gap_distribution": f"Gaps between yield points; dashed line: the {fmt_ns(threshold_ns)} threshold.",
        "span_timeline": "Each zap span at the height of its longest hold; bar from start to end; below, the span "
                         "with the longest hold close up (its holds and yield points).",
        "retained_tables": "Non-leaf page tables kept with no children, over time; zap spans shaded.",
    }
    out = []
    for name, fig in figures(cap, threshold_ns).items():
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        out.append(f'<figure><img alt="{_e(name.replace("_", " "))}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{_e(captions[name])}</figcaption></figure>")
    return "".join(out)


def render_html(cap: Capture, threshold_ns: int, reports: list[KernelReport] | None = None,
                limits: dict[str, int] | None = None, guest_size: str | None = None) -> str:
    """The whole report as one HTML string."""
    summary = summarize(cap)
    try:
        t: Triage | None = triage(cap, threshold_ns, reports, limits=limits, guest_size=guest_size)
        why = None
    except MissingEvents as exc:
        t, why = None, exc.message
    meta = cap.meta
    name = cap.path.name
    kernel = (meta.kernel or {}).get("release") or "unknown kernel"
    src = meta.source or {}
    head = (f"<h1>tdptrace report: {_e(name)}</h1><div class='meta'>{_e(src.get('kind', '?'))} "
            f"{_e(src.get('format', ''))} capture, {_e(kernel)}, status {_e(meta.status)}, "
            f"lost events {summary['lost_events']}, threshold {_e(fmt_ns(threshold_ns))}</div>")
    parts = [head, _verdict_html(t, why)]
    if t is not None:
        from tdptrace.oncall.triage_text import limits_text, waiters_text

        era = (f"<br>Kernel {_e(t.kernel)} ({_e(t.era['era'])}): {_e(t.era['root_teardown'])}; "
               f"{_e(t.era['range_zap'])}." if t.era else "")
        waiters = (f"<br>Waiters: {_e(waiters_text(t.waiters.get('all')) or 'none')}" if t.waiters is not None
                   else "<br>Waiters: not recorded (record with --waiters to see who was blocked)")
        parts.append(f"<p class='meta'>Time base: {_e(t.time_base.get('text', ''))}; every time below and in the "
                     f"figures is on it.<br>{_e(limits_text(t.limits))}{era}{waiters}</p>")
        parts += ["<h2>Longest stretches holding mmu_lock without a yield</h2>", _stretches_html(t)]
        if reports is not None:
            parts += ["<h2>Kernel log</h2>", _reports_html(t)]
    parts += ["<h2>Zaps by level</h2>", _levels_html(summary), "<h2>Page tables</h2>", _page_tables_html(summary),
              "<h2>Figures</h2>", _figures_html(cap, threshold_ns),
              f"<h2>Zap spans ({len(summary['spans'])})</h2>", _spans_html(summary, threshold_ns)]
    notes = summary.get("notes", []) + (t.notes if t else [])
    if notes:
        parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in dict.fromkeys(notes)) + "</ul>"]
    parts.append(f"<p class='meta'>Written by tdptrace {_e(__version__)} on "
                 f"{_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>tdptrace report: {_e(name)}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>\n")
