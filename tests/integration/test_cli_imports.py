"""The command line loads only what a command uses: `zcron push`, `status` and `runs` start
in ~45-55 ms, where loading everything took ~160 ms (python -X importtime; see
zcron/commands.py). Checked on the modules a command loads, in a fresh interpreter, not on
a clock: those the interpreter had before (site's, an editable install's) do not count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

# Each loaded by something no client command needs: the daemons, the schedule parsers,
# urllib (http.client, email, ssl), asyncio (zmq.utils.monitor), logging (zmq.auth), the
# config's dataclasses (dataclasses, inspect: ~10 ms), docopt (its pattern: ~3 ms), pathlib.
NEVER = ("zcron.scheduler", "zcron.worker", "zcron.sink", "zcron.schedule", "zcron.cron",
         "zcron.job", "zcron.auth", "zcron.daemon", "zcron.clock", "zcron.log",
         "urllib.request", "http.client", "email", "ssl", "asyncio", "zmq.auth",
         "zmq.utils.monitor", "logging", "zoneinfo", "difflib", "hashlib", "secrets",
         "zcron.config", "dataclasses", "inspect", "docopt", "pathlib", "glob")  # fmt: skip

# Runs the command in-process against a config whose scheduler and sink do not answer, then
# prints the loaded modules (the error path loads zcron.log to print: left out here).
PROBE = """
import sys
startup = set(sys.modules)
from zcron import cli
if sys.argv[1] != "runs":  # `runs` must not load it
    import zcron.client
    zcron.client.REQUEST_TIMEOUT_MS = 50
cli._print_error = lambda text: print(text, file=sys.stderr)
code = cli.main(sys.argv[1:])
loaded = sorted(set(sys.modules) - startup)
import json
print(json.dumps({"code": code, "modules": loaded}), file=sys.__stdout__)
"""


def loaded(tmp_path: Path, *argv: str) -> tuple[int, set[str]]:
    config = tmp_path / "zcron.conf"
    config.write_text('[cluster]\nschedulers = { a = "tcp://127.0.0.1:9" }\n'
                      '[sink]\nhttp = "127.0.0.1:9"\n')  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", PROBE, argv[0], "-c", str(config), *argv[1:]],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["code"], set(result["modules"])


@pytest.mark.parametrize("argv", [("push", "--", "true"), ("status",), ("runs",)])
def test_a_client_command_loads_no_daemon_parser_or_heavy_stdlib(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    code, modules = loaded(tmp_path, *argv)
    assert code == 1, "nothing answers on port 9: the command ran to its request and failed"
    heavy = sorted(m for m in modules if m.split(".")[0] in NEVER or m in NEVER)
    assert heavy == []


def test_runs_loads_no_zeromq_nor_msgpack(tmp_path: Path) -> None:
    _, modules = loaded(tmp_path, "runs")
    assert not any(m == "zmq" or m.startswith(("zmq.", "msgpack")) for m in modules)
