"""A GET of the sink's /api/* for the command line, over a bare socket.

urllib.request pulls in http.client, email and ssl: ~20 ms of `zcron runs`'s start-up
(python -X importtime), for one plaintext GET to our own server (zcron.http), which
answers HTTP/1.0 with a Content-Length and closes. Errors as the callers need them: an
answer other than 200 raises ApiError with its code and body; no answer, OSError.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_ANSWER_BYTES = 64 << 20  # /api/runs?limit=10000 of 64 KiB tails stays far below


class ApiError(Exception):
    """The sink answered, but not 200: `code` and the `body` text it sent."""

    def __init__(self, code: int, body: str) -> None:
        super().__init__(f"HTTP {code}: {body}")
        self.code, self.body = code, body


def get_json(host_port: str, path: str, timeout_s: float = 5.0) -> Any:
    """GET http://HOST:PORT/PATH and decode its JSON body."""
    host, _, port = host_port.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: {host_port}\r\n\r\n".encode())
        answer = read_all(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
        raise OSError(f"not an HTTP answer from {host_port}")
    if int(status[1]) != 200:
        raise ApiError(int(status[1]), body.decode(errors="replace"))
    return json.loads(body)


def read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes (HTTP/1.0), bounded."""
    chunks, size = [], 0
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise OSError(f"answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
    return b"".join(chunks)
