"""Boot a lab kernel under QEMU's emulator (TCG) with an AMD CPU that has SVM and nested paging."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tdptrace.errors import MissingCapability, TdpError

QEMU = "qemu-system-x86_64"
# One host thread runs both vCPUs (TCG thread=single): with thread=multi, 6.12 sometimes oopsed ("Oops: int3"
# in __schedule) while ftrace patched kernel text with int3 as the tracing was switched on - cross-vCPU code
# modification under MTTCG - and the lab's workload keeps one vCPU busy at a time anyway (single was faster:
# 512 MiB with the hog on 6.12, 60 s against 93-239 s). TDPTRACE_LAB_TCG_THREAD=multi brings MTTCG back.
TCG_THREAD = os.environ.get("TDPTRACE_LAB_TCG_THREAD", "single")
# EPYC + svm + npt gives kvm_amd nested paging under TCG ("TCG doesn't support requested feature" warnings
# are harmless: nrips is missing, kvm_amd runs with nrips=0). `-cpu max` would enable 5-level paging.
CPU = "EPYC,+svm,+npt"
CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off"


@dataclass
class Boot:
    """What one QEMU run did: exit status, wall time, and where its console log is."""

    returncode: int
    seconds: float
    console: Path


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a console log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill(proc: subprocess.Popen) -> None:
    """End the QEMU we started (its own process group) and reap it."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def boot(vmlinuz: Path, initrd: Path, shares: dict[str, Path], *, mem_mib: int, console: Path,
         timeout_s: float, smp: int = 2) -> Boot:
    """Run QEMU until the guest powers off; the console goes to `console`. Kills it after `timeout_s`."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise MissingCapability(f"{QEMU} not found", "apt-get install qemu-system-x86")
    cmd = [qemu, "-accel", f"tcg,thread={TCG_THREAD}", "-cpu", CPU, "-smp", str(smp), "-m", f"{mem_mib}M",
           "-display", "none", "-no-reboot", "-monitor", "none", "-serial", "stdio", "-nodefaults",
           "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", CMDLINE]
    for tag, path in shares.items():
        cmd += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,id={tag}"]
    console.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(console, "wb") as out:
        out.write(("# " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise TdpError(f"the guest did not power off within {timeout_s:.0f} s (console: {console})",
                           f"last console lines: {tail(console, 5)!r}") from None
        except BaseException:
            _kill(proc)
            raise
    return Boot(returncode=rc, seconds=time.monotonic() - t0, console=console)
