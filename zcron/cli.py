"""The `zcron` command: docopt usage (spec §1), dispatch, exit codes 0 / 1 / 2."""

from __future__ import annotations

import gc
import importlib
import os
import re
import sys

from zcron import __version__
from zcron.errors import ConfigError, ScheduleError, ZcronError, did_you_mean

USAGE = """\
zcron: distributed cron on ZeroMQ. Schedulers agree without a leader who fires each tick,
worker pools run the jobs, a sink keeps every run and serves /metrics and a dashboard.
`zcron up` runs all of them on this machine; `zcron COMMAND --help` explains one command.

Usage:
  zcron up        [-c FILE] [--schedules DIR] [--data DIR] [--http ADDR] [--slots N] [--insecure] [--log-level LEVEL]
  zcron scheduler [-c FILE] [--id NAME] [--insecure] [--log-level LEVEL]
  zcron worker    [-c FILE] [--id NAME] [--pool NAME] [--slots N] [--insecure] [--log-level LEVEL]
  zcron sink      [-c FILE] [--insecure] [--log-level LEVEL]
  zcron check     [-c FILE] [--json] [PATH...]
  zcron next      [-c FILE] [-n N] [--json] [JOB]
  zcron run       [-c FILE] JOB
  zcron push      [-c FILE] [--pool NAME] [--user NAME] [--at TIME | --in DURATION] [--timeout DURATION] -- COMMAND...
  zcron pause     [-c FILE] JOB
  zcron resume    [-c FILE] JOB
  zcron cancel    [-c FILE] RUN_ID
  zcron status    [-c FILE] [--json]
  zcron runs      [-c FILE] [JOB] [--since TIME] [--status STATUS] [--limit N] [--json]
  zcron keygen    DIR NAME
  zcron --version

Commands:
  up         A scheduler, a worker and a sink on loopback, in the foreground (Ctrl-C stops).
  scheduler  Fire the ticks this scheduler owns (one per machine of a cluster).
  worker     Run the jobs of a pool.
  sink       Keep run records; serve /metrics, /api/* and the dashboard.
  check      Validate schedule files; list each job and its next fire times (exit 2 on errors).
  next       The next fire instants of one job or all, in the job's timezone and UTC.
  run        Fire a job now, out of schedule.
  push       Run a one-off command, now or later.
  pause      Pause a job on every scheduler: its ticks are recorded skipped until resume.
  resume     Resume a paused job: its next ticks fire (the skipped ones are not caught up).
  cancel     Stop a running or parked run (recorded killed) or drop a delayed push (skipped).
  status     Schedulers, worker pools and free slots, config digest agreement, paused jobs.
  runs       Run records from the sink, newest first.
  keygen     Write a CURVE key pair NAME.key and NAME.key_secret into DIR.

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
  --status STATUS         Only runs with this status (ok, failed, timeout, killed, ...).
  --limit N               At most this many runs [default: 20].
  --json                  One JSON object per line.
  --insecure              Allow binding non-loopback addresses without CURVE keys (anyone
                          who reaches the ports can then run commands on the workers).
  --log-level LEVEL       debug, info, warning or error [default: info]; under systemd
                          each line carries its journal priority.
  --version               Print the version.
"""

COMMANDS = {
    "up": "zcron.up",
    "scheduler": "zcron.scheduler",
    "worker": "zcron.worker",
    "sink": "zcron.sink",
    "check": "zcron.commands",
    "next": "zcron.commands",
    "run": "zcron.commands",
    "push": "zcron.commands",
    "pause": "zcron.commands",
    "resume": "zcron.commands",
    "cancel": "zcron.commands",
    "status": "zcron.commands",
    "runs": "zcron.commands",
    "keygen": "zcron.commands",
}

DAEMONS = ("up", "scheduler", "worker", "sink")  # the commands that log (--log-level)

_FLAG = re.compile(r"--?[A-Za-z][\w-]*")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return its exit code."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a reader gone is then caught below
    except BrokenPipeError:
        # The reader went away (`zcron --help | head`): no traceback, and none at exit
        # either, when Python flushes stdout again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    if program and argv[:1] and argv[0] in COMMANDS and argv[0] not in DAEMONS:
        # At exit the interpreter collects garbage over every object of every loaded
        # module (re, enum, typing, zmq...): ~5-10 ms of a ~50 ms `zcron push`. A client
        # command is done by now; frozen, those objects are left to the process's end
        # (atexit handlers, refcount finalizers and file flushes still run; the daemons,
        # which close their stores on the way out, keep the whole teardown).
        gc.freeze()
    return code


