"""Plain log lines on stderr; timestamps only on a TTY (journald adds its own)."""

import logging
import sys
from datetime import UTC, datetime


def setup_logging(component: str, level: int = logging.INFO) -> None:
    """Send this process's log lines to stderr, prefixed with its component name."""
    stamp = "%(asctime)s " if sys.stderr.isatty() else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{stamp}{component}: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def iso_utc(instant: float) -> str:
    """An instant as log lines show it: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds")
