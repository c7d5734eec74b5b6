"""`tdptrace record` inside a lab guest, beside the lab's own tracefs capture of the same run, and the two
compared figure by figure.

The recorder is the wheel installed in the BCC rootfs (/opt/tdptrace, tdptrace/lab/rootfs.py), run through
the lab's chroot hook: it tells init.sh when it has attached (share/out/hook_ready), the workload starts
then, and it stops by itself once init.sh says the workload is done (share/out/workload_done).
"""
from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdptrace.capture.schema import ZAP_COUNT_COLUMNS
from tdptrace.errors import BadInput, TdpError

BACKENDS: tuple[str, ...] = ("bcc", "ftrace")
# What the lab decides itself: the capture's place, the backend, how it stops, what it prints.
RESERVED_ARGS: tuple[str, ...] = ("-o", "--output", "--backend", "-d", "--duration", "-q", "--quiet", "--json",
                                  "--force", "--ebpf", "--")
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_.,:=+/@%-]+$")
CAPTURE = "record.tdp"  # in share/out, then in the run directory
# Seconds the recorder may take to attach before the workload (TCG: about 90 s for BCC on 6.12), and to
# write its capture after it.
START_S = 900.0
FINISH_S = 300.0
# tracefs prints microseconds. The recorder's BPF probes and the lab's ftrace kprobes fire one after the
# other at the same points, so the two timestamps of one point differ by the time the first handler took;
# under TCG that is far from constant (the first run of a probe's code is translated first: up to ~1 ms seen
# on 6.12). The run itself measures it: the spread of (recorder - tracefs) over every point both captured.
CLOCK_RESOLUTION_NS = 1_000


def parse_record_args(text: str) -> tuple[str, ...]:
    """--record-args as argv words for `tdptrace record`; refuses what the lab sets itself and any word
    that is not a plain option or value (the words reach a shell inside the guest)."""
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise BadInput(f"--record-args {text!r}: {exc}", "give record options as you would type them") from None
    for w in words:
        opt = w.split("=", 1)[0]
        if opt in RESERVED_ARGS:
            raise BadInput(f"--record-args: {opt} is set by the lab", "leave out -o, --backend, -d, -q, --json, "
                           "--force and -- (the run directory keeps the capture)")
        if not _SAFE_ARG.match(w):
            raise BadInput(f"--record-args: {w!r} is not a plain option or value",
                           "use letters, digits and _ . , : = + / @ % - only")
    return words


def guest_command(backend: str, args: tuple[str, ...]) -> str:
    """The chroot command: record for the whole scenario, say when attached, stop when the workload is done."""
    if backend not in BACKENDS:
        raise BadInput(f"--record {backend!r} is unknown", f"use one of {', '.join(BACKENDS)}")
    words = ["tdptrace", "record", "-q", "--backend", backend, "-o", f"/share/out/{CAPTURE}", *args]
    wait = ("cat /proc/uptime > /share/out/hook_ready; "
            "until [ -e /share/out/workload_done ]; do sleep 0.2; done")
    return (f"cat /proc/uptime > /share/out/record_started; {' '.join(shlex.quote(w) for w in words)} "
            f"-- sh -c {shlex.quote(wait)}; echo $? > /share/out/record_status")


@dataclass
class RecorderCapture:
    """What the recorder left: its capture (moved into the run directory), exit status, start time."""

    capture: Path
    status: int
    start_s: float | None  # from the recorder's start to attached (guest uptime)


