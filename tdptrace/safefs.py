"""Writing and removing files as root in directories other users can write to, without following their links.

Every operation goes through an open directory descriptor: names are resolved one component at a time with
O_NOFOLLOW, new files are created with O_EXCL under a random temporary name and renamed within the same
directory, and trees are removed entry by entry without ever following a link or leaving the tree. A
symbolic link on the way to an output is followed only when root or the caller owns it (another user's link
is refused), and an existing directory that is to be written into or replaced must belong to the caller and
be writable by nobody else. Files come out 0600 and directories 0700 whatever the umask.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from tdptrace.errors import BadInput

FILE_MODE = 0o600
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's own limit on links followed while resolving one path
_MAX_DEPTH = 16  # deepest tree remove_tree walks into (a capture is two levels deep)


class UnsafePath(BadInput):
    """A path another user could redirect: a link they own, a directory they own or can write to."""


def display(path: Path | str) -> str:
    """A path as shown in messages (callers escape control characters when printing)."""
    return str(path)


def untrusted_reason(st: os.stat_result) -> str | None:
    """Why a directory is not the caller's own private place to write in, or None when it is."""
    me = os.geteuid()
    if st.st_uid != me:
        return f"owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by other users"
    return None


def _resolve_dir(path: Path, links: list[int] | None = None) -> int:
    """A descriptor of directory `path`, following only links owned by root or the caller."""
    start = os.open("/" if path.is_absolute() else ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _walk(start, path, links if links is not None else [0])
    finally:
        os.close(start)


def _walk(base: int, path: Path, links: list[int]) -> int:
    """Descend from directory fd `base` along `path` (relative parts), one O_NOFOLLOW open per component."""
    fd = os.dup(base)
    try:
        for i, comp in enumerate(path.parts):
            if comp in ("/", "", "."):
                continue
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise
                where = Path(*path.parts[:i + 1])
                if st.st_uid not in (0, os.geteuid()):
                    raise UnsafePath(f"{display(where)} is a symbolic link owned by uid {st.st_uid}",
                                     "refusing to follow another user's link; give the real directory") from None
                links[0] += 1
                if links[0] > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(where)) from None
                target = Path(os.readlink(comp, dir_fd=fd))
                nfd = _resolve_dir(target, links) if target.is_absolute() else _walk(fd, target, links)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _os_message(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


@dataclass
class Dir:
    """An open directory: every name below is looked up relative to `fd`, never through a link."""

    fd: int
    path: Path

    # --- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, what: str = "directory") -> "Dir":
        """Open an existing directory by a path the user gave (links owned by root or the caller only)."""
        p = Path(path)
        try:
            fd = _resolve_dir(p)
        except UnsafePath:
            raise
        except FileNotFoundError:
            raise BadInput(f"{what} {display(p)} does not exist", "create it first or choose another -o") from None
        except NotADirectoryError:
            raise BadInput(f"{display(p)} is not a directory", "give a directory") from None
        except OSError as exc:
            raise BadInput(f"cannot open {what} {display(p)}: {_os_message(exc)}", "choose another -o") from None
        return cls(fd, p)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Dir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def fstat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def require_private(self, what: str) -> None:
        """Refuse to write into this directory unless it is the caller's and nobody else can write to it."""
        why = untrusted_reason(self.fstat())
        if why:
            raise UnsafePath(f"{what} {display(self.path)} is {why}",
                             "refusing to write there; choose a directory of your own (or a new name)")

    # --- entries -------------------------------------------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result | None:
        """The entry itself (a link is not followed), or None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def subdir(self, name: str) -> "Dir":
        """Open an existing sub-directory; a link in its place raises (ELOOP/ENOTDIR), never followed."""
        return Dir(os.open(name, _DIR_FLAGS, dir_fd=self.fd), self.path / name)

    def make_private_dir(self, name: str, *, exist_ok: bool = False) -> "Dir":
        """Create (or, with exist_ok, reuse) sub-directory `name` as the caller's own, mode 0700."""
        created = True
        try:
            os.mkdir(name, DIR_MODE, dir_fd=self.fd)
        except FileExistsError:
            if not exist_ok:
                raise
            created = False
        d = self.subdir(name)
        try:
            st = d.fstat()
            if created or st.st_uid == os.geteuid():
                os.fchmod(d.fd, DIR_MODE)
            d.require_private("directory")
        except BaseException:
            d.close()
            raise
        return d

    def read_bytes(self, name: str, limit: int = 64 << 20) -> bytes:
        """Read a regular file (not through a link), at most `limit` bytes."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", name)
            chunks, n = [], 0
            while n <= limit:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
                n += len(b)
            if n > limit:
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), name)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # --- writing -------------------------------------------------------------------------------------------
    def _new_temp(self, name: str) -> tuple[str, int]:
        for _ in range(100):
            tmp = f".{name[:200]}.{secrets.token_hex(6)}.tmp"
            try:
                return tmp, os.open(tmp, _NEW_FILE_FLAGS, FILE_MODE, dir_fd=self.fd)
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, "no free temporary name", name)

    def write_with(self, name: str, fill: Callable[[IO[bytes]], None], *, sync: bool = True) -> None:
        """Write `name` atomically: `fill` writes into a new 0600 file under a random name, then it is renamed
        over `name` within this directory (a link planted under `name` is replaced, never written through)."""
        tmp, fd = self._new_temp(name)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb", closefd=True) as f:
                fill(f)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except OSError:
                pass
            raise

    def write_bytes(self, name: str, data: bytes, *, sync: bool = True) -> None:
        self.write_with(name, lambda f: f.write(data), sync=sync)

    # --- removing ------------------------------------------------------------------------------------------
    def unlink(self, name: str, missing_ok: bool = True) -> None:
        """Remove a file or a link (the link itself, never its target)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_tree(self, name: str) -> None:
        """Remove sub-directory `name` and everything in it; links inside are removed, never followed, and the
        walk never crosses into another filesystem. A link or file named `name` is simply unlinked."""
        st = self.lstat(name)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.unlink(name)
            return
        self._remove_dir(name, st, self.fstat().st_dev, 0)

    def _remove_dir(self, name: str, st: os.stat_result, dev: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise OSError(errno.ELOOP, "directory tree too deep to remove", str(self.path / name))
        if st.st_dev != dev:
            raise OSError(errno.EXDEV, "refusing to remove across a mount point", str(self.path / name))
        sub = self.subdir(name)
        try:
            sst = sub.fstat()
            if (sst.st_dev, sst.st_ino) != (st.st_dev, st.st_ino):  # replaced between lstat and open
                raise OSError(errno.ESTALE, "directory changed while being removed", str(self.path / name))
            for entry in sub.names():
                est = sub.lstat(entry)
                if est is None:
                    continue
                if stat.S_ISDIR(est.st_mode):
                    sub._remove_dir(entry, est, dev, depth + 1)
                else:
                    sub.unlink(entry)
        finally:
            sub.close()
        os.rmdir(name, dir_fd=self.fd)

    def walk_files(self) -> Iterator[tuple["Dir", str, os.stat_result]]:
        """Every non-directory entry below (links included, as links), without following links."""
        for entry in self.names():
            st = self.lstat(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = self.subdir(entry)
                except OSError:
                    continue
                with sub:
                    yield from sub.walk_files()
            else:
                yield self, entry, st


def open_parent(path: str | Path) -> tuple[Dir, str]:
    """The directory that holds `path` (opened safely) and the last name, for creating or replacing it."""
    p = Path(path)
    name = p.name
    if name in ("", ".", ".."):
        raise BadInput(f"{display(p)} does not name a file or directory", "give a name, e.g. -o out.tdp")
    return Dir.open(p.parent, what="directory"), name


def write_file(path: str | Path, data: bytes) -> Path:
    """Write a whole file for a person (report, model) atomically, 0600, never through a planted link."""
    parent, name = open_parent(path)
    with parent:
        st = parent.lstat(name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{display(path)} is a directory", "give a file name")
        try:
            parent.write_bytes(name, data)
        except OSError as exc:
            raise BadInput(f"cannot write {display(path)}: {_os_message(exc)}", "choose another -o") from None
    return Path(path)


__all__ = ["DIR_MODE", "Dir", "FILE_MODE", "UnsafePath", "open_parent", "untrusted_reason", "write_file"]