def _main(argv: list[str]) -> int:
    if not argv:
        print(usage_lines(), file=sys.stderr)
        return 2
    if _wants_help(argv):
        print(command_help(argv[0]) if argv[0] in COMMANDS else USAGE.rstrip())
        return 0
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(
            f"zcron: unknown command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}", file=sys.stderr
        )
        print(usage_lines(), file=sys.stderr)
        return 2
    args = plain_args(argv) if argv[0] in COMMANDS else None
    if args is None:
        from docopt import DocoptExit, docopt

        try:
            args = docopt(_doc_for(argv), argv=argv, default_help=False,
                          version=f"zcron {__version__}")  # fmt: skip
        except DocoptExit as exc:
            print(_usage_error(argv, exc), file=sys.stderr)
            return 2
    command = next(name for name in COMMANDS if args.get(name))
    return _dispatch(command, args)


def _doc_for(argv: list[str]) -> str:
    """The usage docopt parses: only the command's own lines when argv names one. docopt
    builds a pattern of every line it is given (~5-10 ms for all of USAGE, a sixth of a
    `zcron push`); the result is the same, but for the other commands' keys."""
    if argv[0] not in COMMANDS:
        return USAGE
    usage = usage_lines(argv[0])
    return "\n\n".join([usage, "Options:", *_options_of(usage)])


def plain_args(argv: list[str]) -> dict | None:
    """docopt's dict for argv, read without docopt (importing it and building its pattern
    were ~3 ms of a `zcron push`) when the line is plain: each option spelled in full and
    given once, its value the next word, the positionals what the usage line's slots take.
    None for any other line: docopt reads it, and words its errors (tests/unit/
    test_cli_argv.py holds the two readings equal)."""
    shape = _usage_shape(argv[0])
    if shape is None:
        return None
    args, aliases, groups, slots = shape
    words, given, positionals = argv[1:], set(), []
    while words and words[0] != "--":
        word, words = words[0], words[1:]
        if not word.startswith("-"):
            positionals.append(word)
            continue
        key, takes_value = aliases.get(word, (None, False))
        if key is None or key in given or takes_value and words[:1] in ([], ["--"]):
            return None
        given.add(key)
        args[key], words = (words[0], words[1:]) if takes_value else (True, words)
    if any(len(given & group) > 1 for group in groups):
        return None
    return _fill_slots(args, slots, positionals, words)


def _fill_slots(args: dict, slots: list[str], before: list[str], rest: list[str]) -> dict | None:
    """The positionals into the slots: the required NAMEs, then one [NAME] or [NAME...],
    and after `--` (rest) a NAME...; None when they do not fit."""
    if ("--" in slots) != bool(rest):
        return None
    if rest:
        if len(rest) < 2:
            return None
        args["--"], args[slots[-1][:-3]], slots = True, rest[1:], slots[:-2]
    for slot in slots:
        name = slot.strip("[]")
        if name.endswith("..."):
            args[name[:-3]], before = before, []
        elif before:
            args[name], before = before[0], before[1:]
        elif not slot.startswith("["):
            return None
    return None if before else args


def _usage_shape(command: str) -> tuple[dict, dict, list[set], list[str]] | None:
    """From the command's usage line and option blocks: the args docopt gives when no
    option is, option word -> (key, takes a value), the sets of mutually exclusive keys,
    the positional slots; None unless the line is made of [-o VALUE] [--flag] [--a X | --b
    Y], then NAMEs, then one [NAME] or [NAME...], and last `-- NAME...` if any."""
    lines = usage_lines(command).split("\n")[1:]
    if len(lines) != 1:
        return None
    options, args, groups, slots = _option_forms(command), {command: True}, [], []
    for item in _USAGE_ITEM.findall(lines[0])[2:]:
        if item.startswith("[-"):
            forms = [options.get(words.split()[0]) for words in item.strip("[]").split(" | ")]
            if None in forms:
                return None
            args.update((key, default) for key, _, default in forms)
            groups.append({key for key, _, _ in forms})
        else:
            slots.append(item)
    if not _PLAIN_SLOTS.fullmatch(" ".join(slots)):
        return None
    for slot in slots:
        name = slot.strip("[]")
        if name != "--":
            args[name.removesuffix("...")] = [] if name.endswith("...") else None
    aliases = {word: (key, takes) for word, (key, takes, _) in options.items()}
    return args, aliases, groups, slots


