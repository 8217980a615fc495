"""CURVE on every socket (spec §7): key files, a ZAP handler that names the sender, and
failed handshakes counted.

A process loads its own `NAME.key_secret` and trusts every `*.key` of the keys directory.
Its ZAP handler lets a client finish the handshake only when its public key is one of
them, and labels each connection with the key's NAME (ZAP User-Id), which every received
frame carries: `Security.sender(frame)` is who sent it, so roles can be checked per
message (zcron.roles). Clients pin the server's public key (`SERVER.key`), so a stranger
can neither talk to a server nor pose as one (a squatter on a restarting server's port
never completes a handshake). Without keys every call is a no-op and `sender` is None.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import time

import zmq
from zmq.utils import z85

from zcron.config import ClusterConfig
from zcron.errors import ConfigError
from zcron.keyfiles import (  # noqa: F401 (CLI_KEY: zcron.roles and zcron.up import it here)
    CLI_KEY,
    check_keys_dir,
    client_key_name,
    load_public,
    load_secret,
    trusted_keys,
)
from zcron.net import HANDSHAKE_FAILED, monitor_event

log = logging.getLogger(__name__)

FAILURE_LOG_EVERY_S = 10.0
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# An unknown key makes the handler re-read the directory (a node added since we started),
# at most this often: a stranger retrying must not turn into a directory scan per attempt.
RELOAD_EVERY_S = 1.0
REDIAL_AFTER_S = 1.0


CERTIFICATE = """#   ZeroMQ CURVE {kind} Certificate (zcron keygen; the format of zmq.auth)

