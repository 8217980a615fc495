"""Cluster configuration: TOML file → frozen dataclasses with loopback defaults (spec §2)."""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zcron.errors import ConfigError, did_you_mean, toml_position

DEFAULT_PATH = "/etc/zcron/zcron.conf"
UP_CONFIG = ".zcron/zcron-up.conf"  # written by `zcron up` with the default --data
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float, where: str = "duration") -> float:
    """Seconds for `250ms`, `30s`, `5m`, `2h`, `14d` or `1h30m`; bare numbers are seconds."""
    if isinstance(text, bool):
        raise ConfigError(f"{where}: expected a duration like 30s, got {text!r}")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ConfigError(f"{where}: duration must not be negative, got {text!r}")
        return float(text)
    spec = str(text).strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(spec):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not spec or pos != len(spec) or not math.isfinite(total):
        raise ConfigError(f"{where}: bad duration {text!r} (use e.g. 250ms, 30s, 5m, 2h, 14d)")
    return total


def default_schedules_dir() -> str:
    """`./etc/zcron.d` when it exists (a checkout), else the installed `/etc/zcron.d`."""
    return "etc/zcron.d" if os.path.isdir("etc/zcron.d") else "/etc/zcron.d"


@dataclass(frozen=True)
class ClusterConfig:
    """[cluster]: the schedulers, the sink, the keys and the timing they share."""

    schedulers: dict[str, str] = field(default_factory=lambda: {"a": "tcp://127.0.0.1:7701"})
    sink: str = "tcp://127.0.0.1:7710"
    keys: str | None = None
    heartbeat: float = 0.2
    peer_timeout: float = 1.0
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

    http: str = "127.0.0.1:9464"
    data: str = ".zcron/sink"
    retention: float = 14 * 86400.0
    job_labels: bool = True
    http_hosts: tuple[str, ...] = ()  # Host names HTTP answers besides its address and localhost


@dataclass(frozen=True)
class Config:
    """The whole configuration file. (Each class has a docstring: without one, @dataclass
    computes inspect.signature for it at import, ~0.5 ms of every CLI start for the five.)"""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    # client key name -> the users its pushes and manual runs may run as (first = default)
    clients: dict[str, tuple[str, ...]] = field(default_factory=dict)
    path: str | None = None

    def scheduler_address(self, scheduler_id: str | None = None) -> str:
        """The address of one configured scheduler (this process's own by default)."""
        sid = scheduler_id or self.scheduler.id
        try:
            return self.cluster.schedulers[sid]
        except KeyError:
            raise ConfigError(
                f"{self.path or 'config'}: scheduler id {sid!r} is not in [cluster] schedulers "
                f"({', '.join(sorted(self.cluster.schedulers))})"
            ) from None

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


def _schedulers(value: Any, name: str) -> dict[str, str]:
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(v, str) for v in value.values())
    ):
        raise ConfigError(f'{name}: expected a table of id = "tcp://host:port"')
    return dict(value)


def _pools(value: Any, name: str) -> tuple[str, ...]:
    pools = [value] if isinstance(value, str) else value
    if not isinstance(pools, list) or not pools or not all(isinstance(p, str) for p in pools):
        raise ConfigError(f"{name}: expected a pool name or a list of them")
    return tuple(pools)


def _slots(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: expected a whole number >= 1, got {value!r}")
    return value


def _prefetch(value: Any, name: str) -> int:
    # at most what a `ready` lists as queued (protocol: 4,096 run ids), so a scheduler
    # knows every queued job of a worker that dies
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4096:
        raise ConfigError(f"{name}: expected a whole number from 0 to 4096, got {value!r}")
    return value


def _names(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name}: expected a list of host names, got {value!r}")
    return tuple(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


_KEY_TYPES = {
    "heartbeat": parse_duration,
    "peer_timeout": parse_duration,
    "max_clock_skew": parse_duration,
    "retention": parse_duration,
    "drain_timeout": parse_duration,
    "schedulers": _schedulers,
    "pool": _pools,
    "slots": _slots,
    "prefetch": _prefetch,
    "insecure": _flag,
    "job_labels": _flag,
    "http_hosts": _names,
}


def _coerce(section: str, key: str, value: Any, where: str) -> Any:
    return _KEY_TYPES.get(key, _text)(value, f"{where}: [{section}] {key}")


def _section(section: str, table: Any, where: str) -> Any:
    cls = _SECTIONS[section]
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{section}] must be a table")
    known = {f.name for f in fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key [{section}] {key}{did_you_mean(key, known)} "
                f"(known: {', '.join(sorted(known))})"
            )
        values[key] = _coerce(section, key, value, where)
    return cls(**values)


def _clients(table: Any, where: str) -> dict[str, tuple[str, ...]]:
    """`[clients]`: key name = ["user", ...]; root only when named (spec §7)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [clients] must be a table of key name = [users]")
    clients = {}
    for name, users in table.items():
        users = [users] if isinstance(users, str) else users
        if not isinstance(users, list) or not all(
            isinstance(u, str) and u and len(u) <= 64 for u in users
        ):
            raise ConfigError(
                f'{where}: [clients] {name}: expected a list of user names, e.g. ["deploy"]'
            )
        clients[name] = tuple(users)
    return clients


def parse_config(text: str, where: str = "config") -> Config:
    """Parse TOML text into a Config; every unknown key or bad value is a ConfigError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line, column = toml_position(str(exc))
        position = f":{line}:{column}" if line is not None else ""
        raise ConfigError(f"{where}{position}: {message}") from None
    known = (*_SECTIONS, "clients")
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section [{unknown[0]}]{did_you_mean(unknown[0], known)} "
            f"(known: {', '.join(known)})"
        )
    parts = {name: _section(name, doc[name], where) for name in _SECTIONS if name in doc}
    config = Config(path=where, clients=_clients(doc.get("clients", {}), where), **parts)
    if config.cluster.heartbeat <= 0 or config.cluster.peer_timeout <= config.cluster.heartbeat:
        raise ConfigError(f"{where}: [cluster] peer_timeout must exceed heartbeat (> 0)")
    return config


def config_path(explicit: str | None, up_fallback: bool = True) -> str | None:
    """`-c FILE`, else $ZCRON_CONFIG, else /etc/zcron/zcron.conf when present; else the
    configuration a `zcron up` in this directory runs with (its keys, its ports), so that
    `zcron runs` beside a running `up` needs no config; else None (the defaults)."""
    if explicit:
        return explicit
    if os.environ.get("ZCRON_CONFIG"):
        return os.environ["ZCRON_CONFIG"]
    if os.path.exists(DEFAULT_PATH):
        return DEFAULT_PATH
    if up_fallback and os.path.isfile(UP_CONFIG):
        return UP_CONFIG
    return None


def load_config(explicit: str | None = None, up_fallback: bool = True) -> Config:
    """Load the configuration the spec's lookup order names, or the loopback defaults."""
    path = config_path(explicit, up_fallback)
    if path is None:
        return Config()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return parse_config(text, path)


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
