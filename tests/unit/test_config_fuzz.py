"""Spec §8.7 for the cluster configuration: any text gives a Config or a ConfigError that
names the file, never a traceback."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcron.config import (
    ClusterConfig,
    Config,
    SchedulerConfig,
    SinkConfig,
    WorkerConfig,
    parse_config,
)
from zcron.configfile import KEYS as FILE_KEYS
from zcron.configfile import ClientConfig, read_config
from zcron.errors import ConfigError

SECTIONS = {"cluster": ClusterConfig, "scheduler": SchedulerConfig, "worker": WorkerConfig,
            "sink": SinkConfig}  # fmt: skip
KEYS = sorted({f.name for cls in SECTIONS.values() for f in fields(cls)})

toml_scalars = st.one_of(
    st.sampled_from(
        [
            '"250ms"',
            '"30s"',
            '"5m"',
            '"14d"',
            '"1h30m"',
            '"-1s"',
            '"1e3s"',
            '""',
            '"tcp://127.0.0.1:7701"',
            '"default"',
            "true",
            "false",
            "nan",
            "inf",
            "-inf",
            "0",
            "-1",
            "1.5",
            "99999999999999999999",
            "1979-05-27",
            '"\\u0000"',
            "'x'",
        ]
    ),  # fmt: skip
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=12).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
        | st.lists(st.tuples(st.sampled_from(["a", "b", "x"]), inner), max_size=3).map(
            lambda kvs: "{ " + ", ".join(f"{k} = {v}" for k, v in kvs) + " }"
        )
    ),
    max_leaves=6,
)
key_lines = st.tuples(st.sampled_from([*KEYS, "nope", "id.x"]), toml_values).map(
    lambda kv: f"{kv[0]} = {kv[1]}"
)
sections = st.tuples(
    st.sampled_from([*SECTIONS, "other", "cluster.schedulers"]), st.lists(key_lines, max_size=6)
).map(lambda s: "\n".join([f"[{s[0]}]", *s[1]]))
config_texts = st.one_of(
    st.text(max_size=300),
    st.lists(sections, max_size=4).map("\n".join),
    st.lists(
        st.sampled_from(["[cluster]", "keys =", '"', "[", "]", "=", "\n", "{", "}", "#"]),
        max_size=30,
    ).map(" ".join),  # fmt: skip
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=config_texts)
def test_any_config_text_gives_a_config_or_a_config_error_naming_the_file(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.conf")
    except ConfigError as exc:
        # a TOML syntax error names the line and column too: fuzz.conf:3:7: ...
        assert re.match(r"fuzz\.conf(:\d+:\d+)?: ", str(exc)), str(exc)
        return
    assert isinstance(config, Config) and config.path == "fuzz.conf"


@pytest.mark.parametrize(
    "value", ["nan", "inf", '"' + "9" * 400 + 's"'], ids=["nan", "inf", "overflow"]
)
def test_non_finite_durations_are_config_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="retention"):
        parse_config(f"[sink]\nretention = {value}\n", "x.conf")


def test_the_file_takes_exactly_the_fields_of_each_section() -> None:
    assert {name: set(keys) for name, keys in FILE_KEYS.items()} == {
        name: {f.name for f in fields(cls)} for name, cls in SECTIONS.items()
    }


def client_view(config: ClientConfig | Config) -> tuple:
    return config.path, config.cluster.schedulers, config.cluster.keys, config.sink.http


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=config_texts)
def test_the_command_lines_reading_agrees_with_the_daemons(text: str) -> None:
    """The same error, or the same schedulers, keys and sink address, as parse_config."""
    try:
        expected: tuple | str = client_view(parse_config(text, "fuzz.conf"))
    except ConfigError as exc:
        expected = str(exc)
    try:
        got: tuple | str = client_view(ClientConfig("fuzz.conf", read_config(text, "fuzz.conf")))
    except ConfigError as exc:
        got = str(exc)
    assert got == expected


def test_the_command_lines_defaults_are_the_daemons() -> None:
    assert client_view(ClientConfig()) == client_view(Config())
