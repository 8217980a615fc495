"""The sink's HTTP side (spec §6): /metrics, /api/runs, /api/jobs and the dashboard at /.

A stdlib ThreadingHTTPServer in a daemon thread; every handler only reads (LMDB read-only
transactions, snapshots of the sink's in-memory reports). Hardened for a browser's reach:
only known Host values (DNS rebinding), nosniff and a CSP on every answer, a bounded number
of connections, and a bounded number of records examined per request.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from zcron import clock, dashboard
from zcron.errors import ConfigError, ZcronError
from zcron.metrics import Metrics, schedule_interval
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
    """One entry per job the schedulers define (live ones win; see dashboard.job_tables):
    schedule fields, the live schedulers reporting it, its last run and last success.
    Jobs in no table (removed from their files) and one-off pushes are left out."""
    jobs: dict[str, dict] = {}
    for report in sorted(dashboard.job_tables(reports), key=lambda r: (r["live"], r["seen"])):
        for entry in report["jobs"]:
            row = jobs.setdefault(entry["name"], _blank_job(entry["name"]))
            row.update({f: entry.get(f) for f in (*JOB_FIELDS, "paused", "after", "on_failure")})
            if report["live"]:
                row["schedulers"].append(report["scheduler"])
    for name, row in jobs.items():
        row.update(last_runs.get(name, {}))
        row["schedulers"].sort()
    return [jobs[name] for name in sorted(jobs) if not dashboard.is_push(name)]


class Api:
    """What the handlers read: the store, the metrics, the sink's reports (sink.Reports)."""

    def __init__(self, store: Store, metrics: Metrics, reports: Any) -> None:
        self.store = store
        self.metrics = metrics
        self.reports = reports

    def runs(self, query: str) -> tuple[list[dict], bool]:
        """GET /api/runs: the records and whether the scan stopped at MAX_EXAMINED."""
        return self.store.scan(**parse_runs_query(query, time.time()))

    def jobs(self) -> list[dict]:
        """GET /api/jobs."""
        return merge_jobs(self.reports.snapshot(time.monotonic()), self.store.last_runs())

    def summary(self) -> dict:
        """GET /api/summary: everything the page shows but the recent-runs table."""
        now, reports = time.time(), self.reports.snapshot(time.monotonic())
        workers = self.reports.worker_reports()
        rows = merge_jobs(reports, self.store.last_runs())
        recent, complete = self.store.scan(since=now - dashboard.STRIP_WINDOW_S, limit=MAX_LIMIT)
        by_name = {row["job"]: row for row in rows}
        self.add_states(rows, workers, now)
        return {
            "now": now,
            "jobs": rows,
            "strips": dashboard.strips(recent, by_name),
            "strips_complete": complete and len(recent) < MAX_LIMIT,
            "lateness": dashboard.lateness_summary(recent, by_name),
            "schedulers": dashboard.scheduler_panel(
                reports, self.reports.configured, time.monotonic()
            ),
            "pools": dashboard.worker_panel(workers, {r["pool"] for r in rows if r["pool"]}),
            "sink": {"records": self.store.count(), "max_examined": self.store.max_examined},
            "errors": dashboard.schedule_errors(reports),
        }

    def add_states(self, rows: list[dict], workers: list[dict], now: float) -> None:
        """Each row's state and reason, and its last run's kind and lateness."""
        running = dashboard.running_jobs(workers)
        first_seen = self.reports.first_seen_times()
        for row in rows:
            interval = None
            if row["schedule"]:
                interval = schedule_interval(row["schedule"], row["timezone"] or "UTC")
            row["state"], row["reason"] = dashboard.job_state(
                row, row["last_run"], now, row["job"] in running,
                first_seen.get(row["job"]), interval,
            )  # fmt: skip
            if row["last_run"]:
                last = row["last_run"]
                last["kind"] = dashboard.run_kind(last, row)
                last["lateness"] = dashboard.lateness_s(last)


STATIC = {  # path -> (file under zcron/static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
# The page's script and style are files of this origin: no inline code can run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MAX_CONNECTIONS = 32  # handler threads at once; more are answered 503 at once
SAFE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
}
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Retry-After: 1\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: "
    + CSP.encode()
    + b"\r\nConnection: close\r\n\r\nbusy\n"
)


@lru_cache(maxsize=8)
def static_file(name: str) -> bytes:
    return (resources.files("zcron") / "static" / name).read_bytes()


def allowed_hosts(host: str, port: int, names: Iterable[str]) -> frozenset[str]:
    """Host header values to answer (DNS rebinding): the bound address, localhost and the
    configured names, each with the port; configured names also without it."""
    names = [name.lower() for name in names]
    literal = f"[{host}]" if ":" in host else host
    bare = {literal.lower(), "localhost", "127.0.0.1", "[::1]", *names}
    return frozenset({f"{name}:{port}" for name in bare} | set(names))


class Handler(BaseHTTPRequestHandler):
    """Routes GET requests; everything else is the stdlib's 501."""

    server: _Server
    timeout = 10  # a client that stalls mid-request does not hold its thread forever

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        url = urlsplit(self.path)
        if self.headers.get("Host", "").lower() not in self.server.hosts:
            self.send_json(HTTPStatus.MISDIRECTED_REQUEST, {"error": "unknown Host"})
            return
        try:
            self.route(url.path, url.query)
        except BadRequest as exc:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:  # a failed read must not take the server down
            log.exception("GET %s failed", url.path)
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})

    def route(self, path: str, query: str) -> None:
        api = self.server.api
        if path == "/metrics":
            self.send(HTTPStatus.OK, *api.metrics.exposition())
        elif path == "/api/runs":
            runs, complete = api.runs(query)
            # The answer says when the scan stopped early (a filter matching almost nothing).
            stopped = f"examined {api.store.max_examined} records"
            self.send_json(HTTPStatus.OK, runs, {} if complete else {"X-Zcron-Truncated": stopped})
        elif path == "/api/jobs":
            self.send_json(HTTPStatus.OK, api.jobs())
        elif path == "/api/summary":
            self.send_json(HTTPStatus.OK, api.summary())
        elif path in STATIC:
            name, content_type = STATIC[path]
            self.send(HTTPStatus.OK, static_file(name), content_type)
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {path}"})

    def send_json(self, status: HTTPStatus, body: Any, headers: dict | None = None) -> None:
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        self.send(status, data, "application/json", headers)

    def send(
        self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None
    ) -> None:
        self.send_response(status)
        fields = {"Content-Type": content_type, "Content-Length": str(len(body))}
        for name, value in {**fields, **SAFE_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("http %s " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: Api
    hosts: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve in a thread while fewer than MAX_CONNECTIONS are; refuse others at once."""
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


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

    def __init__(
        self, address: str, api: Api, insecure: bool = False, hosts: Iterable[str] = ()
    ) -> None:
        check_http_bind(address, insecure)
        host, port = split_address(address)
        cls = _Server6 if ":" in host else _Server
        try:
            self.server = cls((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve HTTP on {address}: {exc.strerror}") from None
        self.server.api = api
        self.server.hosts = allowed_hosts(host, self.server.server_address[1], hosts)
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