metadata
curve
    public-key = "{public}"
{secret}"""


def write_keypair(keys_dir: str, name: str) -> tuple[str, str]:
    """Write `NAME.key` (0644) and `NAME.key_secret` (0600) into `keys_dir` (made 0750 when
    missing): never through a symlink, never over an existing file (spec §7, Files)."""
    if not name or "/" in name or name.startswith(".") or len(name) > 200:
        raise ConfigError(f"NAME must be a plain file name, got {name!r}")
    try:
        os.mkdir(keys_dir, 0o750)
    except FileExistsError:
        if os.path.islink(keys_dir):
            raise ConfigError(f"{keys_dir} is a symlink; give the real directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {keys_dir}: {exc.strerror}") from None
    check_keys_dir(keys_dir)
    public, secret = zmq.curve_keypair()
    paths = os.path.join(keys_dir, f"{name}.key"), os.path.join(keys_dir, f"{name}.key_secret")
    for path in paths:
        if os.path.lexists(path):
            raise ConfigError(f"{path} exists; remove it first to make a new key")
    _create(paths[1], 0o600, CERTIFICATE.format(kind="**Secret**", public=public.decode(),
            secret=f'    secret-key = "{secret.decode()}"\n'))  # fmt: skip
    _create(paths[0], 0o644, CERTIFICATE.format(kind="Public", public=public.decode(), secret=""))
    return paths


def _create(path: str, mode: int, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, mode)  # the umask must not loosen nor tighten what we meant
        out.write(text)


class KeyRing:
    """The trusted keys by public key; re-read on a miss, at most once per RELOAD_EVERY_S."""

    def __init__(self, keys_dir: str) -> None:
        self.keys_dir = keys_dir
        self.names = trusted_keys(keys_dir)
        self.next_reload = time.monotonic() + RELOAD_EVERY_S

    def name_of(self, public_z85: bytes) -> str | None:
        name = self.names.get(public_z85)
        if name is None and time.monotonic() >= self.next_reload:
            self.next_reload = time.monotonic() + RELOAD_EVERY_S
            try:
                self.names = trusted_keys(self.keys_dir)
            except ConfigError as exc:
                log.error("%s (keeping the keys read before)", exc)
            name = self.names.get(public_z85)
        return name


class ZapHandler:
    """ZAP (RFC 27) for one context, in a thread: CURVE clients with a trusted key pass and
    are labelled with its name (User-Id); anything else is refused."""

    def __init__(self, ctx: zmq.Context, keys: KeyRing) -> None:
        self.ctx, self.keys = ctx, keys
        self.sock = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(ZAP_ENDPOINT)
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self.run, name="zcron-zap", daemon=True)
        self.thread.start()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.stop_r, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self.stop_r in ready:
                break
            self.answer(self.sock.recv_multipart())
        self.sock.close(linger=0)

    def answer(self, request: list[bytes]) -> None:
        request_id = request[1] if len(request) > 1 else b""
        code, user = self.decide(request)
        self.sock.send_multipart([b"1.0", request_id, code, b"", user.encode(), b""])

    def decide(self, request: list[bytes]) -> tuple[bytes, str]:
        if len(request) != 7 or request[0] != b"1.0" or request[5] != b"CURVE":
            return b"400", ""
        name = self.keys.name_of(z85.encode(request[6]))
        return (b"200", name) if name is not None else (b"400", "")

    def close(self) -> None:
        os.write(self.stop_w, b"!")
        self.thread.join(5)
        os.close(self.stop_r)
        os.close(self.stop_w)


class HandshakeMonitor:
    """Counts failed CURVE handshakes on watched sockets, in one background thread.

    The thread owns the monitor PAIR sockets; the owner of a watched socket only calls
    `watch()`, which starts the socket's monitor and hands the thread its endpoint.
    """

    def __init__(self, ctx: zmq.Context, counters: dict) -> None:
        self.ctx = ctx
        self.counters = counters
        # (id() of a watched socket, whether its last handshake succeeded)
        self.outcomes: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self.counters.setdefault("handshake_failures", 0)
        self.pending: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.next_log = 0.0

    def watch(self, sock: zmq.Socket, peer: str) -> None:
        """Count handshake failures of `sock`; `peer` names the other side in logs."""
        endpoint = f"inproc://zcron-handshakes-{id(self)}-{id(sock)}"
        sock.monitor(endpoint, HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.pending.put((endpoint, peer, id(sock)))
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="zcron-handshakes", daemon=True)
            self.thread.start()
        os.write(self.wake_w, b"!")

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.wake_r, zmq.POLLIN)
        peers: dict[zmq.Socket, tuple[str, int]] = {}
        while not self.stopping:
            for item, _ in poller.poll():
                if item == self.wake_r:
                    os.read(self.wake_r, 4096)
                    self.adopt(poller, peers)
                else:
                    self.note(item, *peers[item])
        for mon in peers:
            mon.close(linger=0)

    def adopt(self, poller: zmq.Poller, peers: dict) -> None:
        while not self.pending.empty():
            endpoint, peer, sock_id = self.pending.get()
            mon = self.ctx.socket(zmq.PAIR)
            mon.connect(endpoint)
            poller.register(mon, zmq.POLLIN)
            peers[mon] = (peer, sock_id)

    def note(self, mon: zmq.Socket, peer: str, sock_id: int) -> None:
        try:
            event = monitor_event(mon.recv_multipart())
        except (zmq.ZMQError, struct.error):
            return
        succeeded = event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        self.outcomes.put((sock_id, succeeded))
        if succeeded:
            return
        self.counters["handshake_failures"] += 1
        now = time.monotonic()
        if now >= self.next_log:  # a stranger retrying is no log storm
            self.next_log = now + FAILURE_LOG_EVERY_S
            log.warning(
                "CURVE handshake failed on %s (%s, %s): a stranger, a plaintext client, "
                "or a key not in the keys directory (%d so far)",
                event["endpoint"].decode(errors="replace"),
                peer,
                zmq.Event(event["event"]).name,
                self.counters["handshake_failures"],
            )

    def close(self) -> None:
        """Stop the thread and close its sockets (before the context is terminated)."""
        if self.thread is not None:
            self.stopping = True
            os.write(self.wake_w, b"!")
            self.thread.join(5)
            self.thread = None
        os.close(self.wake_r)
        os.close(self.wake_w)


class Security:
    """CURVE settings for one process: `server(sock)` before bind, `client(sock, name)`
    before connect, `sender(frame)` for the key name a received frame came with.
    Without `[cluster] keys` the first two do nothing and `sender` is None."""

    def __init__(
        self,
        keys_dir: str | None = None,
        name: str = "",
        public: bytes = b"",
        secret: bytes = b"",
        counters: dict | None = None,
    ) -> None:
        self.keys_dir, self.name = keys_dir, name
        self.public, self.secret = public, secret
        self.counters = {} if counters is None else counters
        self.counters.setdefault("handshake_failures", 0)
        self.zap: dict[zmq.Context, ZapHandler] = {}
        self.monitors: dict[zmq.Context, HandshakeMonitor] = {}
        self.keyring: KeyRing | None = None
        self.dialled: dict[int, tuple[zmq.Socket, str]] = {}  # id(sock) -> (sock, address)
        self.redial_at: dict[int, float] = {}

    @classmethod
    def from_config(
        cls, cluster: ClusterConfig, name: str, counters: dict | None = None
    ) -> Security:
        """Load `NAME.key_secret` from `[cluster] keys`; plaintext when keys is unset."""
        keys_dir = cluster.keys
        if not keys_dir:
            return cls(counters=counters)
        check_keys_dir(keys_dir)
        security = cls(keys_dir, name, *load_secret(keys_dir, name), counters=counters)
        security.keyring = KeyRing(keys_dir)
        return security

    @classmethod
    def for_client(cls, cluster: ClusterConfig) -> Security:
        """The command-line client's keys (see client_key_name)."""
        if not cluster.keys:
            return cls()
        return cls.from_config(cluster, client_key_name(cluster.keys))

    @property
    def enabled(self) -> bool:
        return self.keys_dir is not None

    @property
    def handshake_failures(self) -> int:
        return self.counters["handshake_failures"]

    def server(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server that admits only the trusted keys (call before bind)."""
        if not self.enabled:
            return
        if sock.context not in self.zap:
            assert self.keyring is not None
            self.zap[sock.context] = ZapHandler(sock.context, self.keyring)
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        self._watch(sock, "clients")

    def client(self, sock: zmq.Socket, server_name: str) -> None:
        """Make `sock` a CURVE client of the server named `server_name` (call before connect)."""
        if self.keys_dir is None:
            return
        sock.curve_serverkey = load_public(self.keys_dir, server_name)
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        self._watch(sock, server_name)

    def connect(self, sock: zmq.Socket, server_name: str, address: str) -> None:
        """client() then connect, remembered so that a failed handshake is redialled."""
        self.client(sock, server_name)
        sock.connect(address)
        self.dialled[id(sock)] = (sock, address)

    def redial_failed(self, now_mono: float) -> None:
        """Reconnect the sockets whose CURVE handshake failed, once a second each, until a
        handshake succeeds again.

        libzmq never redials a connection whose handshake failed (measured with 4.3.5): one
        squatter on a restarting server's port would otherwise cut a worker off for good.
        Call from the socket's own thread (zmq sockets are not thread-safe)."""
        for monitor in self.monitors.values():
            while not monitor.outcomes.empty():
                sock_id, succeeded = monitor.outcomes.get()
                if succeeded:
                    self.redial_at.pop(sock_id, None)
                elif sock_id in self.dialled:
                    self.redial_at.setdefault(sock_id, now_mono + REDIAL_AFTER_S)
        for sock_id, at in list(self.redial_at.items()):
            sock, address = self.dialled[sock_id]
            if sock.closed:
                del self.redial_at[sock_id]
            elif now_mono >= at:  # and again a second later, until a handshake succeeds
                self.redial_at[sock_id] = now_mono + REDIAL_AFTER_S
                sock.disconnect(address)
                sock.connect(address)

    def sender(self, frame: zmq.Frame) -> str | None:
        """The key name a frame received on a server socket came with (None: no keys)."""
        if not self.enabled:
            return None
        try:
            return frame.get("User-Id") or ""
        except zmq.ZMQError:
            return ""

    def _watch(self, sock: zmq.Socket, peer: str) -> None:
        """Monitors reach sockets over inproc, so each context gets its own."""
        if sock.context not in self.monitors:
            self.monitors[sock.context] = HandshakeMonitor(sock.context, self.counters)
        self.monitors[sock.context].watch(sock, peer)

    def close(self) -> None:
        """Stop the ZAP handlers and the monitor threads (before terminating the context)."""
        for monitor in self.monitors.values():
            monitor.close()
        self.monitors = {}
        for zap in self.zap.values():
            zap.close()
        self.zap = {}
