"""Plain log lines on stderr; timestamps only on a TTY (journald adds its own)."""

import logging
import sys


def setup_logging(component: str, level: int = logging.INFO) -> None:
    """Send this process's log lines to stderr, prefixed with its component name."""
    stamp = "%(asctime)s " if sys.stderr.isatty() else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{stamp}{component}: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
