"""Key files (spec §7, Files): `NAME.key` and `NAME.key_secret` in the keys directory, read
and checked without ZeroMQ, so that the command line loads no more than it uses
(zcron.auth builds the sockets' CURVE side on these)."""

from __future__ import annotations

import os
import stat

from zcron.errors import ConfigError

CLI_KEY = "cli"
LOOSE_DIR = stat.S_IWGRP | stat.S_IWOTH | stat.S_IROTH
LOOSE_SECRET = 0o077


def load_certificate(path: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate file, read as zmq.auth.load_certificate
    reads it; that module loads logging, datetime and more: ~4 ms of each CLI start."""
    public = secret = None
    with open(path, "rb") as cert:
        for line in cert:
            line = line.strip()
            if line.startswith(b"public-key"):
                public = line.split(b"=", 1)[1].strip(b" \t'\"")
            elif line.startswith(b"secret-key"):
                secret = line.split(b"=", 1)[1].strip(b" \t'\"")
    if public is None:
        raise ValueError(f"No public key found in {path}")
    return public, secret


def _read_pair(path: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from one certificate file; ConfigError naming the file otherwise."""
    try:
        return load_certificate(path)
    except (OSError, ValueError) as exc:
        why = "no such file" if not os.path.exists(path) else getattr(exc, "strerror", None)
        raise ConfigError(
            f"[cluster] keys: cannot read {path}: {why or exc} (make one with `zcron keygen`)"
        ) from None


def check_keys_dir(keys_dir: str) -> None:
    """Refuse a keys directory others could write to or list (spec §7, Files)."""
    try:
        info = os.stat(keys_dir)
    except OSError:
        raise ConfigError(f"[cluster] keys: {keys_dir} is not a directory") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"[cluster] keys: {keys_dir} is not a directory")
    if info.st_mode & LOOSE_DIR:
        raise ConfigError(
            f"[cluster] keys: {keys_dir} is open to others (mode {stat.filemode(info.st_mode)}):"
            f" chmod 0750 {keys_dir}"
        )


def load_secret(keys_dir: str, name: str) -> tuple[bytes, bytes]:
    """This process's own keypair from `keys_dir/NAME.key_secret` (owner-only)."""
    path = os.path.join(keys_dir, f"{name}.key_secret")
    public, secret = _read_pair(path)
    if secret is None:
        raise ConfigError(f"[cluster] keys: {path} holds no secret-key")
    mode = os.stat(path).st_mode
    if mode & LOOSE_SECRET:
        raise ConfigError(
            f"[cluster] keys: {path} is readable or writable by others "
            f"({stat.filemode(mode)}): chmod 0600 {path}"
        )
    return public, secret


def load_public(keys_dir: str, name: str) -> bytes:
    """The public key of the process named `name` (`keys_dir/NAME.key`)."""
    return _read_pair(os.path.join(keys_dir, f"{name}.key"))[0]


def trusted_keys(keys_dir: str) -> dict[bytes, str]:
    """z85 public key -> key name, for every `NAME.key` of the directory."""
    names: dict[bytes, str] = {}
    for name in key_names(keys_dir, ".key"):
        names[_read_pair(os.path.join(keys_dir, f"{name}.key"))[0]] = name
    return names


def key_names(keys_dir: str, suffix: str) -> list[str]:
    """NAME of every `NAME{suffix}` in the directory, in the order of the file names: what
    glob `*{suffix}` finds (no hidden files; none when the directory cannot be listed),
    without loading glob and fnmatch."""
    try:
        entries = sorted(os.listdir(keys_dir))
    except OSError:
        return []
    return [e[: -len(suffix)] for e in entries if e.endswith(suffix) and e[0] != "."]


def client_key_name(keys_dir: str) -> str:
    """The key the command-line client uses: `cli`, else the first readable `*.key_secret`."""
    candidates = [CLI_KEY, *sorted(key_names(keys_dir, ".key_secret"))]
    for name in candidates:
        if os.access(os.path.join(keys_dir, f"{name}.key_secret"), os.R_OK):
            return name
    raise ConfigError(
        f"[cluster] keys: no readable secret key in {keys_dir} "
        f"(you may not be allowed to submit: ask for a client key, `zcron keygen DIR NAME`"
        f" and [clients] in the config)"
    )
