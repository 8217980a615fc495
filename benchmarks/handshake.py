"""CURVE's cost at start-up: connect to first reply through zcron's Security (its ZAP
handler naming the key) against plaintext, over loopback, N connections each.

    python3 -m benchmarks.handshake [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import zmq

from zcron.auth import Security, write_keypair
from zcron.config import ClusterConfig


def connect_times(secure: bool, count: int) -> list[float]:
    """Milliseconds from connect to the first reply, for `count` fresh connections."""
    keys = f"{tempfile.mkdtemp(prefix='zcron-handshake-')}/keys"
    for name in ("a", "w1"):
        write_keypair(keys, name)
    cluster = ClusterConfig(keys=keys if secure else None)
    ctx = zmq.Context()
    server, client = Security.from_config(cluster, "a"), Security.from_config(cluster, "w1")
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    server.server(router)
    router.bind("tcp://127.0.0.1:0")
    times = []
    for _ in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        began = time.perf_counter()
        client.connect(sock, "a", router.last_endpoint.decode())
        sock.send(b"ping")
        router.send_multipart([router.recv_multipart()[0], b"pong"])
        sock.recv()
        times.append((time.perf_counter() - began) * 1000)
        sock.close(0)
    client.close()
    server.close()
    router.close(0)
    ctx.term()
    return times


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for secure in (False, True):
        times = sorted(connect_times(secure, count))
        p50, p99 = statistics.median(times), times[int(count * 0.99) - 1]
        name = "CURVE" if secure else "plaintext"
        print(f"{name:9}  connect to first reply: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
