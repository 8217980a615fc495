"""Directory watch for schedule files: inotify through ctypes, else a cheap stat poll.

One inotify fd serves the whole life of the watch, so a poller that registered it never
holds a closed fd (a closed fd polls ready at once: a busy loop). On it are watched the
directory, its parent (to see it removed, renamed or created again, also as a symlink) and
the directory of every symlinked file's target (config management links files in; inotify
on the directory does not see their targets change). The watches are re-made after every
batch of events.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x002, 0x004, 0x008
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x040, 0x080, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_IGNORED = 0x400, 0x800, 0x8000
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
_SELF_EVENTS = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows
POLL_INTERVAL_S = 2.0

# What a watched directory's events matter for: None = every name, else these names.
Interest = frozenset[str] | None


class DirectoryWatch:
    """`fd` (or None) to poll for changes; `changed()` says whether anything happened.

    Without inotify `fd` is None and the caller calls `changed()` every POLL_INTERVAL_S:
    it compares names, sizes and mtimes (of symlink targets too).
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.fd: int | None = None
        self.snapshot = self._stat()
        self._libc = None
        self._watches: dict[int, Interest] = {}  # watch descriptor -> names that matter
        self._open_inotify()

    def _open_inotify(self) -> None:
        name = ctypes.util.find_library("c")
        if not name:
            return
        libc = ctypes.CDLL(name, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return
        self.fd, self._libc = fd, libc
        self._rewatch()
        if not self._watches:  # nothing could be watched: poll instead
            self.close()

    def _wanted(self) -> dict[str, Interest]:
        """Paths to watch now, each with the names in it whose events matter."""
        wanted: dict[str, Interest] = {}
        if os.path.isdir(self.directory):
            wanted[self.directory] = None
            for target in self._link_targets():
                _add(wanted, os.path.dirname(target), os.path.basename(target))
        child, parent = self.directory, os.path.dirname(self.directory)
        while not os.path.isdir(parent) and parent != child:
            child, parent = parent, os.path.dirname(parent)
        _add(wanted, parent, os.path.basename(child))
        return wanted

    def _link_targets(self) -> list[str]:
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        return [os.path.realpath(e.path) for e in entries if e.is_symlink()]

    def _rewatch(self) -> None:
        """Watch what `_wanted` says; drop the watches no longer wanted."""
        watches: dict[int, Interest] = {}
        for path, names in self._wanted().items():
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _MASK)
            if wd >= 0:
                previous = watches.get(wd, frozenset())
                watches[wd] = None if names is None or previous is None else previous | names
        for wd in set(self._watches) - set(watches):
            self._libc.inotify_rm_watch(self.fd, wd)
        self._watches = watches

    def _stat(self) -> tuple:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError:
            return ()
        stats = []
        for entry in entries:
            try:
                st = entry.stat()  # follows symlinks: a target's change shows
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
        return True

    def _drain_events(self) -> bool:
        if not self._read_events():
            return False
        self._rewatch()  # links, the directory itself or its parent may have changed
        self._read_events()  # the dropped watches' IN_IGNORED: leave the fd quiet
        return True

    def _read_events(self) -> bool:
        """Read every pending event; True when one touches the schedule files."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            if not data:
                return seen
            seen = self._relevant(data) or seen

    def _relevant(self, data: bytes) -> bool:
        """Whether a batch of events touches the schedule files."""
        relevant = False
        for offset in _event_offsets(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            if wd not in self._watches:
                continue  # a dropped watch's last events
            names = self._watches[wd]
            start = offset + _EVENT.size
            name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
            relevant |= names is None or name in names or bool(mask & _SELF_EVENTS)
        return relevant

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self._watches = {}


def _add(wanted: dict[str, Interest], path: str, name: str) -> None:
    if path in wanted and wanted[path] is None:
        return
    wanted[path] = wanted.get(path, frozenset()) | {name}


def _event_offsets(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset + _EVENT.size <= len(data):
        offsets.append(offset)
        offset += _EVENT.size + _EVENT.unpack_from(data, offset)[3]
    return offsets
