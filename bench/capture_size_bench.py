"""Capture size benchmark: bytes per event of a tdptrace capture beside the tracefs text and a trace-cmd .dat
of the same run.

As root, two recorders watch one `tdptrace exercise` at once: `tdptrace record --sptes` (the capture) and a
private tracefs instance whose buffer becomes both the text (its `trace` file) and the .dat (`trace-cmd
extract -B INSTANCE`: `trace-cmd record` cannot run where /proc/sys/kernel/ftrace_enabled is read-only, as on
Firecracker VMs; extract writes the same trace.dat format from the same ring buffer).
Each artefact is divided by the events it holds; the tracefs text is also imported. Hosts without a TDP MMU
(tdp_mmu=N, such as the Firecracker CI VMs) produce few events there, so fixed per-file overhead dominates:
the shared reference trace (800k real SPTE events from the lab) is therefore always measured too, its text
beside its imported capture. Aim: a capture at most 1/10 of the text and smaller than the .dat.
Run: sudo .venv/bin/python bench/capture_size_bench.py [--mib 256] [--json]
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "k61-512m-hog.trace.txt.xz"
TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]
TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("kvm_tdp_mmu_spte_changed", "kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast",
          "kvm_mmu_split_huge_page")


def du(path: Path) -> int:
    """Bytes of a file, or of every file below a directory."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def text_events(path: Path) -> int:
    """Event lines of tracefs or trace-cmd report text (comments and headers excluded)."""
    with path.open(errors="replace") as f:
        return sum(1 for ln in f if ": kvm_" in ln and not ln.startswith("#"))


def capture_events(path: Path) -> int:
    counts = json.loads((path / "meta.json").read_text())["events"]["counts"]
    return sum(int(v) for k, v in counts.items() if k.startswith("kvm_"))


def _wait_attached(cap: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mp = cap / "meta.json"
        try:
            if json.loads(mp.read_text())["probes"]["attached"]:
                return
        except (OSError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"record ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    raise SystemExit("record did not attach its probes in time")


def live_run(d: Path, mib: int) -> dict:
    """One exercise seen by tdptrace record and a tracefs instance (text, then .dat) at once."""
    cap, dat, text = d / "live.tdp", d / "trace.dat", d / "trace.txt"
    rec = subprocess.Popen(TDPTRACE + ["record", "-q", "--sptes", "--backend", "bcc", "-o", str(cap)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    inst = TRACEFS / "instances" / f"tdptrace-size-{os.getpid()}"
    try:
        _wait_attached(cap, rec)
        inst.mkdir()
        (inst / "buffer_size_kb").write_text("65536")
        for e in EVENTS:
            if (inst / "events/kvmmmu" / e).is_dir():
                (inst / "events/kvmmmu" / e / "enable").write_text("1")
        subprocess.run(TDPTRACE + ["exercise", "--mib", str(mib), "--json"], check=True, capture_output=True,
                       timeout=600)
        time.sleep(1.5)  # let every recorder drain
        (inst / "tracing_on").write_text("0")
        text.write_bytes((inst / "trace").read_bytes())  # reading `trace` leaves the buffer for extract
        subprocess.run(["trace-cmd", "extract", "-B", inst.name, "-o", str(dat)], check=True, capture_output=True)
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(120)
        if inst.is_dir():  # extract removes the instance it read; make sure of it
            (inst / "events/enable").write_text("0")
            inst.rmdir()
    report = d / "report.txt"
    with report.open("w") as f:
        subprocess.run(["trace-cmd", "report", "-i", str(dat)], stdout=f, stderr=subprocess.DEVNULL, check=True)
    imported = d / "imported.tdp"
    subprocess.run(TDPTRACE + ["import", str(text), "-o", str(imported), "--kernel", os.uname().release],
                   check=True, capture_output=True)
    return {
        "source": f"tdptrace exercise --mib {mib}, recorded by tdptrace and a tracefs instance at once",
        "capture": {"bytes": du(cap), "events": capture_events(cap)},
        "imported": {"bytes": du(imported), "events": capture_events(imported)},
        "text": {"bytes": du(text), "events": text_events(text)},
        "dat": {"bytes": du(dat), "events": text_events(report)},
    }


def reference_run(d: Path) -> dict:
    """Not root: the shared reference trace's text beside its imported capture."""
    text = d / "trace.txt"
    text.write_bytes(lzma.decompress(REFERENCE.read_bytes()))
    imported = d / "imported.tdp"
    subprocess.run(TDPTRACE + ["import", str(text), "-o", str(imported), "--kernel", "6.1.0-56-amd64"],
                   check=True, capture_output=True)
    return {"source": f"{REFERENCE.name} (the lab, 6.1, 512 MiB; no .dat of it exists)",
            "imported": {"bytes": du(imported), "events": capture_events(imported)},
            "text": {"bytes": du(text), "events": text_events(text)}}


def _per_event(res: dict) -> dict:
    for k in ("capture", "imported", "text", "dat"):
        if k in res:
            res[k]["bytes_per_event"] = round(res[k]["bytes"] / max(res[k]["events"], 1), 2)
    ours = res.get("capture", res["imported"])["bytes_per_event"]
    res["text_vs_capture"] = round(res["text"]["bytes_per_event"] / ours, 2)
    if "dat" in res:
        res["dat_vs_capture"] = round(res["dat"]["bytes_per_event"] / ours, 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="exercise guest memory (live run)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    live = (os.geteuid() == 0 and shutil.which("trace-cmd") and Path("/dev/kvm").exists()
            and (TRACEFS / "events/kvmmmu").is_dir())
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="tdptrace-size-") as d:
        res["reference"] = _per_event(reference_run(Path(d)))
    if live:
        with tempfile.TemporaryDirectory(prefix="tdptrace-size-") as d:
            res["live"] = _per_event(live_run(Path(d), a.mib))
    else:
        res["live_skipped"] = "needs root, trace-cmd, /dev/kvm and kvmmmu tracepoints"
    if a.json:
        print(json.dumps(res))
        return
    for part in ("reference", "live"):
        if part not in res:
            print(f"live run skipped: {res['live_skipped']}")
            continue
        r = res[part]
        print(f"bytes per event, {r['source']}")
        for k, label in (("capture", "tdptrace record capture"), ("imported", "capture imported from the text"),
                         ("text", "tracefs text"), ("dat", "trace-cmd .dat")):
            if k in r:
                x = r[k]
                print(f"  {label:32}{x['bytes']:>13,} B {x['events']:>10,} events {x['bytes_per_event']:>9} B/event")
        print(f"  text / capture {r['text_vs_capture']}x (aim >= 10x)"
              + (f", .dat / capture {r['dat_vs_capture']}x (aim > 1x)" if "dat" in r else ""))


if __name__ == "__main__":
    main()
