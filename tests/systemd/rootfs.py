"""The Debian bookworm root file system the live-systemd tier boots, built once and cached.

debootstrap takes ~50 s here (~70 MB from the archive); the tarball under CACHE is reused by
every later run (delete it to rebuild, e.g. after changing PACKAGES).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import zlib
from pathlib import Path

CACHE = Path("/var/cache/zcron-tests")
SUITE = "bookworm"
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,python3-pip,procps,iproute2"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
TARBALL = CACHE / f"rootfs-{SUITE}-{zlib.crc32(PACKAGES.encode()):08x}.tar"


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt sources already name (CI reaches that one)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        text = path.read_text() if path.is_file() else ""
        for url in re.findall(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian"):
                return url
    return FALLBACK_MIRROR


def cached_rootfs() -> tuple[Path, float]:
    """The tarball, built first when missing; and the seconds spent building it (0: cached)."""
    if TARBALL.exists():
        return TARBALL, 0.0
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f"build-{SUITE}"
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            SUITE,
            str(build),
            apt_mirror(),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    prepare(build)
    partial = TARBALL.with_suffix(".partial")
    subprocess.run(["tar", "-C", str(build), "-cf", str(partial), "."], check=True, timeout=300)
    partial.rename(TARBALL)  # atomic: a run killed mid-way leaves no half tarball
    shutil.rmtree(build, ignore_errors=True)
    return TARBALL, time.monotonic() - started


def prepare(root: Path) -> None:
    """What every boot needs and debootstrap leaves out: no getty on the console (nspawn's
    console is passive), no apt caches in the tarball."""
    for unit in (
        "console-getty.service",
        "getty@tty1.service",
        "systemd-networkd-wait-online.service",
    ):
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
