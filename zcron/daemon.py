"""Signal handling shared by the daemons: handlers set flags and wake the poller."""

from __future__ import annotations

import os
import signal
import socket


class Signals:
    """TERM/INT = graceful stop (a second one = hard stop), HUP = reload.

    The handlers only set flags and write a byte to a socketpair whose read end is
    registered in the daemon's poller, so a stop does not wait for the next timeout.
    """

    def __init__(self) -> None:
        self.stopping = False
        self.hard_stop = False
        self.reload = False
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    @property
    def fd(self) -> int:
        """The read end to register in a zmq.Poller (POLLIN)."""
        return self._reader.fileno()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def drain(self) -> None:
        """Empty the wake-up socket after the poller reported it ready."""
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def wake(self) -> None:
        try:
            self._writer.send(b"!")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the poller is already woken

    def _on_stop(self, signum: int, frame: object) -> None:
        self.hard_stop = self.stopping
        self.stopping = True
        self.wake()

    def _on_reload(self, signum: int, frame: object) -> None:
        self.reload = True
        self.wake()


def notify(state: str) -> None:
    """Send one sd_notify datagram (READY=1, STOPPING=1, ...) when run under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            pass