def _uptime(p: Path) -> float | None:
    try:
        return float(p.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def collect(share_out: Path, out: Path) -> RecorderCapture:
    """Move the recorder's capture out of the share; a recorder that failed is an error naming its log."""
    status_file = share_out / "record_status"
    status = int(status_file.read_text().strip() or -1) if status_file.exists() else -1
    src = share_out / CAPTURE
    log = share_out / "hook.log"
    if status != 0 or not src.is_dir():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
        last = next((ln for ln in reversed(lines) if not ln.startswith(("chroot command exit", "hook exit"))), "")
        raise TdpError(f"the recorder in the guest failed (exit status {status}: {last.strip()[:200]!r}; "
                       f"log: {log})", f"last lines: {lines[-3:]!r}")
    dst = out / CAPTURE
    shutil.rmtree(dst, ignore_errors=True)
    shutil.move(str(src), str(dst))
    t0, t1 = _uptime(share_out / "record_started"), _uptime(share_out / "hook_ready")
    return RecorderCapture(capture=dst, status=status,
                           start_s=round(t1 - t0, 2) if t0 is not None and t1 is not None else None)


def _ns(col: Any) -> np.ndarray:
    """A timestamp column as int64 with 0 where it is missing (a span still open, a yield not returned)."""
    return col.to_numpy(np.int64, na_value=0)


def _matched_points(ts, rs, ty, ry) -> list[np.ndarray]:
    """(recorder - tracefs) timestamps of every point both captured: entries and returns of the spans of
    each function both traced (matched in order), yield points and their returns (when both saw the same
    number). The two clocks differ by a constant; what varies around it is probe skew."""
    out = []
    for fn in set(ts["function"]) & set(rs["function"]):
        x = ts[ts["function"] == fn].sort_values("ts", kind="stable")
        y = rs[rs["function"] == fn].sort_values("ts", kind="stable")
        if len(x) == len(y):
            for col in ("ts", "end_ts"):
                a, b = _ns(x[col]), _ns(y[col])
                out.append((b - a)[(a > 0) & (b > 0)])
    if ty is not None and ry is not None and len(ty) == len(ry):
        x, y = ty.sort_values("ts", kind="stable"), ry.sort_values("ts", kind="stable")
        out.append(_ns(y["ts"]) - _ns(x["ts"]))
        a, b = _ns(x["ret_ts"]), _ns(y["ret_ts"])
        out.append((b - a)[(a > 0) & (b > 0)])
    return out


def probe_skew_ns(ts, rs, ty=None, ry=None) -> int:
    """How far the two captures' timestamps of one point stray from each other in this run: the spread of
    (recorder - tracefs) over every point both captured (0 when there is none)."""
    d = np.concatenate(_matched_points(ts, rs, ty, ry) or [np.zeros(0, np.int64)])
    return int(d.max() - d.min()) if len(d) else 0


def _gap_tolerance_ns(skew_ns: int, n: int) -> np.ndarray:
    """How far two measurements of one span's longest gap may be apart: a clock tick at each end of the gap
    and the probe skew measured in the run."""
    return np.full(n, 2 * CLOCK_RESOLUTION_NS + skew_ns, dtype=np.int64)


def _counts(v: Any) -> list:
    """Counts as plain ints, -1 where a capture could not count (e.g. zaps without an SPTE source)."""
    return v.fillna(-1).astype("int64").values.tolist()


def _table(capture: Any, name: str) -> Any:
    try:
        return getattr(capture, name)
    except (AttributeError, KeyError, FileNotFoundError):
        return None


def compare(tracefs_capture: Path, recorder_capture: Path) -> dict[str, Any]:
    """Both summaries and every figure side by side: zaps by level, page tables, lost events, and per zap
    function both traced: spans, zaps by level, yields, longest gap and retained tables after each span."""
    import tdptrace
    from tdptrace.metrics.summary import summarize

    t, r = tdptrace.open(tracefs_capture), tdptrace.open(recorder_capture)
    a, b = summarize(t), summarize(r)
    figures: list[dict[str, Any]] = []

    def check(what: str, x: Any, y: Any, same: bool | None = None, **extra: Any) -> None:
        figures.append({"figure": what, "tracefs": x, "recorder": y, "same": bool(x == y if same is None else same),
                        **extra})

    check("zaps by level", a["zaps_by_level"], b["zaps_by_level"])
    check("page tables allocated", a["page_tables"]["allocated"], b["page_tables"]["allocated"])
    check("page tables freed", a["page_tables"]["freed"], b["page_tables"]["freed"])
    check("lost events", a["lost_events"], b["lost_events"], same=a["lost_events"] == 0 and b["lost_events"] == 0)
    ts, rs = t.spans, r.spans
    skew = probe_skew_ns(ts, rs, _table(t, "yields"), _table(r, "yields"))
    fns_t, fns_r = set(ts["function"]), set(rs["function"])
    both = sorted(fns_t & fns_r)
    check("zap functions traced by both", sorted(fns_t), sorted(fns_r), same=bool(both))
    for fn in both:
        x = ts[ts["function"] == fn].sort_values("ts", kind="stable")
        y = rs[rs["function"] == fn].sort_values("ts", kind="stable")
        check(f"{fn}: spans", len(x), len(y))
        if len(x) != len(y):
            continue
        check(f"{fn}: zaps by level per span", _counts(x[ZAP_COUNT_COLUMNS]), _counts(y[ZAP_COUNT_COLUMNS]))
        check(f"{fn}: yields per span", _counts(x["yields"]), _counts(y["yields"]))
        check(f"{fn}: retained after each span", _counts(x["retained_after"]), _counts(y["retained_after"]))
        gx, gy = _ns(x["max_gap_ns"]), _ns(y["max_gap_ns"])
        tol = _gap_tolerance_ns(skew, len(gx))
        diff = np.abs(gx - gy)
        check(f"{fn}: longest gap per span (ns)", gx.tolist(), gy.tolist(), same=bool((diff <= tol).all()),
              tolerance_ns=tol.tolist(), largest_difference_ns=int(diff.max()) if len(diff) else 0)
    agree = all(f["same"] for f in figures)
    return {"agree": agree, "figures": figures, "probe_skew_ns": skew, "only_tracefs": sorted(fns_t - fns_r),
            "only_recorder": sorted(fns_r - fns_t), "tracefs_summary": a, "recorder_summary": b}
