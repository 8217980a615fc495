"""CURVE on every socket when `[cluster] keys` is set (spec §7), and failed handshakes counted.

A process loads its own `NAME.key_secret` and trusts every `*.key` of the directory: a
ZAP handler (pyzmq's ThreadAuthenticator) lets a client finish the handshake only when
its public key is one of them. Clients pin the server's public key (`SERVER.key`), so a
stranger can neither talk to a server nor pose as one. Without keys every call is a no-op.
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import stat
import threading
import time

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from zcron.config import ClusterConfig
from zcron.errors import ConfigError

log = logging.getLogger(__name__)

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
FAILURE_LOG_EVERY_S = 10.0
CLI_KEY = "cli"


def _read_pair(path: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from one certificate file; ConfigError naming the file otherwise."""
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        why = "no such file" if not os.path.exists(path) else getattr(exc, "strerror", None)
        raise ConfigError(
            f"[cluster] keys: cannot read {path}: {why or exc} (make one with `zcron keygen`)"
        ) from None


def load_secret(keys_dir: str, name: str) -> tuple[bytes, bytes]:
    """This process's own keypair from `keys_dir/NAME.key_secret` (not world-accessible)."""
    path = os.path.join(keys_dir, f"{name}.key_secret")
    public, secret = _read_pair(path)
    if secret is None:
        raise ConfigError(f"[cluster] keys: {path} holds no secret-key")
    if os.stat(path).st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"[cluster] keys: {path} is world-accessible: chmod 0600 {path}")
    return public, secret


def load_public(keys_dir: str, name: str) -> bytes:
    """The public key of the process named `name` (`keys_dir/NAME.key`)."""
    return _read_pair(os.path.join(keys_dir, f"{name}.key"))[0]


def check_trusted(keys_dir: str) -> int:
    """How many `*.key` files the directory trusts; ConfigError naming a malformed one."""
    try:
        return len(zmq.auth.load_certificates(keys_dir))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[cluster] keys: {exc}") from None


def client_key_name(keys_dir: str) -> str:
    """The key the command-line client uses: `cli`, else the first readable `*.key_secret`."""
    candidates = [CLI_KEY] + sorted(
        os.path.basename(p)[: -len(".key_secret")]
        for p in glob.glob(os.path.join(keys_dir, "*.key_secret"))
    )
    for name in candidates:
        if os.access(os.path.join(keys_dir, f"{name}.key_secret"), os.R_OK):
            return name
    raise ConfigError(
        f"[cluster] keys: no readable secret key in {keys_dir} "
        f"(make one with `zcron keygen {keys_dir} {CLI_KEY}`)"
    )


class HandshakeMonitor:
    """Counts failed CURVE handshakes on watched sockets, in one background thread.

    The thread owns the monitor PAIR sockets; the owner of a watched socket only calls
    `watch()`, which starts the socket's monitor and hands the thread its endpoint.
    """

    def __init__(self, ctx: zmq.Context, counters: dict) -> None:
        self.ctx = ctx
        self.counters = counters
        self.counters.setdefault("handshake_failures", 0)
        self.pending: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.next_log = 0.0

    def watch(self, sock: zmq.Socket, peer: str) -> None:
        """Count handshake failures of `sock`; `peer` names the other side in logs."""
        endpoint = f"inproc://zcron-handshakes-{id(self)}-{id(sock)}"
        sock.monitor(endpoint, HANDSHAKE_FAILED)
        self.pending.put((endpoint, peer))
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="zcron-handshakes", daemon=True)
            self.thread.start()
        os.write(self.wake_w, b"!")

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.wake_r, zmq.POLLIN)
        peers: dict[zmq.Socket, str] = {}
        while not self.stopping:
            for item, _ in poller.poll():
                if item == self.wake_r:
                    os.read(self.wake_r, 4096)
                    self.adopt(poller, peers)
                else:
                    self.note(item, peers[item])
        for mon in peers:
            mon.close(linger=0)

    def adopt(self, poller: zmq.Poller, peers: dict) -> None:
        while not self.pending.empty():
            endpoint, peer = self.pending.get()
            mon = self.ctx.socket(zmq.PAIR)
            mon.connect(endpoint)
            poller.register(mon, zmq.POLLIN)
            peers[mon] = peer

    def note(self, mon: zmq.Socket, peer: str) -> None:
        try:
            event = recv_monitor_message(mon)
        except zmq.ZMQError:
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
    before connect. Without `[cluster] keys` both do nothing."""

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
        self.authenticators: list[ThreadAuthenticator] = []
        self.monitors: dict[zmq.Context, HandshakeMonitor] = {}

    @classmethod
    def from_config(
        cls, cluster: ClusterConfig, name: str, counters: dict | None = None
    ) -> Security:
        """Load `NAME.key_secret` from `[cluster] keys`; plaintext when keys is unset."""
        keys_dir = cluster.keys
        if not keys_dir:
            return cls(counters=counters)
        if not os.path.isdir(keys_dir):
            raise ConfigError(f"[cluster] keys: {keys_dir} is not a directory")
        check_trusted(keys_dir)
        return cls(keys_dir, name, *load_secret(keys_dir, name), counters=counters)

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
        self._authenticate(sock.context)
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

    def _authenticate(self, ctx: zmq.Context) -> None:
        """One ZAP handler per context, trusting every `*.key` of the directory."""
        if any(a.context is ctx for a in self.authenticators):
            return
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=self.keys_dir)
        self.authenticators.append(auth)

    def _watch(self, sock: zmq.Socket, peer: str) -> None:
        """Monitors reach sockets over inproc, so each context gets its own."""
        if sock.context not in self.monitors:
            self.monitors[sock.context] = HandshakeMonitor(sock.context, self.counters)
        self.monitors[sock.context].watch(sock, peer)

    def close(self) -> None:
        """Stop the ZAP handler and the monitor threads (before terminating the context)."""
        for monitor in self.monitors.values():
            monitor.close()
        self.monitors = {}
        for auth in self.authenticators:
            auth.stop()
        self.authenticators = []
