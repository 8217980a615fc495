"""The schedule directory watch: symlinked files, and a directory removed and created again."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from zcron.watch import DirectoryWatch


@pytest.fixture
def watched(tmp_path: Path):
    directory = tmp_path / "zcron.d"
    directory.mkdir()
    watch = DirectoryWatch(str(directory))
    if watch.fd is None:
        pytest.skip("no inotify here (the stat poll is used)")
    yield directory, watch
    watch.close()


def ready(watch: DirectoryWatch) -> bool:
    poller = select.poll()
    poller.register(watch.fd, select.POLLIN)
    return bool(poller.poll(0))


def test_an_edit_to_a_symlinked_files_target_is_noticed(watched, tmp_path: Path) -> None:
    directory, watch = watched
    managed = tmp_path / "managed"
    managed.mkdir()
    (managed / "jobs").write_text("@daily - true\n")
    (directory / "jobs").symlink_to(managed / "jobs")
    assert watch.changed()
    (managed / "unrelated").write_text("x")
    assert not watch.changed()  # only the linked file's events count
    (managed / "jobs").write_text("@hourly - true\n")
    assert ready(watch) and watch.changed()


def test_a_removed_directory_keeps_the_fd_open_and_quiet(watched) -> None:
    directory, watch = watched
    fd = watch.fd
    (directory / "a").write_text("@daily - true\n")
    assert watch.changed()
    (directory / "a").unlink()
    directory.rmdir()
    assert watch.changed()
    assert watch.fd == fd and os.fstat(fd)  # still the poller's fd, still open
    assert not ready(watch)  # a closed or errored fd would poll ready at once: a busy loop
    directory.mkdir()
    assert ready(watch) and watch.changed()
    (directory / "b").write_text("@daily - true\n")
    assert ready(watch) and watch.changed()


def test_a_renamed_directory_and_a_new_one_in_its_place(watched, tmp_path: Path) -> None:
    directory, watch = watched
    directory.rename(tmp_path / "old")
    assert watch.changed() and not ready(watch)
    (tmp_path / "old" / "x").write_text("@daily - true\n")
    assert not watch.changed()  # the old directory is no longer the schedules
    directory.mkdir()
    (directory / "y").write_text("@daily - true\n")
    assert watch.changed()


def test_a_directory_missing_at_start_is_noticed_when_it_appears(tmp_path: Path) -> None:
    watch = DirectoryWatch(str(tmp_path / "later" / "zcron.d"))
    try:
        if watch.fd is None:
            pytest.skip("no inotify here")
        (tmp_path / "later").mkdir()
        watch.changed()
        (tmp_path / "later" / "zcron.d").mkdir()
        assert watch.changed()
        (tmp_path / "later" / "zcron.d" / "a").write_text("@daily - true\n")
        assert watch.changed()
    finally:
        watch.close()
