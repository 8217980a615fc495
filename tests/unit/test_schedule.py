"""Schedule files: both formats, file:line errors, names, last good version, ignore rules."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import fields
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcron.crontab import parse_crond
from zcron.errors import ScheduleError
from zcron.job import Job
from zcron.schedule import ScheduleDir, digest, is_ignored, load_paths, to_wire
from zcron.tomljobs import parse_toml

REPO = Path(__file__).resolve().parents[2]

SPEC_CROND = """\
# comment
CRON_TZ=Europe/Berlin
MAILTO=""
PATH=/usr/local/bin:/usr/bin:/bin
*/5 * * * * *   www-data  php /srv/app/artisan schedule:run   # 6 fields: seconds first
0 3 * * 1-5     backup    /usr/local/bin/nightly               # 5 fields: minute first
@hourly         root      /usr/local/sbin/rotate
"""

FULL_TOML = """\
[backup-db]
schedule      = "0 30 2 * * *"
command       = "/usr/local/bin/backup --full"
user          = "backup"
pool          = "db"
timezone      = "Europe/Berlin"
timeout       = "10m"
on_timeout    = "alert"
retries       = 2
retry_delay   = "30s"
overlap       = "forbid"
catch_up      = "last"
misfire_grace = "1m"
quorum        = true
jitter        = "250ms"
cwd           = "/srv/app"
env           = { LANG = "C.UTF-8", A = "1" }
enabled       = false
shell         = "/bin/bash"
"""


def crond(text: str, path: str = "/etc/zcron.d/app") -> list[Job]:
    jobs, errors = parse_crond(path, text, "UTC")
    assert errors == []
    return jobs


def crond_errors(text: str, path: str = "/etc/zcron.d/app") -> list[str]:
    jobs, errors = parse_crond(path, text, "UTC")
    assert errors, "expected an error"
    return [str(e) for e in errors]


def toml_errors(text: str, path: str = "jobs.toml") -> list[str]:
    jobs, errors = parse_toml(path, text, "UTC")
    assert errors and jobs == [], "expected an error and no job"
    return [str(e) for e in errors]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


# -- cron.d ---------------------------------------------------------------------------------


def test_spec_example_reads_as_cron_does():
    backup_hour, nightly, rotate = crond(SPEC_CROND)
    assert backup_hour.schedule == "*/5 * * * * *"
    assert backup_hour.user == "www-data"
    assert backup_hour.command == "php /srv/app/artisan schedule:run   # 6 fields: seconds first"
    assert nightly.schedule == "0 3 * * 1-5" and nightly.user == "backup"
    assert nightly.command == "/usr/local/bin/nightly               # 5 fields: minute first"
    assert rotate.schedule == "@hourly" and rotate.user == "root"
    for job in (backup_hour, nightly, rotate):
        assert job.timezone == "Europe/Berlin"
        assert job.shell == "/bin/sh"
        env = dict(job.env)
        assert env["MAILTO"] == "" and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert backup_hour.source == "/etc/zcron.d/app:5"
    assert rotate.source == "/etc/zcron.d/app:7"


def test_six_fields_only_when_the_first_six_tokens_are_time_fields():
    six, five, five_numeric_user = crond(
        "0 0 3 * * 1-5  backup  nightly\n"
        "0 3 * * 1-5    backup  nightly\n"
        "0 3 * * 1-5    1000    nightly --full\n"
    )
    assert six.schedule == "0 0 3 * * 1-5" and six.user == "backup"
    assert five.schedule == "0 3 * * 1-5" and five.user == "backup"
    assert five_numeric_user.schedule == "0 3 * * 1-5" and five_numeric_user.user == "1000"


def test_dash_user_is_the_workers_own_user():
    six, five = crond("* * * * * *  -  echo six\n* * * * *  -  echo five\n")
    assert (six.schedule, six.user, six.command) == ("* * * * * *", None, "echo six")
    assert (five.schedule, five.user, five.command) == ("* * * * *", None, "echo five")


def test_command_is_kept_verbatim():
    (job,) = crond("0 3 * * *  root  printf '%s\\n'  \"a  b\"  %  # not a comment to us  \n")
    assert job.command == "printf '%s\\n'  \"a  b\"  %  # not a comment to us"


def test_variable_lines_apply_to_the_jobs_below():
    first, second, third = crond(
        "@daily root one\n"
        "FOO = bar\n"
        "QUOTED='single quoted'\n"
        'DOUBLE = "double # quoted"\n'
        "SHELL=/bin/bash\n"
        "@daily root two\n"
        "TZ=America/New_York\n"
        "FOO=baz\n"
        "@daily root three\n"
    )
    assert first.env == () and first.shell == "/bin/sh" and first.timezone == "UTC"
    assert dict(second.env) == {
        "FOO": "bar",
        "QUOTED": "single quoted",
        "DOUBLE": "double # quoted",
        "SHELL": "/bin/bash",
    }
    assert second.shell == "/bin/bash" and second.timezone == "UTC"
    assert third.timezone == "America/New_York"
    assert dict(third.env)["TZ"] == "America/New_York" and dict(third.env)["FOO"] == "baz"
    assert list(third.env) == sorted(third.env)


def test_cron_tz_sets_the_zone_the_schedule_is_read_in():
    (job,) = crond("CRON_TZ=Asia/Tokyo\n0 9 * * *  root  wake\n")
    assert job.timezone == "Asia/Tokyo"
    assert job.next_after(0) == 86400.0  # 09:00 JST is 00:00Z


def test_crlf_line_endings_are_read():
    (job,) = crond("FOO=bar\r\n@daily root run\r\n")
    assert job.command == "run" and dict(job.env) == {"FOO": "bar"}


def test_name_comment_names_the_job_below():
    named, unnamed = crond("# name: nightly-backup\n@daily root backup\n\n@daily root other\n")
    assert named.name == "nightly-backup"
    assert unnamed.name.startswith("app-")


def test_name_comment_must_be_directly_above():
    (job,) = crond("# name: nightly-backup\n\n@daily root backup\n")
    assert job.name != "nightly-backup"
    (job,) = crond("# name: nightly-backup\n# another comment\n@daily root backup\n")
    assert job.name != "nightly-backup"


def test_automatic_names_are_stable_when_other_lines_change():
    before = crond("@daily root a\n@hourly root b\n")
    after = crond(
        "# a new comment\nX=1\n@weekly root new\n@daily root a\n@hourly root b --edited\n"
    )
    assert before[0].name == after[1].name
    assert re.fullmatch(r"app-[0-9a-f]{8}", before[0].name)
    assert before[1].name != after[2].name


def test_automatic_names_ignore_spacing_of_the_time_fields():
    (a,) = crond("0  3 * * *   root run\n")
    (b,) = crond("0 3 * * * root run\n")
    assert a.name == b.name


def test_identical_lines_are_numbered():
    first, second, third = crond("@daily root a\n@daily root a\n@daily root a\n")
    assert second.name == first.name + "-2" and third.name == first.name + "-3"


def test_automatic_name_uses_a_safe_file_stem():
    (job,) = crond("@daily root a\n", path="/x/my jobs.cron")
    assert re.fullmatch(r"my_jobs-[0-9a-f]{8}", job.name)


@pytest.mark.parametrize(
    "line, message",
    [
        ("61 * * * *  root  x", "bad minute field '61'"),
        ("* * * * 8  root  x", "bad day-of-week field '8'"),
        ("@fortnightly root x", "unknown schedule alias"),
        ("* * * * *  root", "then a user (- = the worker's own), then a command"),
        ("@daily root", "expected an @alias, then a user"),
        ("*/5 * * * * /usr/bin/foo --x", "bad user '/usr/bin/foo'"),
        ("0 0 30 2 *  root  x", "never fires"),
        ("CRON_TZ=Mars/Base", "CRON_TZ: unknown timezone 'Mars/Base'"),
        ("TZ=nowhere", "TZ: unknown timezone"),
        ("SHELL=", "SHELL: expected the path of a shell"),
        ("# name: bad name!", "bad job name 'bad name!'"),
        ("garbage", "expected 5 time fields"),
    ],
)
def test_cron_d_errors_name_the_line_and_the_problem(line, message):
    (error,) = crond_errors(f"# first line\n{line}\n")
    assert error.startswith("/etc/zcron.d/app:2: ")
    assert message in error


def test_every_bad_line_of_a_file_is_reported():
    errors = crond_errors("61 * * * * root x\n@daily root ok\nTZ=nowhere\n@hourly root\n")
    assert [e.split(":")[1] for e in errors] == ["1", "3", "4"]


# -- TOML -------------------------------------------------------------------------------------


def test_toml_reads_every_key():
    (job,), errors = parse_toml("/etc/zcron.d/db.toml", FULL_TOML, "UTC")
    assert errors == []
    assert job == Job(
        name="backup-db",
        schedule="0 30 2 * * *",
        timezone="Europe/Berlin",
        command="/usr/local/bin/backup --full",
        source="/etc/zcron.d/db.toml:1",
        shell="/bin/bash",
        user="backup",
        pool="db",
        timeout=600.0,
        on_timeout="alert",
        retries=2,
        retry_delay=30.0,
        overlap="forbid",
        catch_up="last",
        misfire_grace=60.0,
        quorum=True,
        jitter=0.25,
        cwd="/srv/app",
        env=(("A", "1"), ("LANG", "C.UTF-8")),
        enabled=False,
    )


def test_toml_defaults():
    (job,), errors = parse_toml("j.toml", '[j]\nschedule = "@daily"\ncommand = ["true"]\n', "UTC")
    assert errors == []
    assert job.command == ("true",) and job.user is None and job.timezone == "UTC"
    assert (job.pool, job.timeout, job.retries, job.overlap, job.catch_up) == (
        "default",
        None,
        0,
        "allow",
        "all",
    )
    assert job.misfire_grace == 60.0 and job.enabled and job.env == ()


@pytest.mark.parametrize(
    "text, size",
    [("65536", 65536), ('"64K"', 64 << 10), ('"512M"', 512 << 20), ('"2G"', 2 << 30),
     ('"1t"', 1 << 40), ('"4096"', 4096)],
)  # fmt: skip
def test_toml_memory_max_reads_sizes_in_powers_of_1024(text, size):
    source = f'[j]\nschedule = "@daily"\ncommand = "x"\nmemory_max = {text}\n'
    (job,), errors = parse_toml("j.toml", source, "UTC")
    assert errors == [] and job.memory_max == size


def test_toml_memory_max_defaults_to_no_limit():
    (job,), _ = parse_toml("j.toml", '[j]\nschedule = "@daily"\ncommand = "x"\n', "UTC")
    assert job.memory_max is None


def test_toml_timezone_defaults_to_the_given_local_zone():
    (job,), _ = parse_toml("j.toml", '[j]\nschedule = "@daily"\ncommand = "x"\n', "Asia/Tokyo")
    assert job.timezone == "Asia/Tokyo"


BAD_VALUES = [
    ("schedule", '"61 * * * *"', "schedule: bad minute field '61'"),
    ("schedule", '"@reboot"', "@reboot is not supported"),
    ("schedule", "5", "schedule: expected a non-empty string"),
    ("command", '""', "command: expected a non-empty string"),
    ("command", "[]", "command: expected a string (run by the shell) or a list of strings"),
    ("command", "[1, 2]", "command: expected a string"),
    ("command", '["", "x"]', "command: the program (first item) must be non-empty"),
    ("user", '"bad user"', "user: expected a user name"),
    ("user", "0", "user: expected a user name"),
    ("pool", '"a pool"', "pool: expected a name"),
    ("timezone", '"Mars/Base"', "timezone: unknown timezone 'Mars/Base'"),
    ("timeout", '"10 minutes"', 'timeout: expected a duration like "250ms"'),
    ("timeout", '"0s"', "timeout: expected a duration above zero"),
    ("timeout", "-1", "timeout: expected a duration"),
    ("timeout", "inf", "timeout: expected a duration"),
    ("on_timeout", '"ignore"', "on_timeout: expected one of kill, alert, got 'ignore'"),
    ("retries", "-1", "retries: expected a whole number >= 0"),
    ("retries", "1.5", "retries: expected a whole number >= 0"),
    ("retries", "true", "retries: expected a whole number >= 0"),
    ("retry_delay", '"soon"', "retry_delay: expected a duration"),
    ("overlap", '"sometimes"', "overlap: expected one of allow, forbid, replace"),
    ("catch_up", '"some"', "catch_up: expected one of none, last, all"),
    ("misfire_grace", "true", "misfire_grace: expected a duration"),
    ("quorum", '"yes"', "quorum: expected true or false"),
    ("jitter", '"1 fortnight"', "jitter: expected a duration"),
    ("cwd", '""', "cwd: expected a non-empty string"),
    ("env", '"LANG=C"', 'env: expected a table of NAME = "value"'),
    ("env", "{ LANG = 1 }", 'LANG: expected NAME = "value"'),
    ("env", '{ "BAD NAME" = "x" }', "BAD NAME: expected NAME"),
    ("enabled", "1", "enabled: expected true or false"),
    ("shell", "[]", "shell: expected a non-empty string"),
    ("memory_max", '"lots"', 'memory_max: expected a size like "64K", "512M", "2G" or bytes'),
    ("memory_max", '"1.5G"', "memory_max: expected a size like"),
    ("memory_max", '"0M"', "memory_max: expected a size above zero"),
    ("memory_max", "-1", "memory_max: expected a size above zero"),
    ("memory_max", "true", "memory_max: expected a size like"),
    ("colour", '"red"', "colour: unknown key (known: schedule, command, user"),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES)
def test_toml_bad_value_names_file_line_key_and_what_is_allowed(key, value, message):
    lines = {"schedule": '"@daily"', "command": '"true"'}
    lines[key] = value
    text = "# jobs\n\n[job]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items())
    line = 4 + list(lines).index(key)
    (error,) = toml_errors(text)
    assert error.startswith(f"jobs.toml:{line}: [job] ")
    assert message in error


def test_toml_reports_every_bad_key():
    text = '[job]\nschedule = "@daily"\ncommand = "x"\nretries = -1\nquorum = "no"\n'
    errors = toml_errors(text)
    assert [e.split(":")[1] for e in errors] == ["4", "5"]


@pytest.mark.parametrize("missing", ["schedule", "command"])
def test_toml_required_keys(missing):
    lines = {"schedule": '"@daily"', "command": '"x"'}
    del lines[missing]
    text = "\n[job]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items())
    (error,) = toml_errors(text)
    assert error == f"jobs.toml:2: [job] has no {missing} (it is required)"


def test_toml_job_names_are_checked():
    (error,) = toml_errors('["bad name"]\nschedule = "@daily"\ncommand = "x"\n')
    assert error.startswith("jobs.toml:1: bad job name 'bad name'")


def test_toml_top_level_value_is_not_a_job():
    (error,) = toml_errors('\nschedule = "@daily"\n')
    assert error.startswith("jobs.toml:2: 'schedule' is not a job table")


def test_toml_sub_table_is_an_unknown_key():
    (error,) = toml_errors('[job]\nschedule = "@daily"\ncommand = "x"\n\n[job.extra]\na = 1\n')
    assert "[job] extra: unknown key" in error


def test_toml_syntax_error_names_its_line_and_column():
    (error,) = toml_errors('[job]\nschedule = "@daily"\ncommand = \n')
    assert error.startswith("jobs.toml:3:11: ")
    (error,) = toml_errors("[job]\nschedule = [\n")
    assert error.startswith("jobs.toml:")


def test_toml_key_lines_are_found_in_the_right_table():
    text = (
        '[a]\nschedule = "@daily"\ncommand = "x"\nretries = 1\n\n'
        '[b]\nschedule = "@daily"\ncommand = "x"\nretries = -1\n'
    )
    _, (error,) = parse_toml("jobs.toml", text, "UTC")
    assert str(error).startswith("jobs.toml:9: [b] retries")


def test_toml_deep_nesting_is_an_error_not_a_crash():
    (error,) = toml_errors("a = " + "[" * 5000)
    assert error.startswith("jobs.toml:")


# -- directories, duplicates, last good version -------------------------------------------------


def test_duplicate_names_across_files_keep_the_first(tmp_path):
    write(tmp_path, "a.toml", '\n\n[x]\nschedule = "@daily"\ncommand = "first"\n')
    write(tmp_path, "b", "# name: x\n@hourly root second\n")
    result = ScheduleDir(str(tmp_path)).load()
    assert result.jobs["x"].command == "first"
    (error,) = result.errors
    assert (
        str(error)
        == f'{tmp_path}/b:2: job "x" also defined at {tmp_path}/a.toml:3: this definition is '
        "ignored, the rest of its file is loaded"
    )


def test_duplicate_names_in_one_file(tmp_path):
    write(tmp_path, "a", "# name: x\n@daily root one\n# name: x\n@daily root two\n")
    result = ScheduleDir(str(tmp_path)).load()
    assert result.jobs["x"].command == "one"
    assert [str(e) for e in result.errors] == [
        f'{tmp_path}/a:4: job "x" also defined at {tmp_path}/a:2: this definition is ignored, '
        "the rest of its file is loaded"
    ]


def test_a_duplicate_is_reported_without_claiming_an_old_version_stays(tmp_path):
    write(tmp_path, "a", "# name: x\n@daily root one\n# name: x\n@daily root two\n@hourly - y\n")
    result = ScheduleDir(str(tmp_path)).load()
    assert len(result.jobs) == 2  # the rest of the file loaded
    (said,) = result.appeared
    assert "this definition is ignored" in said and "last good version" not in said


def test_a_broken_file_says_whether_a_good_version_stays_in_force(tmp_path):
    schedules = ScheduleDir(str(tmp_path))
    write(tmp_path, "a.toml", "[x]\nschedule = \n")
    (said,) = schedules.load().appeared
    assert said.startswith(f"{tmp_path}/a.toml:2:") and "no job of this file is loaded" in said
    write(tmp_path, "a.toml", '[x]\nschedule = "@daily"\ncommand = "x"\n')
    assert schedules.load().appeared == []
    write(tmp_path, "a.toml", "[x]\nschedule = \n")
    (said,) = schedules.load().appeared
    assert said.endswith("(the file's last good version stays in force)")


def test_each_error_appears_once_not_at_every_reload(tmp_path):
    schedules = ScheduleDir(str(tmp_path))
    write(tmp_path, "a", "not a cron line\n")
    first = schedules.load()
    assert len(first.appeared) == 1 and len(first.errors) == 1
    write(tmp_path, "b", "@daily - true\n")
    again = schedules.load()
    assert again.appeared == [] and len(again.errors) == 1  # still broken, still listed
    write(tmp_path, "a", "\n\nnot a cron line\n")
    assert [m.split(": ")[0] for m in schedules.load().appeared] == [f"{tmp_path}/a:3"]


def test_files_are_read_in_lexical_order(tmp_path):
    write(tmp_path, "b.toml", '[b]\nschedule = "@daily"\ncommand = "x"\n')
    write(tmp_path, "a", "@daily root x\n")
    write(tmp_path, "c.toml", '[c]\nschedule = "@daily"\ncommand = "x"\n')
    jobs = ScheduleDir(str(tmp_path)).load().jobs
    assert [job.source.rsplit("/", 1)[1] for job in jobs.values()] == [
        "a:1",
        "b.toml:1",
        "c.toml:1",
    ]


def test_a_broken_file_keeps_its_last_good_version(tmp_path):
    schedules = ScheduleDir(str(tmp_path))
    write(tmp_path, "app", "# name: one\n@daily root one\n")
    write(tmp_path, "other.toml", '[other]\nschedule = "@daily"\ncommand = "x"\n')
    first = schedules.load()
    assert set(first.jobs) == {"one", "other"} and first.errors == [] and first.changed
    write(tmp_path, "app", "# name: one\n@daily root one --changed\n61 * * * * root bad\n")
    broken = schedules.load()
    assert broken.jobs["one"].command == "one" and set(broken.jobs) == {"one", "other"}
    assert [str(e).split(": ")[0] for e in broken.errors] == [f"{tmp_path}/app:3"]
    assert not broken.changed
    write(tmp_path, "app", "# name: one\n@daily root one --changed\n")
    fixed = schedules.load()
    assert fixed.jobs["one"].command == "one --changed" and fixed.errors == [] and fixed.changed


def test_a_new_broken_file_adds_nothing(tmp_path):
    schedules = ScheduleDir(str(tmp_path))
    write(tmp_path, "good", "# name: good\n@daily root x\n")
    schedules.load()
    write(tmp_path, "new", "# name: new\n@daily root x\n61 * * * * root y\n")
    result = schedules.load()
    assert set(result.jobs) == {"good"} and len(result.errors) == 1 and not result.changed


def test_a_deleted_file_takes_its_jobs_away(tmp_path):
    schedules = ScheduleDir(str(tmp_path))
    write(tmp_path, "a", "# name: a\n@daily root x\n")
    path = write(tmp_path, "b", "# name: b\n@daily root x\n")
    assert set(schedules.load().jobs) == {"a", "b"}
    path.unlink()
    result = schedules.load()
    assert set(result.jobs) == {"a"} and result.changed


def test_a_deleted_broken_file_takes_its_last_good_version_away(tmp_path):
    schedules = ScheduleDir(str(tmp_path))
    path = write(tmp_path, "b", "# name: b\n@daily root x\n")
    schedules.load()
    path.write_text("61 * * * * root x\n")
    assert set(schedules.load().jobs) == {"b"}
    path.unlink()
    assert schedules.load().jobs == {}


def test_reload_without_edits_is_unchanged(tmp_path):
    schedules = ScheduleDir(str(tmp_path))
    write(tmp_path, "a", "@daily root x\n")
    assert schedules.load().changed
    assert not schedules.load().changed
    write(tmp_path, "a", "# a comment moves the line\n@daily root x\n")
    assert not schedules.load().changed


def test_missing_directory_is_an_error_not_a_crash(tmp_path):
    result = ScheduleDir(str(tmp_path / "nope")).load()
    assert result.jobs == {} and "cannot read directory" in str(result.errors[0])


def test_invalid_utf8_names_its_line(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"@daily root x\n@daily root \xff\n")
    (error,) = load_paths([str(path)]).errors
    assert str(error) == f"{path}:2: not valid UTF-8 text"


@pytest.mark.parametrize(
    "name, ignored",
    [
        (".hidden", True),
        ("jobs~", True),
        ("jobs.swp", True),
        (".jobs.toml.swp", True),
        ("jobs.bak", True),
        ("jobs.dpkg-old", True),
        ("jobs.dpkg-dist", True),
        ("jobs.rpmnew", True),
        ("jobs.rpmsave", True),
        ("jobs", False),
        ("jobs.toml", False),
        ("backup-db.cron", False),
        ("/etc/zcron.d/.hidden", True),
    ],
)
def test_ignore_rules(name, ignored):
    assert is_ignored(name) is ignored


def test_ignored_files_and_directories_are_skipped(tmp_path):
    for name in (".hidden", "jobs~", "jobs.bak", "jobs.dpkg-new", "jobs.rpmsave", "x.swp"):
        write(tmp_path, name, "61 * * * * root broken\n")
    (tmp_path / "subdir").mkdir()
    write(tmp_path, "real", "# name: real\n@daily root x\n")
    result = ScheduleDir(str(tmp_path)).load()
    assert set(result.jobs) == {"real"} and result.errors == []


def test_load_paths_takes_files_and_directories(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    write(directory, "a", "# name: a\n@daily root x\n")
    single = write(tmp_path, "single.toml", '[s]\nschedule = "@daily"\n')
    result = load_paths([str(directory), str(single), str(tmp_path / "missing")])
    assert set(result.jobs) == {"a"}
    messages = [str(e) for e in result.errors]
    assert f"{single}:1: [s] has no command (it is required)" in messages
    assert any(m.startswith(f"{tmp_path}/missing:0: cannot read") for m in messages)


# -- digest, wire, Job --------------------------------------------------------------------------


def test_digest_is_short_stable_and_order_free():
    a, b = crond("# name: a\n@daily root x\n# name: b\n@hourly root y\n")
    assert re.fullmatch(r"[0-9a-f]{16}", digest({"a": a, "b": b}))
    assert digest({"a": a, "b": b}) == digest({"b": b, "a": a})
    (moved,) = crond("\n\n# name: a\n@daily root x\n", path="/elsewhere/app")
    assert digest({"a": moved}) == digest({"a": a})
    (edited,) = crond("# name: a\n@daily root x --new\n")
    assert digest({"a": edited}) != digest({"a": a})
    assert digest({}) != digest({"a": a})


def test_digest_is_that_of_one_json_list_of_the_jobs_fields():
    # Peers compare digests: fed job by job, it must equal the one-document form.
    a, b = crond("# name: a\n@daily root x\nA=1\n# name: b\n@hourly - y\n")
    names = [f.name for f in fields(Job) if f.compare and f.name != "source"]
    canonical = [[[name, getattr(job, name)] for name in names] for job in (a, b)]
    text = json.dumps(canonical, separators=(",", ":"))
    assert digest({"b": b, "a": a}) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert digest({}) == hashlib.sha256(b"[]").hexdigest()[:16]


def test_to_wire_is_a_small_msgpack_summary():
    (job,) = crond("# name: a\n@daily root x\n")
    wire = to_wire(job)
    assert wire == {
        "name": "a",
        "schedule": "@daily",
        "timezone": "UTC",
        "pool": "default",
        "enabled": True,
        "source": "/etc/zcron.d/app:2",
    }
    assert msgpack.unpackb(msgpack.packb(wire)) == wire


def test_job_builds_its_schedule_and_is_hashable():
    job = Job(name="j", schedule="*/5 * * * * *", timezone="UTC", command=("true",), source="x:1")
    assert job.next_after(0) == 5.0 and job.next_after(5) == 10.0
    assert hash(job) == hash(Job("j", "*/5 * * * * *", "UTC", ("true",), "x:1"))
    with pytest.raises(ValueError, match="bad minute field"):
        Job(name="j", schedule="61 * * * *", timezone="UTC", command="x", source="x:1")


# -- the examples and a fuzz -------------------------------------------------------------------


def test_every_example_schedule_file_loads():
    directory = REPO / "etc" / "zcron.d"
    result = load_paths([str(directory)])
    assert result.errors == []
    assert len(result.jobs) >= 3
    for job in result.jobs.values():  # a chained job's parents are its schedule
        chained = bool(job.after) and set(job.after) <= set(result.jobs)
        assert job.next_after(1_800_000_000.0) is not None or chained
    assert all(is_ignored(name) or (directory / name).is_file() for name in os.listdir(directory))


CRON_TOKENS = st.sampled_from(
    ["*", "*/5", "0", "1-5", "mon", "jan", "61", "@daily", "@reboot", "@", "root", "-", "x=1",
     "X = 'y", "CRON_TZ=UTC", "TZ=Nope", "SHELL=", "# name: a", "# name:", "#", "%", "\t",
     "\\", "\"", "'", "\0", "\r", "é", "1,2,3", "*/0", "5-1", "0-0/1", "9999", "?", "L"]
)  # fmt: skip
TOML_TOKENS = st.sampled_from(
    ["[a]", "[[a]]", "[a.b]", '["a b"]', "schedule", "command", "retries", "env", "=", '"x"',
     '"@daily"', '"* * * * * *"', "[", "]", "{", "}", "1", "-1", "true", "inf", "nan",
     '"10s"', "timezone", '"UTC"', '"Nope"', "\n", " ", ",", '"\\u0000"', "1979-05-27", "#"]
)  # fmt: skip


def assert_jobs_or_schedule_errors(result: tuple[list, list]) -> None:
    jobs, errors = result
    assert all(isinstance(job, Job) for job in jobs)
    assert all(isinstance(e, ScheduleError) and re.match(r".+:\d+: ", str(e)) for e in errors)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(st.lists(CRON_TOKENS, max_size=9).map(" ".join), max_size=8).map("\n".join),
    )
)
def test_any_cron_d_text_gives_jobs_or_schedule_errors(text):
    assert_jobs_or_schedule_errors(parse_crond("fuzz", text, "UTC"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(TOML_TOKENS, max_size=40).map(" ".join),
        st.lists(st.lists(TOML_TOKENS, max_size=5).map(" ".join), max_size=12).map("\n".join),
    )
)
def test_any_toml_text_gives_jobs_or_schedule_errors(text):
    assert_jobs_or_schedule_errors(parse_toml("fuzz.toml", text, "UTC"))
