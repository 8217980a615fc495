"""The command line as a user meets it: help, usage errors, --json output, ordering,
and the tools a test needs (skipped, never installed, when missing)."""

from __future__ import annotations

import gc
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import ensure_tool
from zcron.cli import COMMANDS, USAGE, main
from zcron.config import parse_config
from zcron.errors import ConfigError
from zcron.keyfiles import client_key_name, key_names
from zcron.log import iso_utc
from zcron.tomljobs import parse_toml

REPO = Path(__file__).resolve().parents[2]


def zcron(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_opens_with_what_zcron_is_for_the_user(capsys) -> None:
    code, out, _ = zcron(capsys, "--help")
    assert code == 0 and out.startswith("zcron: distributed cron")
    assert "spec" not in out and "Usage:" in out and "Options:" in out


def test_help_into_a_closed_pipe_exits_without_a_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `zcron --help | head` once head has exited
    try:
        done = subprocess.run(
            [sys.executable, "-m", "zcron", "--help"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 1


def test_an_unknown_command_is_one_line_and_the_usage(capsys) -> None:
    code, out, err = zcron(capsys, "runz")
    first, *rest = err.splitlines()
    assert code == 2 and out == ""
    assert first == "zcron: unknown command 'runz' (did you mean \"run\"?)"
    assert rest[0] == "Usage:" and all(line.startswith("  zcron ") for line in rest[1:])
    assert "Warning" not in err


def test_stray_arguments_are_named_without_docopts_warning(capsys) -> None:
    code, _, err = zcron(capsys, "runs", "a", "b")
    assert code == 2 and err.splitlines()[0] == "zcron runs: unexpected b"
    assert "Warning" not in err and err.splitlines()[2].startswith("  zcron runs ")
    code, _, err = zcron(capsys, "run")
    assert code == 2 and err.splitlines()[0] == "zcron run: missing arguments"


def test_command_help_shows_that_command_and_its_options_only(capsys) -> None:
    code, out, _ = zcron(capsys, "runs", "--help")
    assert code == 0 and out.startswith("zcron runs: Run records from the sink")
    usage = [line for line in out.splitlines() if line.startswith("  zcron ")]
    assert usage == [line for line in USAGE.splitlines() if line.startswith("  zcron runs ")]
    assert "--status STATUS" in out and "--limit N" in out and "--config FILE" in out
    assert "--schedules" not in out and "--at TIME" not in out


def test_every_command_in_the_usage_has_a_summary_and_a_handler(capsys) -> None:
    usage = {line.split()[1] for line in USAGE.splitlines() if line.startswith("  zcron ")}
    assert usage - {"--version"} == set(COMMANDS)
    for command in COMMANDS:
        code, out, _ = zcron(capsys, command, "--help")
        assert code == 0 and out.startswith(f"zcron {command}: "), out  # from Commands:


def test_main_called_in_process_leaves_the_garbage_collector_alone(capsys) -> None:
    # only as the program (argv None) does a client command freeze it before exit
    frozen = gc.get_freeze_count()
    zcron(capsys, "push", "-c", "/nonexistent", "--", "true")
    assert gc.get_freeze_count() == frozen


def test_help_after_double_dash_belongs_to_the_pushed_command(capsys) -> None:
    # `push -- grep --help` must not print zcron's help; it fails here on the missing
    # scheduler config instead (a usage error would be exit 2 with the usage).
    code, out, _ = zcron(capsys, "push", "-c", "/nonexistent", "--", "grep", "--help")
    assert "Usage:" not in out and code == 2


def write_schedules(tmp_path: Path) -> Path:
    directory = tmp_path / "zcron.d"
    directory.mkdir()
    (directory / "b").write_text("# name: b-late\n@daily - x\n# name: b-early\n@hourly - x\n")
    (directory / "a.toml").write_text(
        '[zulu]\nschedule = "0 0 * * * *"\ncommand = "x"\n\n'
        '[alpha]\nschedule = "@daily"\ncommand = "x"\ntimezone = "Europe/Berlin"\n'
    )
    return directory


def test_check_lists_jobs_by_file_and_line(tmp_path: Path, capsys) -> None:
    code, out, _ = zcron(capsys, "check", "-c", "/dev/null", str(write_schedules(tmp_path)))
    names = [line.split()[1] for line in out.splitlines()]
    assert code == 0 and names == ["zulu", "alpha", "b-late", "b-early"]


def test_check_json_is_one_object_per_job_and_problem(tmp_path: Path, capsys) -> None:
    directory = write_schedules(tmp_path)
    (directory / "c").write_text("bad line\n")
    code, out, _ = zcron(capsys, "check", "-c", "/dev/null", "--json", str(directory))
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2
    jobs = [r for r in rows if r["kind"] == "job"]
    assert [(r["job"], Path(r["file"]).name, r["line"]) for r in jobs] == [
        ("zulu", "a.toml", 1),
        ("alpha", "a.toml", 5),
        ("b-late", "b", 2),
        ("b-early", "b", 4),
    ]
    alpha = jobs[1]
    assert alpha["schedule"] == "@daily" and alpha["timezone"] == "Europe/Berlin"
    assert len(alpha["next"]) == 3 and all(isinstance(t, float) for t in alpha["next"])
    assert alpha["next"][1] - alpha["next"][0] in (82800.0, 86400.0, 90000.0)
    (error,) = [r for r in rows if r["kind"] == "error"]
    assert Path(error["file"]).name == "c" and error["line"] == 1 and error["message"]


def test_next_json_gives_utc_seconds(tmp_path: Path, capsys) -> None:
    directory = write_schedules(tmp_path)
    config = tmp_path / "zcron.conf"
    config.write_text(f'[scheduler]\nschedules = "{directory}"\n')
    code, out, _ = zcron(capsys, "next", "-c", str(config), "-n", "2", "--json", "zulu")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and row["job"] == "zulu" and row["line"] == 1
    assert len(row["next"]) == 2 and row["next"][1] - row["next"][0] == 3600
    assert row["next"][0] % 3600 == 0


def test_toml_syntax_errors_are_file_line_column() -> None:
    _, (error,) = parse_toml("jobs.toml", '[a]\nschedule = "@daily"\ncommand = x\n', "UTC")
    assert str(error).startswith("jobs.toml:3:11: ") and error.column == 11
    with pytest.raises(ConfigError, match=r"^z\.conf:2:8: "):
        parse_config("[sink]\nhttp = nope\n", "z.conf")


def test_unknown_keys_suggest_the_closest_known_one() -> None:
    _, errors = parse_toml("jobs.toml", '[a]\nschedule = "@daily"\ncomand = "x"\n', "UTC")
    said = 'jobs.toml:3: [a] comand: unknown key (did you mean "command"?) (known: schedule'
    assert any(str(e).startswith(said) for e in errors)
    with pytest.raises(ConfigError, match=r'unknown key \[worker\] slot \(did you mean "slots"'):
        parse_config("[worker]\nslot = 2\n", "z.conf")
    with pytest.raises(ConfigError, match=r'unknown section \[sinks\] \(did you mean "sink"'):
        parse_config("[sinks]\n", "z.conf")


def test_key_names_are_what_glob_finds(tmp_path: Path) -> None:
    for name in ("cli.key_secret", "a.key_secret", "a-b.key_secret", ".hidden.key_secret",
                 "b.key", "b.key.bak", "key_secret"):  # fmt: skip
        (tmp_path / name).write_text("")
    found = sorted(glob.glob(str(tmp_path / "*.key_secret")))
    assert [
        str(tmp_path / f"{n}.key_secret") for n in key_names(str(tmp_path), ".key_secret")
    ] == found
    assert key_names(str(tmp_path), ".key") == ["b"]
    assert key_names(str(tmp_path / "absent"), ".key") == []
    assert client_key_name(str(tmp_path)) == "cli"
    (tmp_path / "cli.key_secret").unlink()
    assert client_key_name(str(tmp_path)) == "a"  # by name, as before: a before a-b


def test_log_lines_show_iso_times_not_epoch_seconds() -> None:
    assert iso_utc(1796187397.063) == "2026-12-02T04:56:37.063+00:00"


def test_a_missing_tool_skips_the_test_with_the_reason() -> None:
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-zcron not found"):
        ensure_tool("no-such-tool-zcron", "some-package")
    assert ensure_tool("sh", "dash").endswith("/sh")


def test_bash_completion_completes_commands_and_options() -> None:
    script = (
        f"source {REPO}/completion/bash/zcron; "
        "COMP_WORDS=(zcron ru); COMP_CWORD=1; _zcron; echo ${COMPREPLY[@]}; "
        "COMP_WORDS=(zcron runs --st); COMP_CWORD=2; _zcron; echo ${COMPREPLY[@]}"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert done.stdout.splitlines() == ["run runs", "--status"], done.stderr


def test_zsh_completion_parses() -> None:
    zsh = ensure_tool("zsh", "zsh")
    done = subprocess.run([zsh, "-n", str(REPO / "completion" / "zsh" / "_zcron")], timeout=10)
    assert done.returncode == 0
