"""Run a lab scenario end to end: kernel, initramfs, probe resolution, boot, lost-event check, import, summary.

Layout of a run directory (OUT):
  console.log      the guest's serial console (kept whatever happens)
  share/           the 9p share: params, kprobe_events, hook.sh in; share/out/* out (trace.txt, stats, ...)
  trace.txt.gz     the raw tracefs dump (moved out of share/out, gzip'd once imported), to count again with any tool
  NAME.tdp/        the capture imported from it
  summary.json     the capture's summary (docs/metrics.md contract)
  run.json         scenario, kernel, kprobe_events, kvmtouch figures, timings
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tdptrace.errors import MissingCapability, TdpError
from tdptrace.importers.tracefs import ENTRIES_RE
from tdptrace.kernel.tracefs import CONTENTION_FILTER
from tdptrace.kernel.resolve import package_btf
from tdptrace.lab import initramfs, kernels, probes, qemu
from tdptrace.lab.host import cache_dir, ensure_host_packages
from tdptrace.lab.scenario import Scenario
from tdptrace.metrics.summary import summarize

SHARE_TAG = "tdpshare"
ROOTFS_TAG = "tdproot"


@dataclass
class LabRun:
    """The outcome of one scenario run: where everything is, and the figures read from it."""

    scenario: dict[str, Any]
    release: str
    out: str
    trace: str
    capture: str
    summary: dict[str, Any]
    kvmtouch: list[dict[str, int]]
    kprobe_events: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    importer: dict[str, Any] = field(default_factory=dict)  # what the importer made of the dump
    kernel: dict[str, Any] = field(default_factory=dict)  # spec, suite, packaging, preemption model of the build
    probe_arguments: dict[str, Any] = field(default_factory=dict)  # per function: where its arguments came from
    record: dict[str, Any] | None = None  # --record: the recorder's capture, both summaries, the comparison

    def trace_bytes(self) -> bytes:
        """The raw tracefs text of the run (trace is kept gzip'd)."""
        opener = gzip.open if self.trace.endswith(".gz") else open
        with opener(self.trace, "rb") as f:
            return f.read()


def _boot(kernel: kernels.Kernel, out: Path, params: dict[str, str], *, mem_mib: int, timeout_s: float,
          files: dict[str, str] | None = None, rootfs: Path | None = None) -> tuple[Path, qemu.Boot]:
    """Boot `kernel` with a fresh share under `out`; return (share/out, boot); raise on a failed guest."""
    params = dict(params)
    share = out / "share"
    shutil.rmtree(share, ignore_errors=True)
    (share / "out").mkdir(parents=True)
    if rootfs is not None:
        params["ROOTFS"] = "1"
    (share / "params").write_text("".join(f"{k}='{v}'\n" for k, v in params.items()))
    for name, text in (files or {}).items():
        (share / name).write_text(text)
        (share / name).chmod(0o755)
    shares = {SHARE_TAG: share}
    if rootfs is not None:
        shares[ROOTFS_TAG] = rootfs
    initrd = initramfs.build(kernel)
    console = out / "console.log"
    b = qemu.boot(kernel.vmlinuz, initrd, shares, mem_mib=mem_mib, console=console, timeout_s=timeout_s)
    status_file = share / "out" / "status"
    status = status_file.read_text().strip() if status_file.exists() else ""
    if status != "ok":
        what = status.removeprefix("error: ") if status else "the guest ended without reporting (no status)"
        raise TdpError(f"lab guest {kernel.release}: {what} (console log: {console})",
                       f"last console lines: {qemu.tail(console, 4)!r}")
    return share / "out", b


def discover(kernel: kernels.Kernel, *, refresh: bool = False) -> dict[str, str]:
    """The symbol dumps the probes are resolved from (kallsyms, available_filter_functions, kvmmmu events),
    from one discovery boot of `kernel`, cached beside it."""
    cache = Path(kernel.dir) / "symbols"
    names = ("kallsyms.txt", "filter_functions.txt", "kvmmmu_events.txt", "release.txt", "kvm_params.txt")
    if refresh or not all((cache / n).exists() for n in names):
        era = probes.era_for(kernel.release)
        out, _ = _boot(kernel, Path(kernel.dir) / "discover", {"MODE": "discover"}, mem_mib=1024, timeout_s=180)
        cache.mkdir(exist_ok=True)
        for n in names:
            if not (out / n).exists():
                raise TdpError(f"discovery boot of {kernel.release} did not produce {n}")
            shutil.copy2(out / n, cache / n)
        params = (cache / "kvm_params.txt").read_text()
        if "tdp_mmu=Y" not in params:
            raise MissingCapability(f"kernel {kernel.release}: the TDP MMU is not enabled in the guest "
                                    f"({params.strip() or 'no kvm parameters'}; kvm params used: "
                                    f"'{era.kvm_params}')", "see the discovery boot's dmesg.txt")
    return {n: (cache / n).read_text() for n in names}


def resolve_probes(kernel: kernels.Kernel) -> probes.Resolution:
    """kprobe_events lines for `kernel`, resolved from its discovered symbols and the arguments its own BTF
    (kvm.ko's .BTF over vmlinuz) describes."""
    syms = discover(kernel)
    release = syms["release.txt"].strip()
    if release != kernel.release:
        raise TdpError(f"guest reports kernel {release}, expected {kernel.release}")
    kernel_btf = package_btf(kernel.vmlinuz, kernel.kvm_ko)
    return probes.resolve(release, syms["kallsyms.txt"], syms["filter_functions.txt"], syms["kvmmmu_events.txt"],
                          kernel_btf)


_STAT = re.compile(r"^(overrun|commit overrun|dropped events):\s*(\d+)", re.M)


def check_lost(out: Path, trace: Path) -> int:
    """Fail loudly if tracefs lost anything: per-CPU overrun/commit overrun/dropped events, the header's
    entries-in-buffer vs entries-written, and the number of event lines in the dump. Returns the event count."""
    problems = []
    for name in ("stats_before.txt", "stats_after.txt"):
        text = (out / name).read_text()
        cpu = "?"
        for line in text.splitlines():
            if line.startswith("== "):
                cpu = line[3:]
            m = _STAT.match(line)
            if m and int(m.group(2)):
                problems.append(f"{cpu} {m.group(1)}={m.group(2)} ({name})")
    data = trace.read_bytes()
    m = ENTRIES_RE.search(data[:4096].decode(errors="replace"))
    if not m:
        raise TdpError(f"{trace}: no tracefs header (entries-in-buffer/entries-written)")
    in_buf, written = int(m.group(1)), int(m.group(2))
    if in_buf != written:
        problems.append(f"entries-in-buffer {in_buf} != entries-written {written}")
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    header = data.count(b"\n#") + data.startswith(b"#")
    if lines - header != in_buf:
        problems.append(f"{lines - header} event lines in the dump, {in_buf} in the buffer")
    if problems:
        raise TdpError(f"tracefs lost events: {'; '.join(problems)}",
                       "raise the buffer (Scenario.buffer_kb) or trace less; the raw dump is kept at " + str(trace))
    return in_buf


def parse_kvmtouch(text: str) -> list[dict[str, int]]:
    """The machine lines 'KVMTOUCH k=v ...' that kvmtouch prints once per iteration."""
    return [{k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            for line in text.splitlines() if line.startswith("KVMTOUCH ")]


def source_tree() -> Path | None:
    """The project's source tree when tdptrace runs from one (editable install), to copy into the rootfs."""
    top = Path(__file__).resolve().parents[2]
    return top if (top / "pyproject.toml").exists() else None


def run(scenario: Scenario, out: Path | None = None) -> LabRun:
    """Run `scenario`; results under `out` (default: the cache's runs/NAME-TIMESTAMP)."""
    t0 = time.monotonic()
    ensure_host_packages()
    if out is None:
        out = cache_dir() / "runs" / f"{scenario.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kernel = kernels.fetch(scenario.kernel)
    initramfs.build(kernel)
    t_ready = time.monotonic()
    res = resolve_probes(kernel)
    t_probes = time.monotonic()
    params = {"MODE": "run", "MIB": str(scenario.mib), "THP": str(int(scenario.thp)),
              "HOG": str(int(scenario.hog)), "ITERS": str(scenario.iters), "BASE": str(scenario.base_mib),
              "BUF_KB": str(scenario.buffer_kb), "EVENTS": " ".join(res.tracepoints),
              "HOOK_SETTLE": str(scenario.settle_s), "CONTEND": str(scenario.contend_mib),
              "HOOK_READY": str(int(scenario.record is not None or scenario.hook_ready)),
              # A contended scenario also records who waited for mmu_lock (lock:contention_begin/end, 5.19+).
              "LOCK_EVENTS": str(int(scenario.contend_mib > 0)), "LOCK_FILTER": CONTENTION_FILTER}
    files = {"kprobe_events": "\n".join(res.lines) + "\n"}
    rootfs_dir = scenario.rootfs
    if scenario.hook is not None:
        if not Path(scenario.hook).is_file():
            raise TdpError(f"hook script {scenario.hook} not found")
        files["hook.sh"] = Path(scenario.hook).read_text()
    chroot_cmd = scenario.chroot_cmd
    if scenario.record:
        from tdptrace.lab import recorder

        chroot_cmd = recorder.guest_command(scenario.record, scenario.record_args)
    if chroot_cmd:
        from tdptrace.lab import rootfs

        if rootfs_dir is None:
            rootfs_dir = rootfs.build(kernel, project=source_tree(), headers=scenario.record != "ftrace")
        files["hook.sh"] = initramfs.lab_file("chroot-hook.sh").decode()
        files["chroot_cmd"] = chroot_cmd + "\n"
    share_out, b = _boot(kernel, out, params, mem_mib=scenario.guest_mib, timeout_s=scenario.timeout_s,
                         files=files, rootfs=rootfs_dir)
    t_boot = time.monotonic()
    # The captures of this run, each from what the guest left in share/out. tracefs is always there; a recorder
    # run inside the guest (BCC or ftrace, through --chroot-cmd) adds its own step beside this one.
    tracefs = collect_tracefs(share_out, out, scenario, kernel)
    recorded = None
    if scenario.record:
        rec = recorder.collect(share_out, out)
        recorded = {"backend": scenario.record, "args": list(scenario.record_args), "capture": str(rec.capture),
                    "start_s": rec.start_s, **recorder.compare(tracefs.capture, rec.capture)}
        (out / "record-compare.json").write_text(json.dumps(recorded, indent=1, default=str))
    t_end = time.monotonic()
    result = LabRun(
        scenario={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(scenario).items()},
        release=kernel.release, out=str(out), trace=str(tracefs.trace), capture=str(tracefs.capture),
        summary=tracefs.summary, kvmtouch=parse_kvmtouch((share_out / "kvmtouch.txt").read_text()),
        kprobe_events=(share_out / "kprobe_events_readback.txt").read_text().splitlines(),
        timings={"prepare_s": round(t_ready - t0, 2), "discover_s": round(t_probes - t_ready, 2),
                 "qemu_s": round(b.seconds, 2), "events": tracefs.events,
                 "import_summary_s": round(t_end - t_boot, 2), "total_s": round(t_end - t0, 2)},
        importer=tracefs.importer,
        kernel={"name": kernel.name, "spec": kernel.spec, "suite": kernel.suite, "package_version": kernel.version,
                "packaging": kernel.packaging, "preemption": kernel.preemption},
        probe_arguments=res.arguments,
        record=recorded)
    (out / "run.json").write_text(json.dumps({k: v for k, v in asdict(result).items() if k != "summary"},
                                             indent=1))
    return result


@dataclass
class TracefsCapture:
    """The lab's own capture of a run: the raw dump (gzip'd), the capture imported from it, its summary."""

    trace: Path
    capture: Path
    summary: dict[str, Any]
    events: int
    importer: dict[str, Any]


def compress_trace(trace: Path) -> Path:
    """trace.txt -> trace.txt.gz beside it (the plain text removed): the raw dump stays for other tools."""
    gz = trace.with_name(trace.name + ".gz")
    tmp = gz.with_name(gz.name + ".part")
    with open(trace, "rb") as src, gzip.open(tmp, "wb", compresslevel=4) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    tmp.replace(gz)
    trace.unlink()
    return gz


def collect_tracefs(share_out: Path, out: Path, scenario: Scenario, kernel: kernels.Kernel) -> TracefsCapture:
    """Move the guest's tracefs dump out of the share, check that nothing was lost, import it, summarize it,
    and keep the dump compressed beside the capture."""
    import tdptrace
    from tdptrace.importers import import_file

    trace = out / "trace.txt"
    shutil.move(share_out / "trace.txt", trace)
    events = check_lost(share_out, trace)
    capture = out / f"{scenario.name}.tdp"
    shutil.rmtree(capture, ignore_errors=True)
    imported = import_file(trace, capture, kernel_release=kernel.release)
    summary = summarize(tdptrace.open(capture))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    gz = compress_trace(trace)
    return TracefsCapture(trace=gz, capture=capture, summary=summary, events=events,
                          importer={"events": imported.events, "unparsed": imported.unparsed,
                                    "unparsed_example": imported.unparsed_example, "unknown": dict(imported.unknown)})
