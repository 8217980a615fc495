"""Socket factory: every zcron socket gets linger 0, bounded queues and a message size cap."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import zmq

from zcron import protocol
from zcron.errors import ConfigError, ProtocolError
from zcron.protocol import MAX_MESSAGE_BYTES

DEFAULT_HWM = 10_000
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def is_loopback(address: str) -> bool:
    """True when a tcp:// address names a loopback host (ipc:// and inproc:// count too)."""
    import ipaddress  # here: binds check it, the command line never does
    from urllib.parse import urlparse

    parsed = urlparse(address)
    if parsed.scheme in ("ipc", "inproc"):
        return True
    host = parsed.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(address: str, insecure: bool, keys: str | None) -> None:
    """Refuse a non-loopback bind without CURVE keys unless told insecure (spec §7)."""
    if keys or insecure or is_loopback(address):
        return
    raise ConfigError(
        f"refusing to bind {address}: not a loopback address and [cluster] keys is not set, "
        "so anyone who reaches this port could run commands on the workers. Set [cluster] keys "
        "(see `zcron keygen`), or insecure = true in [cluster] for an isolated network"
    )


def make_socket(
    ctx: zmq.Context, kind: int, identity: str | None = None, hwm: int = DEFAULT_HWM
) -> zmq.Socket:
    """A socket with zcron's defaults; the caller binds or connects it."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    if kind == zmq.ROUTER:
        # A reply to a peer that vanished is dropped instead of raising.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    return sock


def incarnation(name: str) -> str:
    """A routing id for this process's connection as `name`: the name plus a random
    incarnation, so that neither a second process with the same id nor a stranger who
    knows the id can take our route over (ROUTER_HANDOVER hands a route to whoever
    connects with its routing id; spec §7, Identity)."""
    import secrets  # base64, hmac, random: not for the command line, which needs no id

    return f"{name}.{secrets.token_hex(8)}"


def keepalive(sock: zmq.Socket, heartbeat_s: float, timeout_s: float) -> None:
    """ZeroMQ heartbeats on a connection: one that stays silent for `timeout_s` (a peer
    stopped or its link cut) is closed and reconnected instead of waiting in TCP for ever."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(100, int(heartbeat_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(300, int(timeout_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TTL, max(300, int(timeout_s * 1000)))


def bind(sock: zmq.Socket, address: str, insecure: bool = False, keys: str | None = None) -> None:
    """Bind after the loopback rule; a taken port is a clear runtime error."""
    check_bind(address, insecure, keys)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {address}: {exc}") from None


def send_nowait(sock: zmq.Socket, frame: bytes) -> bool:
    """Send without ever blocking the loop; False when the peer is absent or its queue full.

    Every sender can afford the loss: results stay spooled and are re-sent, heartbeats and
    slot announcements are repeated, claims are backed by workers' `accepted`.
    """
    try:
        sock.send(frame, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def receive(
    sock: zmq.Socket, kinds: tuple[str, ...], reject: Callable[[str], None]
) -> Iterator[tuple[str, dict]]:
    """Every message waiting on a single-frame socket whose type is one of `kinds`;
    anything else (malformed, unknown, unexpected) goes to `reject` and is dropped."""
    while True:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            kind, msg = protocol.decode(frame)
            if kind not in kinds:
                raise ProtocolError("unexpected_type", kind)
        except ProtocolError as exc:
            reject(str(exc))
            continue
        yield kind, msg


def monitor_event(frames: list[bytes]) -> dict:
    """A socket monitor's message (libzmq ≥ 4: event u16 and value u32, then the endpoint),
    decoded as zmq.utils.monitor does; that module loads asyncio, ~10 ms of a CLI start."""
    if len(frames) != 2:
        raise struct.error(f"{len(frames)} frames in a monitor message")
    event, value = struct.unpack("=hi", frames[0])
    return {"event": event, "value": value, "endpoint": frames[1]}
