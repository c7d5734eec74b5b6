"""What the lab needs from the host: its cache directory, Debian packages, and a checked subprocess runner.

The lab installs its own host packages on first use (as root, with apt), so a fresh machine needs nothing
beyond scripts/bootstrap.sh.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from tdptrace.errors import MissingCapability, TdpError

# Host packages the lab uses, with the command that proves each is there.
HOST_PACKAGES: dict[str, str] = {
    "qemu-system-x86": "qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
    "cpio": "cpio",
    "gcc": "gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
    "binutils": "objdump",
    "xz-utils": "xz",
    "zstd": "zstd",
}


def cache_dir() -> Path:
    """Where downloads and built images live: $TDPTRACE_LAB_CACHE, else ~/.cache/tdptrace/lab (never the repo)."""
    env = os.environ.get("TDPTRACE_LAB_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "tdptrace" / "lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _present(probe: str) -> bool:
    return Path(probe).exists() if probe.startswith("/") else shutil.which(probe) is not None


def missing_host_packages() -> list[str]:
    """Debian packages of HOST_PACKAGES that are not installed."""
    return [pkg for pkg, probe in HOST_PACKAGES.items() if not _present(probe)]


def ensure_host_packages() -> None:
    """Install the lab's host packages with apt if any is missing; fails with the names when it cannot."""
    missing = missing_host_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise MissingCapability(f"the lab needs Debian packages {' '.join(missing)}",
                                f"run as root once, or: sudo apt-get install {' '.join(missing)}")
    if shutil.which("apt-get") is None:
        raise MissingCapability(f"the lab needs Debian packages {' '.join(missing)} and there is no apt-get",
                                "the lab runs on Debian/Ubuntu hosts")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], what="apt-get update", env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        what=f"apt-get install {' '.join(missing)}", env=env)
    still = missing_host_packages()
    if still:
        raise MissingCapability(f"Debian packages still missing after apt-get install: {' '.join(still)}")


def run(cmd: Sequence[str], *, what: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float | None = 900, hint: str = "") -> str:
    """Run `cmd`, return its stdout; on failure raise TdpError naming `what` and the end of stderr."""
    try:
        p = subprocess.run(list(cmd), cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise MissingCapability(f"{what}: command not found: {cmd[0]}", hint) from exc
    except subprocess.TimeoutExpired as exc:
        raise TdpError(f"{what}: timed out after {timeout:.0f} s", hint) from exc
    if p.returncode != 0:
        tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
        raise TdpError(f"{what} failed (exit {p.returncode}): {tail}", hint)
    return p.stdout
