"""Cron's rule for the files that say what runs (spec §7, Files): only root and our own
user may be able to change them.

A schedule file names commands and the users they run as; whoever can write it can run
anything as anyone the workers can become. cronie refuses /etc/cron.d files that others
could write or that have more than one hard link (a link to a file of someone else's);
so does zcron, and names the reason.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat


def _group_has_others(gid: int, trusted: set[int]) -> bool:
    """Whether a group holds a user other than the trusted ones (as member or primary)."""
    try:
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        return True  # an unknown group: nobody can say who is in it
    uids = set()
    for name in members:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            return True
    uids |= {p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid}
    return not uids <= trusted


def untrusted(info: os.stat_result, kind: str = "file") -> str | None:
    """Why a file (or directory) with this stat is not to be trusted, or None."""
    trusted = {0, os.geteuid()}
    mode = info.st_mode
    if info.st_uid not in trusted:
        owner = _user_name(info.st_uid)
        return f"refused: the {kind} is owned by {owner}, not root or this scheduler's user"
    if mode & stat.S_IWOTH:
        return f"refused: the {kind} is writable by others ({stat.filemode(mode)})"
    if mode & stat.S_IWGRP and _group_has_others(info.st_gid, trusted):
        return (f"refused: the {kind} is writable by group {_group_name(info.st_gid)}, "
                "which has other members")  # fmt: skip
    if kind == "file" and info.st_nlink > 1:
        return f"refused: the file has {info.st_nlink} hard links"
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"
