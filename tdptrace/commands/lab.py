"""`tdptrace lab ...`: boot stock Debian kernels under QEMU (TCG, nested SVM + NPT) and trace a real TDP MMU."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tdptrace.options import HOUR, Group, command, duration_option, force_option, writer_json

KERNEL_HELP = ("Lab kernel (5.10, 6.1, 6.12, 6.17, 7.3) or a Debian kernel image package, "
               "linux-image-RELEASE[=VERSION][@SUITE].")

lab_app = typer.Typer(help="The lab: stock Debian kernels under QEMU with a real TDP MMU, traced with tracefs.",
                      no_args_is_help=True, rich_markup_mode=None, cls=Group)


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")


@command(lab_app, "run", "Boot a lab kernel, run the five phases, trace them; print the summary.",
         ("tdptrace lab run", "6.1 guest, 128 MiB, the five phases once; prints the summary"),
         ("tdptrace lab run -k 7.3 --mib 32 --contend 8", "7.3: a zap of 8 MiB while a second task zaps too"),
         ("tdptrace lab run -k linux-image-6.16.12+deb13-amd64@trixie-backports", "any Debian kernel image"))
def run_cmd(
    kernel: Annotated[str, typer.Option("--kernel", "-k", metavar="KERNEL", help=KERNEL_HELP)]
    = "6.1",
    mib: Annotated[int, typer.Option("--mib", "-m", metavar="N", help="L2 guest memory in MiB (multiple of 4).")]
    = 128,
    thp: Annotated[bool, typer.Option("--thp/--4k", help="Back guest memory with 2 MiB pages (THP) or 4 KiB.")]
    = False,
    hog: Annotated[bool, typer.Option("--hog/--no-hog", help="CPU contention: a busy loop pinned with the "
                                      "workload to CPU 0, so that need_resched is set and zaps yield.")] = False,
    iters: Annotated[int, typer.Option("--iters", metavar="N", help="Repeat the five phases this many times.")] = 1,
    contend: Annotated[int, typer.Option("--contend", metavar="MIB", help="Add phase 3b: zap MIB MiB while another "
                                         "task zaps too, so that the zap's mmu_lock has a waiter "
                                         "(lock contention; 0 = no such phase).")] = 0,
    base_mib: Annotated[int, typer.Option("--base-mib", metavar="N",
                                          help="Guest-physical base of the memory in MiB (even); "
                                          "1024 - MIB/2 makes it straddle a 1 GiB boundary.")] = 0,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", metavar="DIR", help="Run directory, created with its "
                                                "parents (default: the lab cache's runs/NAME-TIMESTAMP).")] = None,
    hook: Annotated[Optional[Path], typer.Option("--hook", metavar="FILE",
                                                 help="Shell script run inside the guest alongside the "
                                                 "workload (gets SIGINT when it is done).")] = None,
    hook_settle: Annotated[int, duration_option("--hook-settle", help="Time to give the hook before the workload "
                                                "starts.", hi=HOUR)] = "0",
    rootfs: Annotated[Optional[Path], typer.Option("--rootfs", metavar="DIR", help="Directory shared into the guest at "
                                                   "/rootfs (e.g. from `tdptrace lab rootfs`).")] = None,
    chroot_cmd: Annotated[Optional[str], typer.Option("--chroot-cmd", metavar="COMMAND",
                                                      help="Command run inside the BCC rootfs "
                                                      "(built on first use) alongside the workload; it gets "
                                                      "no usable SIGINT, so it must stop by itself (docs/lab.md, "
                                                      "Hooks and SIGINT).")] = None,
    record: Annotated[Optional[str], typer.Option("--record", metavar="BACKEND", help="Also run the installed "
                                                  "`tdptrace record --backend BACKEND` (bcc or ftrace) in the "
                                                  "guest for the whole run and compare its capture with "
                                                  "tracefs'; exit 1 when they disagree.")] = None,
    record_args: Annotated[str, typer.Option("--record-args", metavar="ARGS", help="More options for that "
                                             "`tdptrace record`, e.g. '--sptes'.")] = "",
    force: Annotated[bool, force_option("the results in an existing -o DIR (trace, capture, summary)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record and summary as JSON (with "
                                          "--record: both summaries and the comparison).")] = False,
) -> None:
    """Run one scenario: populate, madvise half, touch again, delete memslot, close; print the summary.

    With --record the recorder starts first (BCC: about 90 s under TCG) and the workload waits until it
    has attached.

    COST: a QEMU TCG boot of the lab kernel with a nested guest, about a minute on two cores.
    """
    from tdptrace.errors import BadInput
    from tdptrace.lab.run import run
    from tdptrace.lab.scenario import Scenario
    from tdptrace.oncall.summary_text import render

    from tdptrace.lab.recorder import parse_record_args

    sc = Scenario(kernel=kernel, mib=mib, thp=thp, hog=hog, iters=iters, base_mib=base_mib, hook=hook,
                  contend_mib=contend,
                  rootfs=rootfs, hook_settle_s=hook_settle / 1e9, chroot_cmd=chroot_cmd,
                  record=record, record_args=parse_record_args(record_args))
    if out is not None and not force and out.is_dir() and any(out.iterdir()):
        raise BadInput(f"{out} already holds files", "choose another -o or pass --force to replace its results")
    typer.echo(f"lab: {sc.name} (guest RAM {sc.guest_mib} MiB, trace buffer {sc.buffer_kb} KiB per CPU)", err=True)
    r = run(sc, out)
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps(writer_json([r.out], **asdict(r)), indent=1, default=str))
        _exit_if_disagreeing(r.record)
        return
    render(r.summary)
    for k in r.kvmtouch:
        typer.echo("kvmtouch: " + " ".join(f"{a}={b}" for a, b in k.items()))
    t = r.timings
    typer.echo(f"kernel {r.release}: {t['events']} events, QEMU {t['qemu_s']:.1f} s, total {t['total_s']:.1f} s")
    typer.echo(f"capture: {r.capture}\ntrace:   {r.trace}\nconsole: {Path(r.out) / 'console.log'}")
    if r.record:
        _print_comparison(r.record)
        _exit_if_disagreeing(r.record)


def _print_comparison(rec: dict) -> None:
    from tdptrace.textsafe import clean

    typer.echo(f"recorder ({rec['backend']}, attached {rec['start_s']} s after it started): {rec['capture']}")
    for f in rec["figures"]:
        extra = f" (within {max(f['tolerance_ns'])} ns)" if "tolerance_ns" in f and f["tolerance_ns"] else ""
        typer.echo(clean(f"{'same' if f['same'] else 'DIFFERENT':9} {f['figure']}: tracefs {f['tracefs']} | "
                         f"recorder {f['recorder']}{extra}"))
    for side in ("only_tracefs", "only_recorder"):
        if rec[side]:
            typer.echo(clean(f"{'info':9} traced by {side[5:]} only: {', '.join(rec[side])}"))
    typer.echo("verdict: " + ("the recorder agrees with tracefs" if rec["agree"] else "the recorder DISAGREES with "
                              "tracefs (see above)"))


def _exit_if_disagreeing(rec: dict | None) -> None:
    if rec is not None and not rec["agree"]:
        raise typer.Exit(code=1)


@command(lab_app, "kernels", "The lab's kernels, what the cache holds for each, and what Debian offers.",
         ("tdptrace lab kernels", "which kernels the lab boots and which are in the cache"),
         ("tdptrace lab kernels --fetch", "download and unpack them all now"),
         ("tdptrace lab kernels --available", "every amd64 kernel image the Debian suites offer, bootable or not"))
def kernels_cmd(
    fetch: Annotated[bool, typer.Option("--fetch", help="Download and unpack every lab kernel now.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Ask the archive again which build each kernel is.")]
    = False,
    available: Annotated[bool, typer.Option("--available", help="List the kernel images the Debian suites offer "
                                            "(bullseye to sid, security and backports) instead.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as one JSON object.")] = False,
) -> None:
    """List the lab's kernels and what the cache holds for each, or (--available) what the archive offers."""
    from tdptrace.lab import kernels
    from tdptrace.lab.host import cache_dir, ensure_host_packages

    if available:
        from tdptrace.lab import debian

        if refresh:
            debian.update(force=True)
        offered = debian.available()
        if as_json:
            typer.echo(json.dumps({"suites": list(debian.SUITES), "kernels": offered}, indent=1))
            return
        from tdptrace.textsafe import clean

        cols = ("suite", "package", "version", "packaging", "bootable")
        widths = [max([len(c)] + [len(r[c]) for r in offered]) for c in cols]
        for line in [dict(zip(cols, cols))] + offered:
            typer.echo(clean("  ".join(line[c].ljust(w) for c, w in zip(cols, widths)).rstrip()))
        typer.echo(f"{len(offered)} kernel images; boot one with: tdptrace lab run --kernel "
                   "linux-image-RELEASE[=VERSION][@SUITE]")
        return
    if fetch or refresh:
        ensure_host_packages()
    rows = []
    for name, lk in kernels.LAB_KERNELS.items():
        k = kernels.fetch(name, refresh=refresh) if fetch or refresh else kernels.cached(name)
        rows.append({"kernel": name, "spec": lk.spec, "release": k.release if k else None,
                     "version": k.version if k else None, "packaging": k.packaging if k else None,
                     "preemption": k.preemption if k else None, "why": lk.why})
    if as_json:
        typer.echo(json.dumps({"cache": str(cache_dir()), "kernels": rows}, indent=1))
        return
    _table(("kernel", "Debian package", "cached build", "preemption", "why it is in the lab"),
           [(r["kernel"], r["spec"], r["version"] or "(not fetched)", r["preemption"] or "-", r["why"])
            for r in rows])
    typer.echo(f"cache: {cache_dir()}")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*header)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


