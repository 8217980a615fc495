"""The one error family of zcron."""


class ZcronError(Exception):
    """Base of every error zcron reports to a user."""


class ConfigError(ZcronError):
    """A bad configuration key or value; names the key and the file."""


class ScheduleError(ZcronError):
    """A schedule file problem at file:line."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


class ProtocolError(ZcronError):
    """A wire message that is malformed or not understood; `reason` labels the metric."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
