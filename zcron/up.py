"""`zcron up`: scheduler, worker and sink on loopback under one foreground supervisor.

Ctrl-C or SIGTERM stops them in order (scheduler, then worker so it can drain and deliver,
then sink). If any of them dies on its own, the others are stopped and `up` exits 1.

`up` is a fork server. It imports every role's modules once (zmq, msgpack, lmdb,
prometheus_client, zcron's own), takes them out of the collector's reach (gc.freeze) and
forks the three roles; each runs what `python -m zcron ROLE -c FILE --log-level L` would.
The imported pages stay shared until a child writes them. Idle with `--slots 2` and one
per-second job, PSS in all went from 67 MiB (up 13.1, scheduler 15.5, worker 13.9,
sink 19.0, the worker's two spawners 2.7 + 2.6) to 47-48 MiB (up 10, scheduler 11,
worker 10, sink 10.5, spawners unchanged); the peak with 100 jobs/s from 75 to 56 MiB.
The 6-7 MiB each child still has of its own are mostly shared pages it wrote to:
CPython 3.11 writes the reference count of every object it touches. Forking a process
with ZeroMQ's threads is unsafe: `up` creates no context before its forks and refuses to
fork when a second thread runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import getpass
import importlib
import logging
import os
import select
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from zcron.auth import CLI_KEY, write_keypair
from zcron.config import Config, dump_config, load_daemon_config
from zcron.daemon import Signals, notify, slots_option
from zcron.errors import ZcronError
from zcron.log import level_name, setup_logging
from zcron.statedir import hold

log = logging.getLogger(__name__)
ROLES = ("sink", "worker", "scheduler")  # start order; stopped in reverse
STOP_WAIT_S = {"scheduler": 10.0, "worker": 70.0, "sink": 10.0}
# Only `up` talks to systemd (which refuses datagrams from other PIDs of the unit anyway)
HIDDEN_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
UP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # the ones Signals handles
# What the roles import only once running (net.incarnation, the sink's HTTP server, LMDB's
# open): imported in each child, they were private to it; imported here, they are shared.
LAZY_IMPORTS = ("secrets", "encodings.idna", "lmdb._envid")
_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15
_libc = ctypes.CDLL(None, use_errno=True)  # prctl is in the libc we are linked with


def effective_config(args: dict) -> Config:
    """The configuration file (or defaults) with `up`'s command-line options applied."""
    config = load_daemon_config(args, up_fallback=False)  # never our own previous output
    data = args.get("--data")
    if data:
        config = config.with_overrides("scheduler", state=f"{data}/scheduler")
        config = config.with_overrides("worker", spool=f"{data}/worker")
        config = config.with_overrides("sink", data=f"{data}/sink")
    config = config.with_overrides("scheduler", schedules=args.get("--schedules"))
    config = config.with_overrides("worker", slots=slots_option(args))
    return config.with_overrides("sink", http=args.get("--http"))


def preload() -> None:
    """Import every role's module, and with them zmq, msgpack, lmdb and prometheus_client,
    here and once: the forked children then share those pages instead of each importing
    its own copy. Then freeze them: without it, a full collection in a child wrote to
    8.0 MiB of shared pages (0.8 MiB with it)."""
    for role in ROLES:
        importlib.import_module(f"zcron.{role}")
    for module in LAZY_IMPORTS:
        with contextlib.suppress(ImportError):  # only a saving, if a library moved one
            importlib.import_module(module)
    check_single_threaded()
    gc.collect()  # the garbage of our start-up is freed, not frozen
    gc.freeze()
    # glibc's: the 2 MiB of heap our start-up freed go back, not into every child's PSS
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def check_single_threaded() -> None:
    """Refuse to fork a process that runs a second thread (a ZeroMQ context's I/O threads,
    say): the child would get a copy of its memory and its locks, but not the thread."""
    threads = os.listdir("/proc/self/task")
    if len(threads) != 1:
        raise ZcronError(f"zcron up runs {len(threads)} threads before starting its roles; "
                         "importing a role must not start any")  # fmt: skip