@command(lab_app, "probes", "The kprobe_events lines the lab writes for a kernel.",
         ("tdptrace lab probes", "the kprobe_events lines for the 6.1 lab kernel"),
         ("tdptrace lab probes -k 5.10 --json", "5.10's, with what was not attached and why, as JSON"))
def probes_cmd(
    kernel: Annotated[str, typer.Option("--kernel", "-k", metavar="KERNEL", help=KERNEL_HELP)]
    = "6.1",
    as_json: Annotated[bool, typer.Option("--json", help="Print the lines, tracepoints and skipped probes as one "
                                          "JSON object.")] = False,
) -> None:
    """Print the kprobe_events lines the lab writes on a kernel (resolved from its kallsyms), and exit."""
    from tdptrace.lab import kernels, run
    from tdptrace.lab.host import ensure_host_packages

    kernels.spec_of(kernel)  # an unknown kernel or a bad spec fails here, before any package is installed
    ensure_host_packages()
    k = kernels.fetch(kernel)
    res = run.resolve_probes(k)
    if as_json:
        typer.echo(json.dumps({"kernel": kernel, "release": k.release, "kprobe_events": res.lines,
                               "attached": res.attached, "tracepoints": res.tracepoints,
                               "not_attached": res.skipped, "arguments": res.arguments}, indent=1))
        return
    typer.echo("\n".join(res.lines))
    typer.echo("# tracepoints: " + " ".join(f"kvmmmu/{t}" for t in res.tracepoints))
    for name, a in res.arguments.items():
        if a.get("symbol"):
            typer.echo(f"# arguments of {name}: {a['source']}" + (f" ({a['reason']})" if a.get("reason") else ""))
    for name, why in res.skipped.items():
        typer.echo(f"# not attached: {name}: {why}")


@command(lab_app, "rootfs", "Build the chroot with BCC for lab run --chroot-cmd.",
         ("tdptrace lab rootfs", "the chroot with BCC and the 6.1 lab kernel's headers"),
         ("tdptrace lab rootfs -k 6.12 --json", "add the 6.12 kernel's headers; the directory as JSON"))
def rootfs_cmd(
    kernel: Annotated[str, typer.Option("--kernel", "-k", metavar="KERNEL", help="Lab kernel (or Debian "
                                        "spec) whose headers to install.")] = "6.1",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rootfs directory as one JSON object.")] = False,
) -> None:
    """Build (or extend) the bookworm chroot with BCC, the kernel's headers and tdptrace, for --chroot-cmd."""
    from tdptrace.lab import kernels, rootfs
    from tdptrace.lab.host import ensure_host_packages
    from tdptrace.lab.run import source_tree

    kernels.spec_of(kernel)  # an unknown kernel or a bad spec fails here, before any package is installed
    ensure_host_packages()
    root = rootfs.build(kernels.fetch(kernel), project=source_tree())
    if as_json:
        typer.echo(json.dumps(writer_json([root], rootfs=str(root), kernel=kernel), indent=1))
        return
    typer.echo(str(root))
