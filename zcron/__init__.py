"""zcron: brokerless distributed cron on ZeroMQ."""

__version__ = "0.1.0"