class UpSignals(Signals):
    """Signals that a forked child can let go of."""

    def close(self) -> None:
        """Close the wake-up socket pair (in a child: it must not wake `up`'s poll)."""
        self._reader.close()
        self._writer.close()


class Child:
    """One forked role process: its pid, a pidfd to wait on, and its exit code once reaped
    (Popen's convention: -N when signal N ended it)."""

    def __init__(self, role: str, pid: int) -> None:
        self.role, self.pid = role, pid
        self.pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(0)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Reap the process once it has exited; None when it still runs after `timeout_s`."""
        if self.returncode is None and select.select([self.pidfd], [], [], timeout_s)[0]:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:  # not reaped: the pid is still this process's
            signal.pidfd_send_signal(self.pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Supervisor:
    """Start the three roles, wait on their exits and on signals, stop them in order.

    Create it before `signals.install()`: it notes the signal dispositions `up` was
    started with, which each child gets back before its role installs its own."""

    def __init__(self, config_path: Path, private_fds: Sequence[int] = ()) -> None:
        self.config_path, self.pid = config_path, os.getpid()
        self.private_fds = tuple(private_fds)  # fds of `up` alone (its lock), closed in children
        self.dispositions = {s: signal.getsignal(s) or signal.SIG_DFL for s in UP_SIGNALS}
        self.signals = UpSignals()
        self.children: dict[str, Child] = {}

    def start(self) -> None:
        preload()
        for role in ROLES:
            self.children[role] = self.fork(role)

    def fork(self, role: str) -> Child:
        """Fork a child that runs `role`; signals wait (blocked) until its dispositions are
        back to ours or to the child's, so neither runs the other's handler."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, UP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self.run_child(role, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return Child(role, pid)

    def run_child(self, role: str, mask: set[int]) -> NoReturn:
        """In the child: become the process `python -m zcron ROLE -c FILE --log-level L`
        would be, run it, and exit with its code (never back into `up`'s frames)."""
        code = 1
        try:
            options = {"--config": str(self.config_path), "--log-level": level_name()}
            self.leave_up(mask)
            argv = [role, "-c", options["--config"], "--log-level", options["--log-level"]]
            name_process(role, argv[1:])
            sys.argv[1:] = argv
            # cli's dispatch, not cli.main: parsing again with docopt wrote to 1.5 MiB of
            # shared pages per child. Roles read options with args.get(): the others are
            # None, as docopt leaves them.
            from zcron.cli import _dispatch

            code = _dispatch(role, options)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)

    def leave_up(self, mask: set[int]) -> None:
        """What Popen gave the children: their own process group (Ctrl-C reaches only `up`,
        which stops them in order), SIGTERM when `up` dies, no fds of `up`'s, no systemd
        variables; and what a fresh interpreter has: our start-up signal dispositions, no
        wake-up fd, no log handlers (the role sets up its own)."""
        os.setpgid(0, 0)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != self.pid:  # `up` died before the prctl: no signal will come
            os._exit(1)
        for signum, handler in self.dispositions.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.signals.close()
        for fd in [*self.private_fds, *(c.pidfd for c in self.children.values())]:
            os.close(fd)
        for name in HIDDEN_ENV:
            os.environ.pop(name, None)
        logging.getLogger().handlers.clear()

    def wait(self) -> int:
        """Block until a signal or a child's exit; return the exit code of `up`."""
        poller = select.poll()
        pidfds = {c.pidfd: role for role, c in self.children.items()}
        for fd in [self.signals.fd, *pidfds]:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.signals.fd:
                    self.signals.drain()
                    if self.signals.stopping:
                        return self.stop(0)
                    if self.signals.reload:
                        self.signals.reload = False
                        self.children["scheduler"].send_signal(signal.SIGHUP)
                elif fd in pidfds:
                    role = pidfds[fd]
                    code = self.children[role].wait()
                    log.error("%s exited with %s; stopping the others", role, code)
                    return self.stop(1)

    def stop(self, code: int) -> int:
        notify("STOPPING=1")
        for role in reversed(ROLES):
            child = self.children[role]
            if child.poll() is None:
                child.send_signal(signal.SIGKILL if self.signals.hard_stop else signal.SIGTERM)
                if child.wait(STOP_WAIT_S[role]) is None:
                    log.error("%s did not stop in %.0fs: killing it", role, STOP_WAIT_S[role])
                    child.kill()
                    child.wait()
            if child.returncode not in (0, -signal.SIGTERM) and code == 0:
                code = 1
        return code