def _option_forms(command: str) -> dict[str, tuple[str, bool, object]]:
    """Option word -> (docopt's key, takes a value, its value when not given), from the
    command's option blocks, read as docopt's Option.parse reads one."""
    forms: dict[str, tuple[str, bool, object]] = {}
    for block in _options_of(usage_lines(command)):
        spelled, description = re.split(r"(?:  )|$", block.strip(), flags=re.M, maxsplit=1)
        words = spelled.replace(",", " ").replace("=", " ").split()
        names = [word for word in words if word.startswith("-")]
        longer = [name for name in names if name.startswith("--")]
        key, takes = (longer or names)[-1], len(names) < len(words)
        default = re.findall(r"\[default: (.*)\]", description, flags=re.I)
        value = (default[0] if default else None) if takes else False
        forms.update((name, (key, takes, value)) for name in names)
    return forms


_USAGE_ITEM = re.compile(r"\[[^\]]*\]|\S+")
# Required NAMEs, then one optional [NAME] or [NAME...], then `-- NAME...`.
_PLAIN_SLOTS = re.compile(r"(?:[A-Z_]+ ?)*(?:\[[A-Z_]+(?:\.\.\.)?\] ?)?(?:-- [A-Z_]+\.\.\.)?")


def _dispatch(command: str, args: dict) -> int:
    module = importlib.import_module(COMMANDS[command])
    try:
        if command in DAEMONS:
            from zcron.log import set_level

            set_level(args.get("--log-level") or "info")
        return int(getattr(module, f"cmd_{command}")(args) or 0)
    except (ConfigError, ScheduleError) as exc:
        _print_error(f"zcron {command}: {exc}")
        return 2
    except ZcronError as exc:
        _print_error(f"zcron {command}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception:
        import logging

        logging.getLogger("zcron").exception("zcron %s crashed", command)
        return 1


def _print_error(text: str) -> None:
    from zcron.log import print_error  # loads logging: only when there is an error

    print_error(text)


def _wants_help(argv: list[str]) -> bool:
    """-h or --help before any `--` (after it, they belong to a pushed command)."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    return any(word in ("-h", "--help") for word in words)


def usage_lines(command: str | None = None) -> str:
    """The Usage: section, or only the lines of one command."""
    lines = _section("Usage:")
    if command is not None:
        lines = [line for line in lines if line.split()[1:2] == [command]]
    return "\n".join(["Usage:", *lines])


def command_help(command: str) -> str:
    """One command's summary, usage lines and the options they use."""
    usage = usage_lines(command)
    options = _options_of(usage)
    summaries = dict(line.split(None, 1) for line in _section("Commands:"))
    # a command added to Usage: without a line under Commands: still gets its help
    title = f"zcron {command}: {summaries[command]}" if command in summaries else f"zcron {command}"
    parts = [title, "", usage]
    if options:
        parts += ["", "Options:", *options]
    return "\n".join(parts)


def _options_of(usage: str) -> list[str]:
    """The option blocks of the Options: section that these usage lines use."""
    flags = set(_FLAG.findall(usage))
    return [block for block in _option_blocks() if flags & set(_FLAG.findall(block.split("  ")[1]))]


def _section(title: str) -> list[str]:
    """The indented lines under a heading of USAGE."""
    text = USAGE.split(f"\n{title}\n", 1)[1]
    return text.split("\n\n", 1)[0].rstrip("\n").split("\n")


def _option_blocks() -> list[str]:
    """Each option of the Options: section with its continuation lines."""
    blocks: list[str] = []
    for line in _section("Options:"):
        if line.lstrip().startswith("-"):
            blocks.append(line)
        else:
            blocks[-1] += "\n" + line
    return blocks


def _usage_error(argv: list[str], exc: Exception) -> str:
    """One line saying what was wrong, then the command's usage."""
    command = argv[0] if argv and argv[0] in COMMANDS else None
    message = str(exc).split("\n", 1)[0]
    if message.startswith(("Warning", "Usage")) or not message:
        # docopt-ng words leftovers as a developer's warning: say which words were not expected
        extra = [word for word in _UNMATCHED.findall(message) if word != command]
        message = f"unexpected {' '.join(extra)}" if extra else "missing arguments"
    where = f"zcron {command}" if command else "zcron"
    return f"{where}: {message}\n{usage_lines(command)}"


_UNMATCHED = re.compile(r"\w+\((?:None, )?'([^']*)'")
