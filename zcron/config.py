"""Cluster configuration: TOML file → frozen dataclasses with loopback defaults (spec §2).

Where the file is, and its reading and checking, are zcron.configfile's (the command line
uses that alone); here its tables become the dataclasses the daemons run with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from zcron.configfile import DEFAULT_PATH as DEFAULT_PATH
from zcron.configfile import (
    HEARTBEAT_S,
    PEER_TIMEOUT_S,
    SCHEDULERS,
    SINK_HTTP,
    config_path,
    read_config,
    read_file,
    scheduler_address,
)
from zcron.configfile import parse_duration as parse_duration
from zcron.errors import ConfigError


def default_schedules_dir() -> str:
    """`./etc/zcron.d` when it exists (a checkout), else the installed `/etc/zcron.d`."""
    return "etc/zcron.d" if os.path.isdir("etc/zcron.d") else "/etc/zcron.d"


@dataclass(frozen=True)
class ClusterConfig:
    """[cluster]: the schedulers, the sink, the keys and the timing they share."""

    schedulers: dict[str, str] = field(default_factory=lambda: dict(SCHEDULERS))
    sink: str = "tcp://127.0.0.1:7710"
    keys: str | None = None
    heartbeat: float = HEARTBEAT_S
    peer_timeout: float = PEER_TIMEOUT_S
    max_clock_skew: float = 0.5
    insecure: bool = False


@dataclass(frozen=True)
class SchedulerConfig:
    """[scheduler]: this scheduler's id, its schedule directory and state."""

    id: str = "a"
    schedules: str = field(default_factory=default_schedules_dir)
    state: str = ".zcron/scheduler"


@dataclass(frozen=True)
class WorkerConfig:
    """[worker]: this worker's id, pools, slots, spool and drain timeout."""

    id: str = field(default_factory=lambda: os.uname().nodename)  # gethostname(), no socket
    pool: tuple[str, ...] = ("default",)
    slots: int = 4
    spool: str = ".zcron/worker"
    drain_timeout: float = 60.0
    prefetch: int | None = None  # jobs taken beyond the free slots (None: max(slots, 100))


@dataclass(frozen=True)
class SinkConfig:
    """[sink]: the HTTP address, the data directory and what it keeps."""

    http: str = SINK_HTTP
    data: str = ".zcron/sink"
    retention: float = 14 * 86400.0
    job_labels: bool = True
    http_hosts: tuple[str, ...] = ()  # Host names HTTP answers besides its address and localhost


@dataclass(frozen=True)
class Config:
    """The whole configuration file. (Each class has a docstring: without one, @dataclass
    computes inspect.signature for it at import, ~0.5 ms of a daemon's start for the five.)"""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    # client key name -> the users its pushes and manual runs may run as (first = default)
    clients: dict[str, tuple[str, ...]] = field(default_factory=dict)
    path: str | None = None

    def scheduler_address(self, scheduler_id: str | None = None) -> str:
        """The address of one configured scheduler (this process's own by default)."""
        return scheduler_address(
            self.cluster.schedulers, scheduler_id or self.scheduler.id, self.path
        )

    def with_overrides(self, section: str, **values: Any) -> Config:
        """A copy with command-line values (those not None) replacing the file's."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        return replace(self, **{section: replace(getattr(self, section), **given)})


_SECTIONS = {
    "cluster": ClusterConfig,
    "scheduler": SchedulerConfig,
    "worker": WorkerConfig,
    "sink": SinkConfig,
}


def parse_config(text: str, where: str = "config") -> Config:
    """Parse TOML text into a Config; every unknown key or bad value is a ConfigError."""
    tables = read_config(text, where)
    clients = tables.pop("clients")
    parts = {name: _SECTIONS[name](**values) for name, values in tables.items()}
    return Config(path=where, clients=clients, **parts)


def load_config(explicit: str | None = None, up_fallback: bool = True) -> Config:
    """Load the configuration the spec's lookup order names, or the loopback defaults."""
    path = config_path(explicit, up_fallback)
    if path is None:
        return Config()
    return parse_config(read_file(path), path)


def load_daemon_config(args: dict, up_fallback: bool = True) -> Config:
    """The configuration a daemon runs with: the file, then `--insecure` from its options."""
    config = load_config(args.get("--config"), up_fallback)
    return config.with_overrides("cluster", insecure=True if args.get("--insecure") else None)


def check_secure(config: Config, role: str) -> None:
    """Refuse to run as root without keys unless told insecure (spec §7): as root, whoever
    reaches a port could otherwise run commands as root."""
    if config.cluster.keys or config.cluster.insecure or os.geteuid() != 0:
        return
    raise ConfigError(
        f"refusing to start the {role} as root without [cluster] keys: anyone who can reach "
        "its ports could run commands as root. Make keys with `zcron keygen` (see "
        "docs/operations.md) or use `zcron up`, which makes its own; or set insecure = true "
        "in [cluster] (or --insecure) if every local user may run anything"
    )


def port_after(address: str, offset: int) -> str:
    """The address `offset` ports after `address` (a process's further sockets)."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + offset}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dump_config(config: Config) -> str:
    """TOML text that parse_config reads back as the same configuration."""
    lines = []
    for section in _SECTIONS:
        lines.append(f"[{section}]")
        for item in fields(getattr(config, section)):
            value = getattr(getattr(config, section), item.name)
            if value is not None:
                lines.append(f"{item.name} = {_toml_value(value)}")
        lines.append("")
    if config.clients:
        lines.append("[clients]")
        lines += [f"{_toml_value(k)} = {_toml_value(list(v))}" for k, v in config.clients.items()]
        lines.append("")
    return "\n".join(lines)
