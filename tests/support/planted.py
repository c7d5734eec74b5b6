"""Another user on the host: a sticky, world-writable directory like /tmp and a way to plant files in it as an
unprivileged user (a forked child that drops to uid/gid 'nobody'), while the test itself runs tdptrace as root."""
from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def other_user() -> tuple[int, int]:
    """uid and gid of an unprivileged account ('nobody'; created when the image has none)."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        import subprocess

        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "nobody"],
                       check=True, capture_output=True)
        pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "planting files as another user needs root (to switch to that user)"
    return None


def as_other_user(fn: Callable[[], None]) -> None:
    """Run fn in a child process as the unprivileged user; raise if it fails there."""
    uid, gid = other_user()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0o022)
            fn()
        except BaseException:
            os.write(w, traceback.format_exc().encode()[-4000:])
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"planting as uid {uid} failed:\n{err}")


@contextmanager
def sticky_shared_dir() -> Iterator[Path]:
    """A fresh directory directly under /tmp, mode 1777 like /tmp itself (pytest's tmp_path is 0700, which the
    other user could not enter)."""
    d = Path(tempfile.mkdtemp(prefix="tdptrace-shared-", dir="/tmp"))
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def victim(directory: Path, n: int = 3) -> dict[Path, bytes]:
    """Root's files that a planted link points at: their bytes, to check they are untouched afterwards."""
    directory.mkdir(mode=0o700, exist_ok=True)
    files = {}
    for i in range(n):
        p = directory / f"precious-{i}"
        p.write_bytes(f"root's data {i}\n".encode())
        files[p] = p.read_bytes()
    return files


def untouched(files: dict[Path, bytes]) -> bool:
    return all(p.is_file() and not p.is_symlink() and p.read_bytes() == b for p, b in files.items())
