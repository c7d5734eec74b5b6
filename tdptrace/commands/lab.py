"""`tdptrace lab ...`: boot stock Debian kernels under QEMU (TCG, nested SVM + NPT) and trace a real TDP MMU."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

lab_app = typer.Typer(help="The lab: stock Debian kernels under QEMU with a real TDP MMU, traced with tracefs.",
                      no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")


@lab_app.command("run")
def run_cmd(
    kernel: Annotated[str, typer.Option("--kernel", "-k", help="Lab kernel: 5.10, 6.1 or 6.12.")] = "6.1",
    mib: Annotated[int, typer.Option("--mib", "-m", help="L2 guest memory in MiB (multiple of 4).")] = 128,
    thp: Annotated[bool, typer.Option("--thp/--4k", help="Back guest memory with 2 MiB pages (THP) or 4 KiB.")]
    = False,
    hog: Annotated[bool, typer.Option("--hog/--no-hog", help="CPU contention: a busy loop pinned with the "
                                      "workload to CPU 0, so that need_resched is set and zaps yield.")] = False,
    iters: Annotated[int, typer.Option("--iters", help="Repeat the five phases this many times.")] = 1,
    base_mib: Annotated[int, typer.Option("--base-mib", help="Guest-physical base of the memory in MiB (even); "
                                          "1024 - MIB/2 makes it straddle a 1 GiB boundary.")] = 0,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Run directory (default: the lab cache's "
                                                "runs/NAME-TIMESTAMP).")] = None,
    hook: Annotated[Optional[Path], typer.Option("--hook", help="Shell script run inside the guest alongside the "
                                                 "workload (gets SIGINT when it is done).")] = None,
    hook_settle: Annotated[float, typer.Option("--hook-settle", help="Seconds to give the hook before the "
                                               "workload starts.")] = 0.0,
    rootfs: Annotated[Optional[Path], typer.Option("--rootfs", help="Directory shared into the guest at "
                                                   "/rootfs (e.g. from `tdptrace lab rootfs`).")] = None,
    chroot_cmd: Annotated[Optional[str], typer.Option("--chroot-cmd", help="Command run inside the BCC rootfs "
                                                      "(built on first use) alongside the workload, e.g. "
                                                      "'tdptrace record -o /share/out/bcc.tdp'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record and summary as JSON.")] = False,
) -> None:
    """Run one scenario: populate, madvise half, touch again, delete memslot, close; print the summary."""
    from tdptrace.lab.run import run
    from tdptrace.lab.scenario import Scenario
    from tdptrace.oncall.summary_text import render

    sc = Scenario(kernel=kernel, mib=mib, thp=thp, hog=hog, iters=iters, base_mib=base_mib, hook=hook,
                  rootfs=rootfs, hook_settle_s=hook_settle, chroot_cmd=chroot_cmd)
    typer.echo(f"lab: {sc.name} (guest RAM {sc.guest_mib} MiB, trace buffer {sc.buffer_kb} KiB per CPU)", err=True)
    r = run(sc, out)
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps(asdict(r), indent=1, default=str))
        return
    render(r.summary)
    for k in r.kvmtouch:
        typer.echo("kvmtouch: " + " ".join(f"{a}={b}" for a, b in k.items()))
    t = r.timings
    typer.echo(f"kernel {r.release}: {t['events']} events, QEMU {t['qemu_s']:.1f} s, total {t['total_s']:.1f} s")
    typer.echo(f"capture: {r.capture}\ntrace:   {r.trace}\nconsole: {Path(r.out) / 'console.log'}")


@lab_app.command("kernels")
def kernels_cmd(
    fetch: Annotated[bool, typer.Option("--fetch", help="Download and unpack every lab kernel now.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Ask apt again which build each kernel is.")] = False,
) -> None:
    """List the lab's kernels and what the cache holds for each."""
    from rich.console import Console
    from rich.table import Table

    from tdptrace.lab import kernels
    from tdptrace.lab.host import cache_dir, ensure_host_packages

    if fetch or refresh:
        ensure_host_packages()
    table = Table("kernel", "release", "package version", "why it is in the lab")
    for name, src in kernels.KERNEL_SOURCES.items():
        pointer = cache_dir() / "kernels" / f"{name}.json"
        if fetch or refresh:
            k = kernels.fetch(name, refresh=refresh)
            release, version = k.release, k.version
        elif pointer.exists():
            info = json.loads(pointer.read_text())
            release, version = info["release"], info["version"]
        else:
            release, version = "(not fetched)", "-"
        table.add_row(name, release, version, src.why)
    Console().print(table)
    typer.echo(f"cache: {cache_dir()}")


@lab_app.command("probes")
def probes_cmd(
    kernel: Annotated[str, typer.Option("--kernel", "-k", help="Lab kernel: 5.10, 6.1 or 6.12.")] = "6.1",
) -> None:
    """Print the kprobe_events lines the lab writes on a kernel (resolved from its kallsyms), and exit."""
    from tdptrace.lab import kernels, run
    from tdptrace.lab.host import ensure_host_packages

    kernels.kernel_source(kernel)  # an unknown kernel fails here, before any package is installed
    ensure_host_packages()
    res = run.resolve_probes(kernels.fetch(kernel))
    typer.echo("\n".join(res.lines))
    typer.echo("# tracepoints: " + " ".join(f"kvmmmu/{t}" for t in res.tracepoints))
    for name, why in res.skipped.items():
        typer.echo(f"# not attached: {name}: {why}")


@lab_app.command("rootfs")
def rootfs_cmd(
    kernel: Annotated[str, typer.Option("--kernel", "-k", help="Lab kernel whose headers to install.")] = "6.1",
) -> None:
    """Build (or extend) the bookworm chroot with BCC, the kernel's headers and tdptrace, for --chroot-cmd."""
    from tdptrace.lab import kernels, rootfs
    from tdptrace.lab.host import ensure_host_packages
    from tdptrace.lab.run import source_tree

    kernels.kernel_source(kernel)  # an unknown kernel fails here, before any package is installed
    ensure_host_packages()
    typer.echo(str(rootfs.build(kernels.fetch(kernel), project=source_tree())))
