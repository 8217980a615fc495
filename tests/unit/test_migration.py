"""Migration from cron: Debian/cronie /etc/cron.d files drop in unchanged, and `zcron check`
warns where zcron reads a line differently from cron (or where cron's own rule surprises)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO
from zcron.schedule import ScheduleDir, load_paths

pytestmark = pytest.mark.timeout(30)

# As Debian 12 ships them (e2fsprogs, php-common, sysstat, certbot).
DEBIAN_FILES = {
    "e2scrub_all": """\
30 3 * * 0 root test -e /run/systemd/system || SERVICE_MODE=1 /usr/lib/x86_64-linux-gnu/e2fsprogs/e2scrub_all_cron
10 3 * * * root test -e /run/systemd/system || SERVICE_MODE=1 /sbin/e2scrub_all -A -r
""",  # noqa: E501 (verbatim)
    "php": """\
# /etc/cron.d/php@PHP_VERSION@: crontab fragment for PHP
#  This purges session files in session.save_path older than X,
#  where X is defined in seconds as the largest value of
#  session.gc_maxlifetime from all your SAPI php.ini files
#  or 24 minutes if not defined.  The script triggers only
#  when session.save_handler=files.
#
#  WARNING: The scripts tries hard to honour all relevant
#  session PHP options, but if you do something unusual
#  you have to disable this script and take care of your
#  sessions yourself.

# Look for and purge old sessions every 30 minutes
09,39 *     * * *     root   [ -x /usr/lib/php/sessionclean ] && if [ ! -d /run/systemd/system ]; then /usr/lib/php/sessionclean; fi
""",  # noqa: E501 (verbatim)
    "sysstat": """\
# The first element of the path is a directory where the debian-sa1
# script is located
PATH=/usr/lib/sysstat:/usr/sbin:/usr/sbin:/usr/bin:/sbin:/bin

# Activity reports every 10 minutes everyday
5-55/10 * * * * root command -v debian-sa1 > /dev/null && debian-sa1 1 1

# Additional run at 23:59 to rotate the statistics file
59 23 * * * root command -v debian-sa1 > /dev/null && debian-sa1 60 2
""",
    "certbot": """\
# /etc/cron.d/certbot: crontab entries for the certbot package
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin

0 */12 * * * root test -x /usr/bin/certbot -a \\! -d /run/systemd/system && perl -e 'sleep int(rand(43200))' && certbot -q renew
""",  # noqa: E501 (verbatim)
}

# What an operator's own cronie file looks like, with every construct zcron warns about.
CRONIE_FILE = """\
MAILTO=ops@example.com
CRON_TZ=Europe/Berlin
@reboot      root  /usr/local/bin/warm-cache
0 2 * * *    root  /usr/local/bin/backup > /var/log/backup-$(date +\\%F).log 2>&1
0 4 * * *    root  mail -s report ops@example.com%Nightly report%
0 0 1 * 1    root  /usr/local/bin/first-day-or-monday
0 6 * * 1 *  echo  hello
TZ=UTC
*/5 * * * *  www-data  php /srv/app/artisan schedule:run
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_debian_cron_d_files_load_unchanged_without_warnings(tmp_path: Path) -> None:
    for name, text in DEBIAN_FILES.items():
        write(tmp_path, name, text)
    result = load_paths([str(tmp_path)])
    assert (result.errors, result.warnings) == ([], [])
    assert len(result.jobs) == 6
    by_file = {job.source.rsplit(":", 1)[0]: job for job in result.jobs.values()}
    php = by_file[str(tmp_path / "php")]
    assert php.user == "root" and php.schedule == "09,39 * * * *"
    assert php.command.startswith("[ -x /usr/lib/php/sessionclean ] && if")
    certbot = by_file[str(tmp_path / "certbot")]
    assert certbot.shell == "/bin/sh" and ("PATH", DEBIAN_PATH) in certbot.env
    sa1 = [job for job in result.jobs.values() if job.schedule.startswith("5-55/10")]
    assert sa1[0].next_after(1_800_000_000.0) % 600 == 300  # :05, :15, ... :55


DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin"


def test_cronie_file_loads_with_a_warning_per_difference(tmp_path: Path) -> None:
    path = write(tmp_path, "ops", CRONIE_FILE)
    result = load_paths([str(path)])
    assert result.errors == []
    warned = {w.line: w.message for w in result.warnings}
    assert all(str(w).startswith(f"{path}:{w.line}: ") for w in result.warnings)
    assert 1 not in warned, "MAILTO is honoured: cron's mail goes to sendmail"
    assert "@reboot is not supported" in warned[3] and "skipped" in warned[3]
    assert "% in the command" in warned[5]
    assert 4 not in warned, "\\% is a literal % for cron, and for the shell too"
    assert "EITHER" in warned[6] and "'1'" in warned[6]
    assert "six time fields" in warned[7] and "'echo'" in warned[7]
    assert "TZ also sets the timezone" in warned[8]
    assert sorted(warned) == [3, 5, 6, 7, 8]
    assert len(result.jobs) == 5, "every line but @reboot is a job"
    assert not any("warm-cache" in job.command for job in result.jobs.values())


def test_mailto_empty_and_unrestricted_days_are_not_warned_about(tmp_path: Path) -> None:
    text = 'MAILTO=""\n0 0 1 * *  root  monthly\n0 0 * * 1  root  weekly\n* * * * * *  -  tick\n'
    result = load_paths([str(write(tmp_path, "quiet", text))])
    assert (result.errors, result.warnings, len(result.jobs)) == ([], [], 3)


def test_schedule_dir_reports_warnings_on_every_load(tmp_path: Path) -> None:
    write(tmp_path, "ops", "@reboot root x\n# name: real\n@daily root y\n")
    schedules = ScheduleDir(str(tmp_path))
    for _ in range(2):
        result = schedules.load()
        assert set(result.jobs) == {"real"} and result.errors == []
        assert [w.line for w in result.warnings] == [1]


def test_zcron_check_prints_warnings_and_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, "ops", CRONIE_FILE)
    result = subprocess.run(
        [sys.executable, "-m", "zcron", "check", "-c", "/dev/null", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 5
    assert warnings[0].startswith(f"warning: {path}:3: @reboot")
    assert "5 jobs, 0 errors, 5 warnings" in result.stderr
    assert result.stdout.count(f"{path}:") == 5


def test_bundled_examples_load_without_warnings() -> None:
    result = load_paths([str(REPO / "etc" / "zcron.d")])
    assert (result.errors, result.warnings) == ([], [])
