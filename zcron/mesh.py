"""Sockets to the peer schedulers: one DEALER to each peer's ROUTER, sends never block."""

from __future__ import annotations

import logging

import zmq

from zcron import protocol
from zcron.auth import Security
from zcron.config import ClusterConfig
from zcron.net import incarnation, keepalive, make_socket, send_nowait

log = logging.getLogger(__name__)


class PeerMesh:
    """Send a message to one peer or to all; a peer that is down loses the message.

    IMMEDIATE keeps nothing queued for a peer that is not connected, so a peer that comes
    back never receives stale heartbeats or claims.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        me: str,
        peers: dict[str, str],
        security: Security | None = None,
        cluster: ClusterConfig | None = None,
    ):
        self.sockets: dict[str, zmq.Socket] = {}
        security = security or Security()
        cluster = cluster or ClusterConfig()
        identity = incarnation(f"peer-{me}")
        for peer_id, address in peers.items():
            if peer_id == me:
                continue
            sock = make_socket(ctx, zmq.DEALER, identity=identity, hwm=1000)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            # A paused peer's connection is dropped and redialled rather than filling with
            # heartbeats it would read, minutes old, on SIGCONT.
            keepalive(sock, cluster.heartbeat, 3 * cluster.peer_timeout)
            security.connect(sock, peer_id, address)  # CURVE to that peer's key, with keys
            self.sockets[peer_id] = sock

    def send(self, peer_id: str, kind: str, **fields: object) -> None:
        """Send to one configured peer; an id not in [cluster] schedulers (a hostile or
        misconfigured sender named it) is dropped, never a KeyError in the loop."""
        sock = self.sockets.get(peer_id)
        if sock is None:
            log.debug("not sending %s to %.40r: not a configured peer", kind, peer_id)
            return
        send_nowait(sock, protocol.encode(kind, **fields))

    def broadcast(self, kind: str, **fields: object) -> None:
        frame = protocol.encode(kind, **fields)
        for sock in self.sockets.values():
            send_nowait(sock, frame)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)
