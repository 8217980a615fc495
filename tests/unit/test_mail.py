"""MAILTO without sockets (zcron/mail.py): addresses checked where they are written and on
the wire, headers nobody can inject into, sendmail found as cron finds it, failures counted."""

from __future__ import annotations

import json
import os
from email import message_from_bytes
from pathlib import Path

import pytest

from zcron import mail
from zcron.clock import FakeClock
from zcron.errors import ProtocolError
from zcron.job import mail_addresses, mailto_problem
from zcron.mail import Mailer, compose, find_sendmail, should_mail
from zcron.protocol import decode, encode, record
from zcron.schedule import load_paths

MSG = dict(run_id="r1", job="loud", tick=1.0, attempt=1, scheduler="a", pool="default",
           command="echo hi", shell="/bin/sh", user=None, env={}, cwd=None, timeout=None,
           on_timeout="kill", dispatched=1.0, mailto="ops@example.com")  # fmt: skip
ENV = {"SHELL": "/bin/sh", "HOME": "/root", "PATH": "/usr/bin:/bin", "LOGNAME": "root",
       "USER": "root", "ZCRON_JOB": "loud", "SECRET_TOKEN": "s3cret"}  # fmt: skip


def run(**values: object) -> dict:
    return record(**{"run_id": "r1", "job": "loud", "tick": 1.0, "status": "ok",
                     "started": 1.0, "finished": 2.0, **values})  # fmt: skip


@pytest.mark.parametrize("value", ["", "ops@example.com", "a@x.org, b@y.org", "root",
                                   "ops+cron@example.com,dev@example.com"])  # fmt: skip
def test_addresses_cronie_calls_safe_are_accepted(value: str) -> None:
    assert mailto_problem(value) is None


@pytest.mark.parametrize("value", ["a@x\r\nBcc: evil@x", "a b@x", "-oQ@x", "a@x,,b@x",
                                   "x" * 1001, "<a@x>"])  # fmt: skip
def test_anything_else_is_refused_in_files_and_on_the_wire(value: str, tmp_path: Path) -> None:
    assert mailto_problem(value) is not None
    with pytest.raises(ProtocolError):
        decode(encode("job", **{**MSG, "mailto": value}))
    toml_value = json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    toml = f'[j]\nschedule = "@daily"\ncommand = "x"\nmailto = {toml_value}\n'
    (tmp_path / "j.toml").write_text(toml)
    one_line = "\r" not in value and "\n" not in value  # a cron.d value ends at the line's end
    if one_line:
        (tmp_path / "crond").write_text(f"MAILTO={value}\n@daily - x\n")
    errors = [str(e) for e in load_paths([str(tmp_path)]).errors]
    assert any(e.startswith(f"{tmp_path / 'j.toml'}:4: [j] mailto: ") for e in errors), errors
    crond_error = any(e.startswith(f"{tmp_path / 'crond'}:1: MAILTO: ") for e in errors)
    assert crond_error == one_line, errors


def test_crond_mailto_applies_to_the_lines_below_it(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("# name: a\n@daily - x\nMAILTO=ops@x\n# name: b\n@daily - y\n"
                                'MAILTO=""\n# name: c\n@daily - z\n')  # fmt: skip
    result = load_paths([str(tmp_path)])
    assert result.warnings == [] and result.errors == []
    assert {n: j.mailto for n, j in result.jobs.items()} == {"a": "", "b": "ops@x", "c": ""}


def test_cron_mails_only_output_of_runs_that_started_and_have_an_address() -> None:
    assert should_mail(MSG, run(stdout_tail="hi\n"))
    assert should_mail(MSG, run(stderr_tail="oops\n"))
    assert not should_mail(MSG, run())
    assert not should_mail({**MSG, "mailto": ""}, run(stdout_tail="hi\n"))
    assert not should_mail({k: v for k, v in MSG.items() if k != "mailto"}, run(stdout_tail="x"))
    assert not should_mail(MSG, run(stderr_tail="unknown user", started=None, status="refused"))


def test_the_mail_has_cron_headers_and_nothing_a_job_can_inject() -> None:
    msg = {**MSG, "command": "echo hi\nBcc: evil@example.com", "mailto": "a@x,b@y"}
    env = {**ENV, "PATH": "/bin\r\nBcc: evil@example.com"}
    data = compose(msg, run(status="failed", stdout_tail="out", stderr_tail="err\n"), env,
                   "host1.example.com", "zcron")  # fmt: skip
    head = data.split(b"\n\n", 1)[0].decode()
    assert not any(line.startswith("Bcc") for line in head.splitlines()), head
    parsed = message_from_bytes(data)
    assert parsed["From"] == "zcron (zcron on host1)" and parsed["To"] == "a@x, b@y"
    assert parsed["Subject"].startswith("zcron <root@host1> loud: failed: echo hi Bcc:")
    assert parsed["Content-Type"] == "text/plain; charset=UTF-8"
    assert parsed["Auto-Submitted"] == "auto-generated" and parsed["Precedence"] == "bulk"
    assert parsed.get_all("X-Cron-Env") == [
        "<SHELL=/bin/sh>", "<HOME=/root>", "<PATH=/bin Bcc: evil@example.com>",
        "<LOGNAME=root>", "<USER=root>", "<ZCRON_JOB=loud>"]  # fmt: skip
    assert "s3cret" not in data.decode(), "the job's own env may hold secrets: not mailed"
    assert parsed.get_payload() == "out\nerr\n"


def test_non_ascii_headers_are_encoded_words_and_the_body_is_utf8() -> None:
    data = compose({**MSG, "command": "echo héllo"}, run(stdout_tail="héllo\n"), ENV, "h", "z")
    parsed = message_from_bytes(data)
    assert "=?utf-8?" in parsed["Subject"] and data.endswith("héllo\n".encode())


def test_sendmail_is_found_on_path_then_in_the_fallback_directories(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        (directory / "sendmail").write_text("#!/bin/sh\n")
        (directory / "sendmail").chmod(0o755)
    (tmp_path / "sendmail").write_text("not executable")
    assert find_sendmail(f"{tmp_path}:{first}", [str(second)]) == str(first / "sendmail")
    assert find_sendmail("", [str(tmp_path), str(second)]) == str(second / "sendmail")
    assert find_sendmail(str(tmp_path), []) is None
    assert mail.sendmail_dirs({}) == ("/usr/sbin", "/usr/lib")
    assert mail.sendmail_dirs({"ZCRON_SENDMAIL_DIRS": ""}) == ()


def test_every_mail_sendmail_did_not_take_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    mailer = Mailer("w1", clock.monotonic)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("ZCRON_SENDMAIL_DIRS", "")
    mailer.send(MSG, run(stdout_tail="hi"), [])
    assert mailer.failures == 1
    mailer.requests[7] = "loud"
    assert mailer.take({"id": 7, "pid": 4242, "at": 1.0})
    assert mailer.next_deadline() == clock.monotonic() + mail.SENDMAIL_TIMEOUT_S
    assert not mailer.take({"pid": 999, "status": 0}), "a run's exit is not the mailer's"
    assert mailer.take({"pid": 4242, "status": 75 << 8})  # EX_TEMPFAIL
    assert mailer.failures == 2 and not mailer.running
    mailer.requests[8] = "loud"
    assert mailer.take({"id": 8, "error": "cannot start"}) and mailer.failures == 3


def test_the_addresses_are_written_as_one_to_header() -> None:
    assert mail_addresses(" a@x ,b@y") == "a@x, b@y" and mail_addresses("  ") == ""
    assert os.path.basename(find_sendmail("/nonexistent", []) or "none") == "none"
