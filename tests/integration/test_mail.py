"""MAILTO on a real worker (spec §3): a run that printed anything is mailed through
`sendmail -t` found on the worker's PATH, as cron does; a silent run, or MAILTO="", is not;
a worker without sendmail counts zcron_mail_failures_total and still records the run."""

from __future__ import annotations

import os
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

from tests.harness import Cluster, Processes, make_cluster, metric_value, wait_until

pytestmark = pytest.mark.timeout(90)

CROND = """\
MAILTO=ops@example.com, dev@example.com
# name: loud
* * * * * *  -  echo "hello from loud"; echo oops >&2
# name: silent
* * * * * *  -  true
MAILTO=""
# name: muted
* * * * * *  -  echo muted output
"""
TOML = """\
[toml-loud]
schedule = "* * * * * *"
command = ["/bin/echo", "from toml"]
mailto = "toml@example.com"
env = { PATH = "/opt/x/bin:/usr/bin:/bin" }
"""
FAKE_SENDMAIL = """\
#!/bin/sh
# records its arguments and the mail it was given, one pair of files per mail
n="{box}/$(date +%s%N)-$$"
printf '%s\\n' "$@" > "$n.argv"
cat > "$n.mail"
"""


def mails(box: Path) -> list[tuple[list[str], Message]]:
    """(argv, mail) of every mail the fake sendmail received and finished writing."""
    found = []
    for argv in sorted(box.glob("*.argv")):
        body = argv.with_suffix(".mail")
        if body.exists() and body.read_bytes().endswith(b"\n"):
            found.append((argv.read_text().split(), message_from_bytes(body.read_bytes())))
    return found


def start(procs: Processes, cluster: Cluster, path: str) -> None:
    config = str(cluster.config_path)
    procs.start("sink", "-c", config)
    procs.start("scheduler", "-c", config)
    # no fallback directories: only the PATH given decides (mail.SENDMAIL_DIRS_ENV)
    procs.start("worker", "-c", config, "--id", "w1",
                env={"PATH": path, "ZCRON_SENDMAIL_DIRS": ""})  # fmt: skip


def test_a_run_that_printed_is_mailed_cron_style(tmp_path: Path, procs: Processes) -> None:
    cluster = make_cluster(tmp_path)
    box, bin_dir = tmp_path / "box", tmp_path / "bin"
    box.mkdir(), bin_dir.mkdir()
    sendmail = bin_dir / "sendmail"
    sendmail.write_text(FAKE_SENDMAIL.format(box=box))
    sendmail.chmod(0o755)
    (cluster.schedules / "mail").write_text(CROND)
    (cluster.schedules / "mail.toml").write_text(TOML)
    start(procs, cluster, f"{bin_dir}:/usr/bin:/bin")
    # three ticks' worth: the silent jobs ran as often as the loud ones meanwhile
    got = wait_until(lambda: (m := mails(box)) and count(m, "loud") >= 3
                     and "toml-loud" in jobs_of(m) and m, 30, "both loud jobs' mails")  # fmt: skip
    assert jobs_of(got) == {"loud", "toml-loud"}, "silent and MAILTO=\"\" runs send no mail"
    argv, mail = next((a, m) for a, m in got if m["X-Zcron-Job"] == "loud")
    assert argv == ["-t", "-i"]
    assert mail["To"] == "ops@example.com, dev@example.com"
    assert mail["From"].endswith(f"(zcron on {os.uname().nodename.split('.')[0]})")
    subject = mail["Subject"]
    assert subject.startswith("zcron <") and " loud: ok: echo " in subject, subject
    assert mail["Content-Type"] == "text/plain; charset=UTF-8"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["Precedence"] == "bulk"
    env = mail.get_all("X-Cron-Env")
    assert "<SHELL=/bin/sh>" in env and any(e.startswith("<HOME=") for e in env), env
    assert any(e.startswith("<ZCRON_RUN_ID=") for e in env), env
    assert mail.get_payload() == "hello from loud\noops\n"
    toml_mail = next(m for _, m in got if m["X-Zcron-Job"] == "toml-loud")
    assert toml_mail["To"] == "toml@example.com"
    assert "<PATH=/opt/x/bin:/usr/bin:/bin>" in toml_mail.get_all("X-Cron-Env")
    assert toml_mail.get_payload() == "from toml\n"
    run_id = mail["X-Zcron-Run-Id"]
    rec = wait_until(lambda: [r for r in cluster.runs(job="loud", limit=100)
                              if r["run_id"] == run_id], 15, "the mailed run's record")  # fmt: skip
    assert rec[0]["status"] == "ok" and rec[0]["stdout_tail"] == "hello from loud\n"


def jobs_of(found: list[tuple[list[str], Message]]) -> set[str]:
    return {mail["X-Zcron-Job"] for _, mail in found}


def count(found: list[tuple[list[str], Message]], job: str) -> int:
    return sum(1 for _, mail in found if mail["X-Zcron-Job"] == job)


def test_a_worker_without_sendmail_counts_the_failure_and_records_the_run(
    tmp_path: Path, procs: Processes
) -> None:
    cluster = make_cluster(tmp_path)
    (cluster.schedules / "mail").write_text(CROND)
    empty = tmp_path / "empty"
    empty.mkdir()
    start(procs, cluster, str(empty))
    wait_until(lambda: (metric_value(cluster, "zcron_mail_failures_total", worker="w1") or 0) >= 1,
               30, "a mail failure counted")  # fmt: skip
    runs = wait_until(lambda: cluster.runs(job="loud", limit=5), 15, "loud's records")
    assert {r["status"] for r in runs} == {"ok"}, runs
    log = next(p for p in procs.started if "worker" in p.args)
    assert "no sendmail on the worker's PATH" in procs.log(log)
