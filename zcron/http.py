"""The sink's HTTP side (spec §6): /metrics, /api/runs, /api/jobs and the dashboard at /.

A stdlib ThreadingHTTPServer in a daemon thread; every handler only reads (LMDB read-only
transactions, snapshots of the sink's in-memory reports).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from zcron import clock
from zcron.errors import ConfigError, ZcronError
from zcron.metrics import Metrics
from zcron.net import is_loopback
from zcron.protocol import STATUSES
from zcron.store import Store

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000
RUNS_PARAMS = ("job", "since", "until", "status", "limit")
JOB_FIELDS = ("schedule", "timezone", "pool", "enabled", "next_tick", "source")


class BadRequest(ZcronError):
    """A query parameter that does not parse; the message names it."""


def parse_time(name: str, text: str, now: float) -> float:
    """clock.parse_time, answered with a 400."""
    try:
        return clock.parse_time(name, text, now)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None


def parse_limit(text: str) -> int:
    """A whole number 1..MAX_LIMIT."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit: expected a whole number 1..{MAX_LIMIT}, got {text!r}")
    return int(text)


def parse_status(text: str) -> list[str]:
    """One status or a comma-separated list of them."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if name not in STATUSES]
    if bad or not names:
        raise BadRequest(f"status: expected one of {', '.join(STATUSES)}, got {text!r}")
    return names


def parse_runs_query(query: str, now: float) -> dict[str, Any]:
    """Turn /api/runs's query string into Store.query keyword arguments."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - set(RUNS_PARAMS))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r} (known: {', '.join(RUNS_PARAMS)})")
    args: dict[str, Any] = {"limit": 100}
    if params.get("job"):
        args["job"] = params["job"]
    for name in ("since", "until"):
        if params.get(name):
            args[name] = parse_time(name, params[name], now)
    if params.get("status"):
        args["status"] = parse_status(params["status"])
    if "limit" in params:
        args["limit"] = parse_limit(params["limit"])
    return args


def _blank_job(name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"job": name, **{f: None for f in JOB_FIELDS}}
    row.update(last_run=None, last_success=None, schedulers=[])
    return row


def merge_jobs(reports: list[dict], last_runs: dict[str, dict]) -> list[dict]:
    """One entry per job: schedule fields from the latest report (live ones win),
    the live schedulers reporting it, and its last run and last success from the store."""
    jobs: dict[str, dict] = {}
    for report in sorted(reports, key=lambda r: (r["live"], r["seen"])):
        for entry in report["jobs"]:
            row = jobs.setdefault(entry["name"], _blank_job(entry["name"]))
            row.update({f: entry.get(f) for f in JOB_FIELDS})
            if report["live"]:
                row["schedulers"].append(report["scheduler"])
    for name, last in last_runs.items():
        jobs.setdefault(name, _blank_job(name)).update(last)
    for row in jobs.values():
        row["schedulers"].sort()
    return [jobs[name] for name in sorted(jobs)]


class Api:
    """What the handlers read: the store, the metrics, the schedulers' job reports."""

    def __init__(self, store: Store, metrics: Metrics, reports: Callable[[], list[dict]]) -> None:
        self.store = store
        self.metrics = metrics
        self.reports = reports
        self.page = (resources.files("zcron") / "static" / "index.html").read_bytes()

    def runs(self, query: str) -> list[dict]:
        """GET /api/runs."""
        return self.store.query(**parse_runs_query(query, time.time()))

    def jobs(self) -> list[dict]:
        """GET /api/jobs."""
        return merge_jobs(self.reports(), self.store.last_runs())


class Handler(BaseHTTPRequestHandler):
    """Routes GET requests; everything else is the stdlib's 501."""

    server: _Server
    timeout = 10  # a client that stalls mid-request does not hold its thread forever

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        url = urlsplit(self.path)
        api = self.server.api
        try:
            if url.path == "/metrics":
                self.send(HTTPStatus.OK, *api.metrics.exposition())
            elif url.path == "/api/runs":
                self.send_json(HTTPStatus.OK, api.runs(url.query))
            elif url.path == "/api/jobs":
                self.send_json(HTTPStatus.OK, api.jobs())
            elif url.path in ("/", "/index.html"):
                self.send(HTTPStatus.OK, api.page, "text/html; charset=utf-8")
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {url.path}"})
        except BadRequest as exc:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:  # a failed read must not take the server down
            log.exception("GET %s failed", url.path)
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})

    def send_json(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        self.send(status, data, "application/json")

    def send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("http %s " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: Api


class _Server6(_Server):
    address_family = socket.AF_INET6


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) → (host, port); a bad one is a ConfigError."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"[sink] http: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def check_http_bind(address: str, insecure: bool) -> None:
    """Refuse a non-loopback HTTP address unless insecure: CURVE keys do not protect HTTP."""
    host, port = split_address(address)
    literal = f"[{host}]" if ":" in host else host
    if insecure or is_loopback(f"tcp://{literal}:{port}"):
        return
    raise ConfigError(
        f"refusing to serve HTTP on {address}: not loopback, and run records (with output "
        "tails) would be readable by anyone who reaches it. Set insecure = true to allow it"
    )


class HttpServer:
    """The HTTP server and its thread; stop() returns once no handler is running."""

    def __init__(self, address: str, api: Api, insecure: bool = False) -> None:
        check_http_bind(address, insecure)
        host, port = split_address(address)
        cls = _Server6 if ":" in host else _Server
        try:
            self.server = cls((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve HTTP on {address}: {exc.strerror}") from None
        self.server.api = api
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def url(self) -> str:
        """The base URL actually bound (port 0 resolved)."""
        host, port = self.server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and wait for the serving thread."""
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
