"""Plain log lines on stderr; timestamps only on a TTY (journald adds its own); a `<N>`
priority prefix on each line when stderr is the journal, so `journalctl -p warning` works."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import TextIO

from zcron.errors import ConfigError

# sd-daemon(3) priorities, the syslog levels journald reads from a `<N>` line prefix;
# highest level first (priority() takes the first one a record reaches).
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip
_level = logging.INFO


def set_level(name: str) -> None:
    """Use `name` (debug, info, warning, error) in every later setup_logging()."""
    global _level
    if name.lower() not in LEVELS:
        raise ConfigError(f"--log-level: expected one of {', '.join(LEVELS)}, got {name!r}")
    _level = LEVELS[name.lower()]


def level_name() -> str:
    """The level in force, as `--log-level` takes it (for `zcron up`'s children)."""
    return logging.getLevelName(_level).lower()


def stderr_is_journal(stream: TextIO | None = None, environ: dict | None = None) -> bool:
    """Whether `stream` (stderr) is journald's: `$JOURNAL_STREAM` names its device:inode.

    Comparing the inode keeps a child whose stderr was redirected elsewhere (but which
    inherited the variable) from writing prefixes into a file.
    """
    expected = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat((sys.stderr if stream is None else stream).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(expected) and expected == f"{stat.st_dev}:{stat.st_ino}"


def priority(levelno: int) -> int:
    """The journal priority of a logging level (7, debug, below INFO)."""
    return next((p for level, p in PRIORITIES.items() if levelno >= level), 7)


def prefixed(text: str, levelno: int) -> str:
    """`text` with `<N>` before each line (journald applies a prefix to its line only)."""
    return "\n".join(f"<{priority(levelno)}>{line}" for line in text.split("\n"))


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return prefixed(super().format(record), record.levelno)


def print_error(text: str) -> None:
    """A fatal message on stderr (before logging is set up), at priority err in the journal."""
    print(prefixed(text, logging.ERROR) if stderr_is_journal() else text, file=sys.stderr)


def setup_logging(component: str, level: int | None = None) -> None:
    """Send this process's log lines to stderr, prefixed with its component name."""
    # Timestamps on a TTY, or when asked (a log file outside journald, which adds its own)
    stamp = "%(asctime)s " if sys.stderr.isatty() or os.environ.get("ZCRON_LOG_TIMES") else ""
    kind = JournalFormatter if stderr_is_journal() else logging.Formatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(kind(f"{stamp}{component}: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_level if level is None else level)


def iso_utc(instant: float) -> str:
    """An instant as log lines show it: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds")
