"""How the command line reaches a scheduler: one DEALER over CURVE, requests answered in
order (`ask`, or `ask_many` to pipeline), and `ask_any` across the cluster's schedulers.

Kept apart from zcron.commands so that a command that talks to no scheduler (`zcron runs`,
`check`) does not load ZeroMQ (~15-20 ms of a CLI start, measured with -X importtime).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import zmq

from zcron import protocol
from zcron.errors import ProtocolError, ZcronError
from zcron.keyfiles import check_keys_dir, client_key_name, load_public, load_secret
from zcron.net import HANDSHAKE_FAILED, make_socket, monitor_event

if TYPE_CHECKING:  # either: the command line reads a ClientConfig, a program may hold a Config
    from zcron.config import Config
    from zcron.configfile import ClientConfig

REQUEST_TIMEOUT_MS = 2000
PIPELINE = 256  # requests in flight at most from ask_many (a scheduler commits up to 500)


class SchedulerClient:
    """One connection to one scheduler for a series of requests, each answered before the
    next: the command line makes one; a program pushing many keeps it (a connection per
    request cost ~3 ms, most of a push)."""

    def __init__(self, config: Config | ClientConfig, scheduler_id: str):
        self.scheduler_id = scheduler_id
        self.address = config.scheduler_address(scheduler_id)
        self.keys_dir, self.key_name = config.cluster.keys, ""
        self.sock = make_socket(zmq.Context.instance(), zmq.DEALER)
        self.monitor: zmq.Socket | None = None  # failed handshakes, read when no reply came
        try:
            if self.keys_dir:
                self.curve(self.keys_dir, scheduler_id)
            self.sock.connect(self.address)
        except BaseException:
            self.close()
            raise

    def curve(self, keys_dir: str, server: str) -> None:
        """CURVE as the client key (keyfiles.client_key_name), pinned to the server's key.
        No monitor thread as a daemon's Security keeps: we look once, after a timeout."""
        self.key_name = client_key_name(keys_dir)  # first, as Security.for_client
        check_keys_dir(keys_dir)
        self.sock.curve_publickey, self.sock.curve_secretkey = load_secret(keys_dir, self.key_name)
        self.sock.curve_serverkey = load_public(keys_dir, server)
        self.monitor = self.sock.get_monitor_socket(HANDSHAKE_FAILED)

    def handshake_failed(self) -> bool:
        """Whether a CURVE handshake with the scheduler failed (its monitor said so)."""
        failed = False
        while self.monitor is not None and self.monitor.poll(0):
            try:
                event = monitor_event(self.monitor.recv_multipart())["event"]
                failed |= bool(event & HANDSHAKE_FAILED)
            except (zmq.ZMQError, struct.error):
                break
        return failed

    def ask(self, op: str, args: dict) -> dict:
        """Send one request and return the reply (ZcronError when none comes in time)."""
        self.sock.send(protocol.encode("request", op=op, args=args))
        return self._reply(f"scheduler {self.scheduler_id} at {self.address}")

    def ask_many(self, op: str, args: Iterable[dict], window: int = PIPELINE) -> Iterator[dict]:
        """Send requests without waiting for each reply, at most `window` unanswered;
        yield the replies in request order (a scheduler answers in order, and a DEALER
        keeps it). Pushes sent this way share the scheduler's commits (control.py)."""
        where = f"scheduler {self.scheduler_id} at {self.address}"
        waiting = 0
        for request_args in args:
            self.sock.send(protocol.encode("request", op=op, args=request_args))
            waiting += 1
            while waiting >= window or (waiting and self.sock.poll(0)):
                yield self._reply(where)
                waiting -= 1
        for _ in range(waiting):
            yield self._reply(where)

    def _reply(self, where: str) -> dict:
        if not self.sock.poll(REQUEST_TIMEOUT_MS):
            why = self.why()
            self.close()  # a late reply must not be taken for the next request's
            raise ZcronError(f"{where} did not answer{why}")
        try:
            kind, reply = protocol.decode(self.sock.recv())
        except ProtocolError as exc:
            raise ZcronError(f"{where}: bad reply: {exc}") from None
        if kind != "reply":
            raise ZcronError(f"{where}: unexpected {kind!r}")
        return reply

    def why(self) -> str:
        if not self.handshake_failed():
            return ""
        return (
            f" (CURVE handshake failed: is {self.key_name}.key trusted there, "
            f"and is its public key in {self.keys_dir} current?)"
        )

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        if not self.sock.closed:
            self.sock.close(linger=0)

    def __enter__(self) -> SchedulerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(config: Config | ClientConfig, op: str, args: dict, scheduler_id: str) -> dict:
    """Send one request to one scheduler and return its reply (ZcronError when none)."""
    with SchedulerClient(config, scheduler_id) as client:
        return client.ask(op, args)


def ask_any(
    config: Config | ClientConfig, op: str, args: dict, refused: type[ZcronError] = ZcronError
) -> dict:
    """Ask the schedulers in turn until one accepts the request; when none does, raise
    `refused` if one answered (with its reason), else ZcronError (none reachable)."""
    errors, answered = [], False
    for sid in config.cluster.schedulers:
        try:
            reply = request(config, op, args, sid)
        except ZcronError as exc:
            errors.append(str(exc))
            continue
        if reply["ok"]:
            return reply["body"]
        answered = True
        errors.append(f"scheduler {sid}: {reply['error']}")
    raise (refused if answered else ZcronError)("; ".join(errors))
