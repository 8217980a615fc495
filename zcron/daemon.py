"""What the daemons share: signal flags that wake the poller, dropped-message accounting,
and systemd notifications.

Every daemon has one lifecycle: `start()` (signal handlers, sockets, READY), `run()` (the
poll loop, until a stop is asked for; the exit code) and `close()` (STOPPING, sockets, its
Security object, its stores), called as `run_daemon` does.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from zcron.errors import ConfigError

log = logging.getLogger("zcron")
REJECT_LOG_EVERY_S = 10.0


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


class Daemon(Protocol):
    def start(self) -> None: ...
    def run(self) -> int: ...
    def close(self) -> None: ...


def run_daemon(daemon: Daemon) -> int:
    """start → run → close (close also after a failed start or a crash)."""
    try:
        daemon.start()
        return daemon.run()
    finally:
        daemon.close()


class Rejects:
    """Dropped messages: each one counted, at most one log line per interval, so a flood
    of bad frames is not a flood of log lines."""

    def __init__(
        self, monotonic: Callable[[], float], count: Callable[[str], None] | None = None,
        every_s: float = REJECT_LOG_EVERY_S,
    ) -> None:  # fmt: skip
        self.monotonic, self.count, self.every_s = monotonic, count, every_s
        self.total = 0
        self.next_log = -math.inf

    def __call__(self, why: str, reason: str = "rejected") -> None:
        self.total += 1
        if self.count is not None:
            self.count(reason)
        now = self.monotonic()
        if now >= self.next_log:
            self.next_log = now + self.every_s
            log.warning("%s (%d dropped so far)", why, self.total)


def slots_option(args: Mapping[str, object]) -> int | None:
    """`--slots N` (zcron worker, zcron up): a whole number >= 1, or None when not given."""
    text = args.get("--slots")
    if not text:
        return None
    if not (isinstance(text, str) and text.isascii() and text.isdigit()) or int(text) < 1:
        raise ConfigError(f"--slots: expected a whole number >= 1, got {text!r}")
    return int(text)


def poll_timeout_ms(deadline: float, now: float) -> int:
    """Whole milliseconds for a poll to wait until `deadline`, rounded up: rounded down, a
    loop woke before its deadline and spun on poll(0) until it came (~70 wake-ups/s idle)."""
    return max(0, math.ceil((deadline - now) * 1000))


def notify(state: str) -> None:
    """Send one sd_notify datagram (READY=1, STOPPING=1, ...) when run under systemd."""
    Notifier().send(state)


class Notifier:
    """sd_notify for one daemon: READY, RELOADING, STOPPING, STATUS and WATCHDOG pings.

    Every method does nothing when `$NOTIFY_SOCKET` is unset (not run by systemd). Pings
    go out at half of `$WATCHDOG_USEC`, only in the process `$WATCHDOG_PID` names (when
    set), so children that inherit the environment do not ping for their parent.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.interval_s = _watchdog_interval(env) if self.address else None
        self.next_ping: float | None = None

    def send(self, *lines: str) -> bool:
        """Send the lines as one datagram; whether it was sent."""
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto("\n".join(lines).encode(), self.address)
            except OSError:
                return False
        return True

    def ready(self, status: str | None = None) -> None:
        """Started (after the signal handlers are installed), or done reloading."""
        self.send("READY=1", *_status(status))

    def reloading(self, status: str = "reloading") -> None:
        """A reload began; follow with ready() when it is done."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", *_status(status))

    def stopping(self, status: str | None = None) -> None:
        """A graceful stop began."""
        self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> None:
        """One line for `systemctl status`."""
        self.send(*_status(text))

    def watchdog_interval(self) -> float | None:
        """Seconds between pings, or None when systemd does not watch this process."""
        return self.interval_s

    def watchdog_due(self, now: float) -> float:
        """When the next ping is due, on the caller's clock (inf without a watchdog)."""
        if self.interval_s is None:
            return math.inf
        return now if self.next_ping is None else self.next_ping

    def watchdog_wait_s(self, now: float) -> float:
        """Seconds from `now` until the next ping is due, for a poll timeout (inf: none)."""
        return max(0.0, self.watchdog_due(now) - now)

    def watchdog_if_due(self, now: float) -> None:
        """Ping the watchdog when due; `now` may be on any clock, used consistently."""
        if self.interval_s is not None and now >= self.watchdog_due(now):
            self.send("WATCHDOG=1")
            self.next_ping = now + self.interval_s


def _socket_address(address: str) -> str | None:
    if address.startswith("@"):  # the abstract namespace
        return "\0" + address[1:]
    return address or None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = int(env.get("WATCHDOG_PID") or os.getpid())
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2e6


def _status(text: str | None) -> list[str]:
    if not text:
        return []
    return [f"STATUS={' '.join(text.split())}"]  # one line: a newline would end the field
