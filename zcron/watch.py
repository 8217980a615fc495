"""Directory watch for schedule files: inotify through ctypes, else a cheap stat poll."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x002, 0x004, 0x008
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x040, 0x080, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF = 0x400, 0x800
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
POLL_INTERVAL_S = 2.0


class DirectoryWatch:
    """`fd` (or None) to poll for changes; `changed()` says whether anything happened.

    Without inotify (or when the directory is missing) `fd` is None and the caller calls
    `changed()` every POLL_INTERVAL_S: it compares names, sizes and mtimes.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.fd: int | None = None
        self.snapshot = self._stat()
        self._libc = None
        self._open_inotify()

    def _open_inotify(self) -> None:
        name = ctypes.util.find_library("c")
        if not name or not os.path.isdir(self.directory):
            return
        libc = ctypes.CDLL(name, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return
        if libc.inotify_add_watch(fd, os.fsencode(self.directory), _MASK) < 0:
            os.close(fd)
            return
        self.fd, self._libc = fd, libc

    def _stat(self) -> tuple:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError:
            return ()
        stats = []
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            stats.append((entry.name, st.st_size, st.st_mtime_ns))
        return tuple(stats)

    def changed(self) -> bool:
        """Consume pending events; True when the directory's contents may have changed."""
        if self.fd is not None:
            return self._drain_events()
        snapshot = self._stat()
        if snapshot == self.snapshot:
            return False
        self.snapshot = snapshot
        if self.fd is None:
            self._open_inotify()  # the directory may have appeared
        return True

    def _drain_events(self) -> bool:
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            if not data:
                return seen
            seen = True
            if self._watch_gone(data):
                os.close(self.fd)
                self.fd = None
                return True

    @staticmethod
    def _watch_gone(data: bytes) -> bool:
        offset = 0
        while offset + 16 <= len(data):
            _, mask, _, length = struct.unpack_from("iIII", data, offset)
            if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | 0x8000):  # 0x8000: IN_IGNORED
                return True
            offset += 16 + length
        return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
