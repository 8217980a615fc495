"""Journal priorities: `<N>` prefixes only when stderr is the journal's stream."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest

from zcron.errors import ConfigError
from zcron.log import level_name, prefixed, priority, set_level, stderr_is_journal


def test_levels_map_to_sd_daemon_priorities() -> None:
    levels = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    assert [priority(level) for level in levels] == [7, 6, 4, 3, 2]


def test_every_line_of_a_message_carries_the_prefix() -> None:
    assert prefixed("boom\n  at line 2", logging.ERROR) == "<3>boom\n<3>  at line 2"


def test_stderr_is_the_journal_only_when_its_device_and_inode_match() -> None:
    with tempfile.TemporaryFile("w") as stream:
        stat = os.fstat(stream.fileno())
        assert stderr_is_journal(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:1"})
        assert not stderr_is_journal(stream, {})


def test_log_level_names_are_checked() -> None:
    set_level("DEBUG")
    assert level_name() == "debug"
    set_level("info")
    with pytest.raises(ConfigError, match="--log-level"):
        set_level("loud")
