from pathlib import Path

import pytest

from zcron.config import (
    Config,
    dump_config,
    load_config,
    load_daemon_config,
    parse_config,
    parse_duration,
    port_after,
)
from zcron.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("14d", 14 * 86400),
        ("1h30m", 5400),
        (7, 7.0),
        ("0s", 0),
    ],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "m5", "1h 30m", "-1s", True, -3])
def test_bad_durations_name_the_key(text: object) -> None:
    with pytest.raises(ConfigError, match="heartbeat"):
        parse_duration(text, "heartbeat")  # type: ignore[arg-type]


def test_no_file_gives_the_loopback_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZCRON_CONFIG", raising=False)
    monkeypatch.setattr("zcron.configfile.DEFAULT_PATH", "/nonexistent/zcron.conf")
    config = load_config(None)
    assert config.cluster.schedulers == {"a": "tcp://127.0.0.1:7701"}
    assert config.cluster.sink == "tcp://127.0.0.1:7710"
    assert config.sink.http == "127.0.0.1:9464"
    assert config.sink.data.startswith(".zcron")


def test_the_bundled_annotated_config_loads_and_matches_the_defaults() -> None:
    bundled = load_config(str(REPO / "etc" / "zcron.conf"))
    defaults = Config()
    assert bundled.cluster == defaults.cluster
    assert bundled.sink == defaults.sink
    assert (bundled.worker.pool, bundled.worker.slots) == (defaults.worker.pool, 4)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"x\.conf: unknown key \[worker\] slot "):
        parse_config("[worker]\nslot = 3\n", "x.conf")


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[workers\]"):
        parse_config("[workers]\n", "x.conf")


@pytest.mark.parametrize(
    "text, key",
    [
        ("[worker]\nslots = 0", "slots"),
        ("[worker]\nslots = true", "slots"),
        ('[cluster]\nschedulers = "a"', "schedulers"),
        ("[sink]\nhttp = 5", "http"),
        ('[cluster]\nheartbeat = "2s"\npeer_timeout = "1s"', "peer_timeout"),
        ("[cluster\n", "x.conf"),
    ],
)
def test_bad_values_are_config_errors(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(text, "x.conf")


def test_missing_explicit_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="/nonexistent.conf: cannot read"):
        load_config("/nonexistent.conf")


def test_dumped_config_reads_back_the_same() -> None:
    config = parse_config(
        '[cluster]\nschedulers = { a = "tcp://127.0.0.1:1", b = "tcp://h:2" }\n'
        '[worker]\npool = ["x", "y"]\nid = "w"\n'
    )
    again = parse_config(dump_config(config))
    assert (again.cluster, again.worker, again.sink) == (config.cluster, config.worker, config.sink)


def test_port_after() -> None:
    assert port_after("tcp://127.0.0.1:7701", 1) == "tcp://127.0.0.1:7702"


def test_insecure_option_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "zcron.conf"
    path.write_text("[cluster]\ninsecure = false\n")
    assert not load_daemon_config({"--config": str(path)}).cluster.insecure
    assert load_daemon_config({"--config": str(path), "--insecure": True}).cluster.insecure
