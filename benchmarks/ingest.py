"""Results/s into LMDB, end to end (DEALER clients → sink → synced commit → ack) and store alone.

End to end, K client processes (as workers would) send N synthetic run records to a real
sink and count acks; the sink runs twice: as shipped (it drains up to MAX_BATCH records
per write transaction) and with MAX_BATCH = 1 (one synced transaction per record). The
store alone is timed with put_many of `batch` records per call (1 vs 100). Prints a table
and writes JSON.

    python3 benchmarks/ingest.py [--records 50000] [--per-record 5000] [--clients 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import zmq  # noqa: E402

from benchmarks.common import free_port  # noqa: E402
from zcron.protocol import decode, encode, record  # noqa: E402
from zcron.store import Store  # noqa: E402

WINDOW = 500  # records a client keeps unacknowledged, as a worker's spool would
# Run the real sink with another MAX_BATCH (1 = one synced transaction per record).
SINK = (
    "import sys, zcron.sink as s; s.MAX_BATCH = int(sys.argv[2]); "
    "sys.exit(s.cmd_sink({'--config': sys.argv[1]}))"
)


def synthetic(client: int, n: int) -> dict:
    tick = time.time() - 3600 + n
    return record(
        run_id=f"c{client}-{n:07d}",
        job=f"job-{n % 100:03d}",
        tick=tick,
        scheduler="a",
        worker=f"w{client}",
        dispatched=tick - 0.5,
        started=tick + 0.0004,
        finished=tick + 0.02,
        exit_code=0,
        status="ok",
        stdout_tail="synthetic output line\n" * 4,
    )


def client(address: str, index: int, count: int, start: mp.Event, out: mp.Queue) -> None:
    """Send `count` records, at most WINDOW unacknowledged, until all are acked."""
    frames = [encode("result", record=synthetic(index, n)) for n in range(count)]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"bench-{index}".encode())
    sock.connect(address)
    start.wait()
    began, sent, acked = time.monotonic(), 0, 0
    while acked < count:
        while sent < count and sent - acked < WINDOW:
            sock.send(frames[sent])
            sent += 1
        if sock.poll(10_000):
            acked += len(decode(sock.recv())[1]["run_ids"])
        else:
            raise SystemExit(f"client {index}: no ack for 10 s ({acked}/{count})")
    out.put((began, time.monotonic()))
    sock.close()
    ctx.term()


def write_config(root: Path) -> tuple[Path, str, str]:
    sink, http = f"tcp://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = root / "zcron.conf"
    config.write_text(
        f'[cluster]\nsink = "{sink}"\n[sink]\nhttp = "{http}"\ndata = "{root}/sink"\n'
    )
    return config, sink, http


def wait_http(http: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://{http}/api/jobs", timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the sink did not start")


def end_to_end(records: int, clients: int, max_batch: int) -> dict:
    """Records/s through a real sink process with the given MAX_BATCH."""
    root = Path(tempfile.mkdtemp(prefix="zcron-ingest-"))
    config, sink_address, http = write_config(root)
    sink = subprocess.Popen(
        [sys.executable, "-c", SINK, str(config), str(max_batch)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(http, sink)
        start, out = mp.Event(), mp.Queue()
        share = records // clients
        workers = [
            mp.Process(target=client, args=(sink_address, i, share, start, out))
            for i in range(clients)
        ]
        for proc in workers:
            proc.start()
        time.sleep(1.0)  # let every client encode its records and connect
        start.set()
        spans = [out.get(timeout=600) for _ in workers]
        for proc in workers:
            proc.join()
        seconds = max(end for _, end in spans) - min(begin for begin, _ in spans)
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)
    store = Store(str(root / "sink"))
    stored = store.count()
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    if stored != share * clients:
        raise SystemExit(f"acked {share * clients} records but the store holds {stored}")
    return {"records": stored, "seconds": seconds, "per_s": stored / seconds}


def store_only(records: int, batch: int) -> dict:
    """Records/s of Store.put_many with `batch` records per synced transaction."""
    root = tempfile.mkdtemp(prefix="zcron-store-")
    store = Store(root)
    data = [synthetic(0, n) for n in range(records)]
    began = time.monotonic()
    for start in range(0, records, batch):
        store.put_many(data[start : start + batch])
    seconds = time.monotonic() - began
    assert store.count() == records
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return {"records": records, "seconds": seconds, "per_s": records / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000, help="batched runs")
    parser.add_argument("--per-record", type=int, default=5_000, help="one-txn-per-record runs")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/ingest.json"))
    args = parser.parse_args()
    rows = [
        ("end to end", "sink as shipped (batched)", end_to_end(args.records, args.clients, 500)),
        ("end to end", "sink, 1 record per txn", end_to_end(args.per_record, args.clients, 1)),
        ("store only", "put_many, 100 per txn", store_only(args.records, 100)),
        ("store only", "put_many, 1 per txn", store_only(args.per_record, 1)),
    ]
    print(f"{'path':<12} {'mode':<28} {'records':>8} {'seconds':>8} {'records/s':>10}")
    for path, mode, row in rows:
        seconds, per_s = row["seconds"], row["per_s"]
        print(f"{path:<12} {mode:<28} {row['records']:>8} {seconds:>8.2f} {per_s:>10.0f}")
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "clients": args.clients,
        "window": WINDOW,
        "rows": [{"path": p, "mode": m, **row} for p, m, row in rows],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
