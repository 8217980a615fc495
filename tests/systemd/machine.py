"""Booted systemd containers for the live tier: systemd-nspawn on an overlay of the cached
root file system, driven with `nsenter` (no machined here: PID 1 may not be systemd)."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from pathlib import Path

from tests import harness

# Each look into a machine is a process (nsenter systemctl ...): a few a second is plenty.
wait_until = functools.partial(harness.wait_until, every=0.2)

BOOT_TIMEOUT_S = 60
CGROUP_HIERARCHIES = ("systemd", "unified")
# A clean environment inside: the host's (PYTHONPATH, a venv on PATH) must not leak in.
ENV = [
    "env",
    "-i",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
]
SHOW = "ActiveState,SubState,Result,ExecMainStatus,ExecMainPID,NRestarts,StatusText"


class Machine:
    """One container: its overlay root, its nspawn process and its systemd's host PID."""

    def __init__(
        self, name: str, base: Path, workdir: Path, network: list[str], overlay: bool = True
    ):
        self.name, self.base, self.network, self.overlay = name, base, network, overlay
        self.upper, self.work, self.root = (workdir / d for d in ("upper", "work", "root"))
        if not overlay:
            self.root = base
        for d in (self.upper, self.work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "console.log"
        self.proc: subprocess.Popen | None = None
        self.pid = 0

    def mount(self) -> None:
        options = f"lowerdir={self.base},upperdir={self.upper},workdir={self.work}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            check=True,
            timeout=30,
        )

    def boot(self) -> None:
        """Start systemd in its own cgroup (nspawn needs one without machined) and wait
        until it has finished booting."""
        if self.overlay and not os.path.ismount(self.root):
            self.mount()
        cgroups = " ".join(str(self.cgroup(h)) for h in CGROUP_HIERARCHIES)
        nspawn = [
            "systemd-nspawn",
            "-b",
            "-D",
            str(self.root),
            "--register=no",
            "--keep-unit",
            "-M",
            self.name,
            "--console=passive",
            *self.network,
        ]
        script = (
            f"for g in {cgroups}; do mkdir -p $g && echo $BASHPID > $g/cgroup.procs; done; "
            f"exec {shlex.join(nspawn)}"
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", script], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.pid = wait_until(self.find_init, BOOT_TIMEOUT_S, f"{self.name}'s systemd")
        wait_until(self.booted, BOOT_TIMEOUT_S, f"{self.name} booted")

    def booted(self) -> bool:
        """Whether boot has finished (False while systemctl cannot reach PID 1 yet)."""
        state = self.sh("systemctl is-system-running --wait", timeout=BOOT_TIMEOUT_S)
        assert state.stdout.strip() != "maintenance", self.sh("systemctl --failed").stdout
        return state.stdout.strip() in ("running", "degraded")

    def find_init(self) -> int:
        """The host PID of the container's PID 1 (a descendant of nspawn whose NSpid is 1)."""
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"nspawn exited: {self.log.read_text()[-3000:]}")
        for pid in descendants(self.proc.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next(
                (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), []
            )
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if nspid[-1:] == ["1"] and len(nspid) > 1 and comm == "systemd":
                return pid
        return 0

    def sh(
        self, command: str, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run `command` with /bin/sh inside the container (all its namespaces)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *ENV, "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {command!r} exited {result.returncode}: "
                f"{result.stdout}{result.stderr}"
            )
        return result

    def popen(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["nsenter", "-t", str(self.pid), "-a", *ENV, "sh", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def write(self, path: str, text: str) -> None:
        """Write a file inside the machine (as root there)."""
        self.sh(f"cat > {path} <<'ZCRON_EOF'\n{text}ZCRON_EOF\n", check=True)

    def show(self, unit: str) -> dict[str, str]:
        """`systemctl show -p ActiveState,SubState,...` as a dict."""
        out = self.sh(f"systemctl show -p {SHOW} {unit}", check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *options: str) -> str:
        return self.sh(f"journalctl -u {unit} -o cat --no-pager {' '.join(options)}").stdout

    def poweroff(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.sh("systemctl poweroff --no-block")
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.poweroff()
        if self.overlay and os.path.ismount(self.root):
            subprocess.run(["umount", "-l", str(self.root)], timeout=30)
        for h in CGROUP_HIERARCHIES:
            remove_cgroup(self.cgroup(h))

    def cgroup(self, hierarchy: str) -> Path:
        """This container's own cgroup (the test's PID in it: two runs never share one)."""
        return Path(f"/sys/fs/cgroup/{hierarchy}/machine-{self.name}-{os.getpid()}")


def remove_cgroup(path: Path) -> None:
    """rmdir a cgroup and the ones systemd made below it, deepest first."""
    for below, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
        try:
            os.rmdir(below)
        except OSError:
            pass


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, nearest first."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop(0)
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        queue += [int(c) for c in children]
    return found


class Host(Machine):
    """The host's own systemd (PID 1 is systemd: a VM, a CI runner), driven with sudo."""

    def __init__(self) -> None:
        self.name, self.root, self.pid, self.proc = os.uname().nodename, Path("/"), 1, None

    def install(self, wheels: Path, commands: str) -> None:
        self.sh(f"rm -rf /var/tmp/zcron-wheels && cp -r {wheels} /var/tmp/zcron-wheels", check=True)
        self.sh(commands, timeout=300, check=True)

    def boot(self) -> None:
        pass

    def sh(
        self, command: str, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["sudo", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"host: {command!r} exited {result.returncode}: {result.stdout}{result.stderr}"
            )
        return result

    def popen(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["sudo", "-n", "sh", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def poweroff(self, timeout: float = 60) -> None:
        pass

    def remove(self) -> None:
        self.sh(
            "systemctl disable --now zcron.target zcron-scheduler.service "
            "zcron-worker@1.service zcron-sink.service"
        )
