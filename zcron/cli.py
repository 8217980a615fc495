"""The `zcron` command: docopt usage (spec §1), dispatch, exit codes 0 / 1 / 2.

Usage:
  zcron up        [-c FILE] [--schedules DIR] [--data DIR] [--http ADDR] [--slots N] [--insecure]
  zcron scheduler [-c FILE] [--id NAME] [--insecure]
  zcron worker    [-c FILE] [--id NAME] [--pool NAME] [--slots N] [--insecure]
  zcron sink      [-c FILE] [--insecure]
  zcron check     [-c FILE] [PATH...]
  zcron next      [-c FILE] [-n N] [JOB]
  zcron run       [-c FILE] JOB
  zcron push      [-c FILE] [--pool NAME] [--user NAME] [--at TIME | --in DURATION] [--timeout DURATION] -- COMMAND...
  zcron status    [-c FILE] [--json]
  zcron runs      [-c FILE] [JOB] [--since TIME] [--limit N] [--json]
  zcron keygen    DIR NAME
  zcron --version

Options:
  -c FILE, --config FILE  Configuration file (else $ZCRON_CONFIG, else /etc/zcron/zcron.conf).
  --schedules DIR         Schedule directory (default ./etc/zcron.d when it exists).
  --data DIR              Where `up` keeps its state, spool and LMDB (default .zcron).
  --http ADDR             The sink's HTTP address (host:port).
  --slots N               Jobs a worker runs at once.
  --id NAME               This process's id (a key of [cluster] schedulers for a scheduler).
  --pool NAME             Worker pool(s), comma-separated; for push, the pool to run in.
  -n N                    How many fire times [default: 5].
  --user NAME             Run the pushed command as this user (one your client key may use;
                          default: its first).
  --at TIME               Run at this time (ISO 8601, e.g. 2026-11-23T03:00:00Z).
  --in DURATION           Run after this delay (e.g. 90s, 5m).
  --timeout DURATION      Kill the command after this long.
  --since TIME            Runs finished since (ISO 8601, Unix seconds, or a duration ago: 1h).
  --limit N               At most this many runs [default: 20].
  --json                  One JSON object per line.
  --insecure              Allow binding non-loopback addresses without CURVE keys (anyone
                          who reaches the ports can then run commands on the workers).
  --version               Print the version.
"""

from __future__ import annotations

import importlib
import logging
import sys

from docopt import DocoptExit, docopt

from zcron import __version__
from zcron.errors import ConfigError, ScheduleError, ZcronError

COMMANDS = {
    "up": "zcron.up",
    "scheduler": "zcron.scheduler",
    "worker": "zcron.worker",
    "sink": "zcron.sink",
    "check": "zcron.commands",
    "next": "zcron.commands",
    "run": "zcron.commands",
    "push": "zcron.commands",
    "status": "zcron.commands",
    "runs": "zcron.commands",
    "keygen": "zcron.commands",
}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return its exit code."""
    try:
        args = docopt(__doc__, argv=argv, version=f"zcron {__version__}")
    except DocoptExit as exc:
        print(exc, file=sys.stderr)
        return 2
    command = next(name for name in COMMANDS if args.get(name))
    module = importlib.import_module(COMMANDS[command])
    try:
        return int(getattr(module, f"cmd_{command}")(args) or 0)
    except (ConfigError, ScheduleError) as exc:
        print(f"zcron {command}: {exc}", file=sys.stderr)
        return 2
    except ZcronError as exc:
        print(f"zcron {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:
        logging.getLogger("zcron").exception("zcron %s crashed", command)
        return 1
