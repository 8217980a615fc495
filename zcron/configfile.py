"""The configuration file (spec §2): where it is looked for, and its TOML read and checked
into plain tables, {section: {key: value}}, every key known and every value converted.

zcron.config builds its frozen dataclasses of these tables. The command line reads its few
keys here instead (ClientConfig): `import dataclasses` (inspect, ast, dis) and building the
five classes were ~10 ms of a ~65 ms `zcron push` (measured, issue 14).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from types import SimpleNamespace
from typing import Any

from zcron.errors import ConfigError, did_you_mean, toml_position

DEFAULT_PATH = "/etc/zcron/zcron.conf"
UP_CONFIG = ".zcron/zcron-up.conf"  # written by `zcron up` with the default --data
# The defaults the command line reads (zcron.config's dataclasses take theirs from here).
SCHEDULERS = {"a": "tcp://127.0.0.1:7701"}
HEARTBEAT_S = 0.2
PEER_TIMEOUT_S = 1.0
SINK_HTTP = "127.0.0.1:9464"
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


# Each section's keys and the check that converts a key's value: the keys a file may hold
# are these, and each is a field of zcron.config's dataclass of the section (a test holds
# them equal).
KEYS: dict[str, dict[str, Any]] = {
    "cluster": {
        "schedulers": _schedulers,
        "sink": _text,
        "keys": _text,
        "heartbeat": parse_duration,
        "peer_timeout": parse_duration,
        "max_clock_skew": parse_duration,
        "insecure": _flag,
    },
    "scheduler": {"id": _text, "schedules": _text, "state": _text},
    "worker": {
        "id": _text,
        "pool": _pools,
        "slots": _slots,
        "spool": _text,
        "drain_timeout": parse_duration,
        "prefetch": _prefetch,
    },
    "sink": {
        "http": _text,
        "data": _text,
        "retention": parse_duration,
        "job_labels": _flag,
        "http_hosts": _names,
    },
}


def _table(section: str, table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{section}] must be a table")
    known = KEYS[section]
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key [{section}] {key}{did_you_mean(key, known)} "
                f"(known: {', '.join(sorted(known))})"
            )
        values[key] = known[key](value, f"{where}: [{section}] {key}")
    return values


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


def read_config(text: str, where: str = "config") -> dict[str, dict[str, Any]]:
    """The tables of TOML text: each section it has, and "clients" (client key name ->
    users); every unknown key or bad value is a ConfigError naming `where`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line, column = toml_position(str(exc))
        position = f":{line}:{column}" if line is not None else ""
        raise ConfigError(f"{where}{position}: {message}") from None
    known = (*KEYS, "clients")
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section [{unknown[0]}]{did_you_mean(unknown[0], known)} "
            f"(known: {', '.join(known)})"
        )
    tables = {name: _table(name, doc[name], where) for name in KEYS if name in doc}
    tables["clients"] = _clients(doc.get("clients", {}), where)
    cluster = tables.get("cluster", {})
    heartbeat = cluster.get("heartbeat", HEARTBEAT_S)
    if heartbeat <= 0 or cluster.get("peer_timeout", PEER_TIMEOUT_S) <= heartbeat:
        raise ConfigError(f"{where}: [cluster] peer_timeout must exceed heartbeat (> 0)")
    return tables


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


def read_file(path: str) -> str:
    """The text of a configuration file (ConfigError when it cannot be read)."""
    try:
        with open(path) as file:  # not pathlib: it loads urllib and ipaddress, ~2 ms
            return file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None


def scheduler_address(schedulers: dict[str, str], scheduler_id: str, path: str | None) -> str:
    """The address of one of [cluster] schedulers (ConfigError naming the known ids)."""
    try:
        return schedulers[scheduler_id]
    except KeyError:
        raise ConfigError(
            f"{path or 'config'}: scheduler id {scheduler_id!r} is not in [cluster] schedulers "
            f"({', '.join(sorted(schedulers))})"
        ) from None


class ClientConfig:
    """What the command line's requests read of the configuration, checked as a whole as
    zcron.config checks it; named as a Config names it (`cluster.schedulers`,
    `cluster.keys`, `sink.http`, `scheduler_address`), so that either serves zcron.client."""

    def __init__(self, path: str | None = None, tables: dict[str, dict[str, Any]] | None = None):
        cluster, sink = (tables or {}).get("cluster", {}), (tables or {}).get("sink", {})
        self.path = path
        self.cluster = SimpleNamespace(
            schedulers=cluster.get("schedulers", dict(SCHEDULERS)), keys=cluster.get("keys")
        )
        self.sink = SimpleNamespace(http=sink.get("http", SINK_HTTP))

    def scheduler_address(self, scheduler_id: str) -> str:
        return scheduler_address(self.cluster.schedulers, scheduler_id, self.path)


def load_client_config(explicit: str | None = None) -> ClientConfig:
    """The command line's configuration, looked for and checked as zcron.config.load_config
    looks and checks (the same errors), without building its dataclasses."""
    path = config_path(explicit)
    return ClientConfig(path, read_config(read_file(path), path) if path else None)
