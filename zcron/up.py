"""`zcron up`: scheduler, worker and sink on loopback under one foreground supervisor.

Ctrl-C or SIGTERM stops them in order (scheduler, then worker so it can drain and deliver,
then sink). If any of them dies on its own, the others are stopped and `up` exits 1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import getpass
import logging
import os
import select
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from zcron.auth import CLI_KEY, write_keypair
from zcron.config import Config, dump_config, load_daemon_config
from zcron.daemon import Signals, notify, slots_option
from zcron.log import level_name, setup_logging
from zcron.statedir import hold

log = logging.getLogger(__name__)
ROLES = ("sink", "worker", "scheduler")  # start order; stopped in reverse
STOP_WAIT_S = {"scheduler": 10.0, "worker": 70.0, "sink": 10.0}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `up` itself is killed, so nothing is left orphaned."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_environment() -> dict[str, str]:
    """Our environment without systemd's notify and watchdog variables: only `up` talks to
    systemd (it refuses datagrams from other PIDs of the unit anyway)."""
    hidden = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    return {k: v for k, v in os.environ.items() if k not in hidden}


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


class Supervisor:
    """Start the three roles, wait on their exits and on signals, stop them in order."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.signals = Signals()
        self.children: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        for role in ROLES:
            argv = [sys.executable, "-m", "zcron", role, "-c", str(self.config_path)]
            self.children[role] = subprocess.Popen(
                [*argv, "--log-level", level_name()],
                process_group=0,  # Ctrl-C reaches only `up`, which stops them in order
                env=child_environment(),
                preexec_fn=_die_with_parent,
            )

    def wait(self) -> int:
        """Block until a signal or a child's exit; return the exit code of `up`."""
        poller = select.poll()
        pidfds = {os.pidfd_open(p.pid): role for role, p in self.children.items()}
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
            proc = self.children[role]
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if self.signals.hard_stop else signal.SIGTERM)
                try:
                    proc.wait(STOP_WAIT_S[role])
                except subprocess.TimeoutExpired:
                    log.error("%s did not stop in %.0fs: killing it", role, STOP_WAIT_S[role])
                    proc.kill()
                    proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM) and code == 0:
                code = 1
        return code


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
    supervisor = Supervisor(config_path)
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
