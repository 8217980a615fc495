"""A daemon's own state directory: owner-only, and held by one process at a time.

A second process on the same directory (a second `zcron up` here, a worker started twice
with one id) would share its spool, ledger or LMDB with the first and silently take its
place; it is refused instead, naming the pid that holds the directory (spec §7, Identity).
"""

from __future__ import annotations

import fcntl
import os

from zcron.errors import ZcronError

LOCK_NAME = "lock"


class DirectoryBusy(ZcronError):
    """Another live process holds the directory."""


def make_private(directory: str) -> None:
    """Create `directory` (and parents) owner-only; an existing one is left as it is
    unless others may write to it, which is refused (another user could plant files)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.islink(directory):
        raise ZcronError(f"{directory} is a symlink: give the real directory")
    if os.lstat(directory).st_mode & 0o022:
        raise ZcronError(f"{directory} is writable by others: chmod go-w {directory}")


def hold(directory: str, what: str, name: str = LOCK_NAME) -> int:
    """Lock `directory` (as `name`) for this process's life (the fd stays open);
    DirectoryBusy naming the holder's pid when another process has it."""
    make_private(directory)
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DirectoryBusy(
            f"{what} is already running here (pid {holder}, holding {directory}); "
            "stop it first, or give this one its own directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
