"""The one error family of zcron, and the wording its messages share."""

from __future__ import annotations

import re
from collections.abc import Iterable


class ZcronError(Exception):
    """Base of every error zcron reports to a user."""


class ConfigError(ZcronError):
    """A bad configuration key or value; names the key and the file."""


class ScheduleError(ZcronError):
    """A schedule file problem at file:line."""

    def __init__(self, path: str, line: int, message: str, column: int | None = None):
        where = f"{path}:{line}" if column is None else f"{path}:{line}:{column}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.column = column
        self.message = message


class ProtocolError(ZcronError):
    """A wire message that is malformed or not understood; `reason` labels the metric."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean "X"?)' for the closest known word, else ''."""
    import difflib  # only on an error: not in every command's start-up

    close = difflib.get_close_matches(word, list(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*\Z")


def toml_position(message: str) -> tuple[str, int | None, int | None]:
    """A tomllib error message split into (message, line, column); Python < 3.14 gives the
    position only in the text."""
    match = _TOML_POSITION.search(message)
    if match is None:
        return message, None, None
    return message[: match.start()], int(match.group(1)), int(match.group(2))