def name_process(role: str, args: list[str]) -> None:
    """Tell the roles apart in `ps`: /proc/PID/comm is `zcron-ROLE`, and the command line
    (/proc/PID/cmdline, where tools look for the role) the one `up` gave them before it
    forked them, `... zcron ROLE -c FILE ...`, in as many words as fit in `up`'s own."""
    _libc.prctl(_PR_SET_NAME, f"zcron-{role}".encode()[:15])
    start, size = argv_area()
    if not size:
        return
    words = ctypes.string_at(start, size).split(b"\0")[:-1]
    prefix = words[: len(words) - len(sys.argv) + 1]  # the interpreter and `-m zcron`
    ours = [role.encode(), *map(os.fsencode, args)]
    for line in ([*prefix, *ours], [*prefix, *ours[:3]], [*prefix, ours[0]], [b"zcron", ours[0]]):
        text = b"\0".join(line) + b"\0"
        if len(text) <= size:
            ctypes.memmove(start, text.ljust(size, b"\0"), size)
            return


def argv_area() -> tuple[int, int]:
    """Where the kernel finds this process's command line (arg_start, its size), or (0, 0)
    unless the memory there holds exactly what /proc/self/cmdline reads."""
    try:
        fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
        cmdline = Path("/proc/self/cmdline").read_bytes()
    except (OSError, IndexError, ValueError):
        return 0, 0
    if not start or end - start != len(cmdline) or ctypes.string_at(start, end - start) != cmdline:
        return 0, 0
    return start, end - start


def own_keys(config: Config, data_root: Path) -> Config:
    """Secure by default (spec §7): without `[cluster] keys`, `up` makes a key pair for
    each of its processes and for its command line under DATA/keys (owner-only) on first
    start, and lets that client key run commands as the user who started `up` only."""
    if config.cluster.keys or config.cluster.insecure:
        return config
    keys_dir = (data_root / "keys").resolve()
    names = [*config.cluster.schedulers, "sink", config.worker.id, CLI_KEY]
    made = [n for n in names if not (keys_dir / f"{n}.key_secret").exists()]
    for name in made:
        write_keypair(str(keys_dir), name)
    if made:
        log.info("made keys for %s in %s", ", ".join(made), keys_dir)
    clients = {CLI_KEY: (getpass.getuser(),), **config.clients}
    return replace(config, cluster=replace(config.cluster, keys=str(keys_dir)), clients=clients)


def write_private(path: Path, text: str) -> None:
    """Write an owner-only file by a fresh name and rename it over `path`: a symlink
    planted at `path` is replaced, never followed."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, path)


def cmd_up(args: dict) -> int:
    config = effective_config(args)
    setup_logging("zcron-up")
    data_root = Path(config.scheduler.state).parent
    lock = hold(str(data_root), "zcron up")  # held until we exit: a second `up` is refused
    config = own_keys(config, data_root)
    config_path = data_root / "zcron-up.conf"
    write_private(config_path, dump_config(config))
    supervisor = Supervisor(config_path, private_fds=[lock])
    supervisor.signals.install()
    supervisor.start()
    http = config.sink.http
    log.info(
        "schedules %s; dashboard http://%s/  metrics http://%s/metrics  (Ctrl-C stops)",
        config.scheduler.schedules,
        http,
        http,
    )
    notify("READY=1")
    try:
        return supervisor.wait()
    finally:
        os.close(lock)
