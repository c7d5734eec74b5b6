"""The BCC recorder inside the lab guest (a real TDP MMU) beside the lab's own tracefs capture of the same run.

Runs `tdptrace lab run --chroot-cmd 'tdptrace record ...'` (or reads an existing run directory) and compares
the two captures: zaps by level, page tables, and for every zap function both traced, span by span (in
order): zaps by level inside it, yield points, and retained non-leaf tables after it. Durations are compared
as ratios only (the two captures use different clocks and the probes cost time under TCG).
Run as root: .venv/bin/python analysis/live-recorder-lab/compare.py [--kernel 6.1] [--mib 128] [--hog]
             .venv/bin/python analysis/live-recorder-lab/compare.py --run-dir DIR   (compare only)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tdptrace
from tdptrace.capture.schema import ZAP_COUNT_COLUMNS
from tdptrace.metrics.summary import summarize

# Python starts slowly under TCG: the recorder needs about 7 minutes before it has attached, and minutes to
# write its last chunks once the workload is done (measured on a 2-core Firecracker host).
SETTLE_S = 450.0
FINISH_S = 600.0


def run_lab(kernel: str, mib: int, hog: bool, rootfs: Path | None = None) -> Path:
    from dataclasses import dataclass

    from tdptrace.lab.run import run
    from tdptrace.lab.scenario import Scenario

    @dataclass(frozen=True)
    class RecorderScenario(Scenario):
        """The lab scenario with time for the recorder to finish after the workload."""

        @property
        def timeout_s(self) -> float:
            return super().timeout_s + FINISH_S

    # The hook runs in the background of init.sh, so the SIGINT it is sent is ignored (POSIX: asynchronous lists
    # ignore SIGINT, and ignored signals cannot be trapped): record stops when kvmtouch has printed its summary.
    wait = "until grep -q KVMTOUCH /share/out/kvmtouch.txt 2>/dev/null; do sleep 1; done"
    sc = RecorderScenario(kernel=kernel, mib=mib, hog=hog, hook_settle_s=SETTLE_S, rootfs=rootfs,
                          chroot_cmd=f"exec tdptrace record -q -o /share/out/bcc.tdp -- sh -c '{wait}'")
    return Path(run(sc, out=Path(f"/tmp/tdptrace-lab-recorder-k{kernel}-{mib}m")).out)


def compare(run_dir: Path) -> bool:
    tfs = tdptrace.open(next(run_dir.glob("*.tdp")))
    bcc = tdptrace.open(run_dir / "share" / "out" / "bcc.tdp")
    a, b = summarize(tfs), summarize(bcc)
    ok = True

    def check(what: str, x, y) -> None:
        nonlocal ok
        same = x == y
        ok &= same
        print(f"{'same' if same else 'DIFFERENT':9} {what}: tracefs {x} | bcc {y}")

    check("zaps by level", a["zaps_by_level"], b["zaps_by_level"])
    check("page tables allocated/freed", (a["page_tables"]["allocated"], a["page_tables"]["freed"]),
          (b["page_tables"]["allocated"], b["page_tables"]["freed"]))
    check("lost events", a["lost_events"], b["lost_events"])
    ts, bs = tfs.spans, bcc.spans
    for fn in sorted(set(ts["function"]) & set(bs["function"])):
        x = ts[ts["function"] == fn].sort_values("ts")
        y = bs[bs["function"] == fn].sort_values("ts")
        check(f"{fn}: spans", len(x), len(y))
        if len(x) != len(y):
            continue
        check(f"{fn}: zaps by level per span", x[ZAP_COUNT_COLUMNS].astype("int64").values.tolist(),
              y[ZAP_COUNT_COLUMNS].astype("int64").values.tolist())
        check(f"{fn}: yields per span", x["yields"].tolist(), y["yields"].tolist())
        check(f"{fn}: retained after each span", x["retained_after"].tolist(), y["retained_after"].tolist())
        ratio = (y["duration_ns"].to_numpy(float) / x["duration_ns"].to_numpy(float)).round(2).tolist()
        print(f"{'info':9} {fn}: duration bcc/tracefs per span {ratio}")
    print("verdict:", "the recorder agrees with tracefs" if ok else "DIFFERENCES (see above)")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="6.1")
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--hog", action="store_true")
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--rootfs", type=Path, help="an already built lab rootfs (skips rebuilding it)")
    args = ap.parse_args()
    run_dir = args.run_dir or run_lab(args.kernel, args.mib, args.hog, args.rootfs)
    sys.exit(0 if compare(run_dir) else 1)


if __name__ == "__main__":
    main()
