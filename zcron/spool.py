"""A durable outbox of run records: kept on local disk until the sink acknowledges them."""

from __future__ import annotations

import logging
import marshal
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import zmq

from zcron import protocol
from zcron.errors import ProtocolError
from zcron.net import receive, send_nowait

log = logging.getLogger(__name__)
RESEND_AFTER_S = 2.0
# While the sink stays silent each record waits twice as long before its next resend, up
# to this: every send to an absent sink sits in the socket's queue, and resending the whole
# spool every 2 s would fill it (and flood the sink with duplicates when it is back).
MAX_RESEND_AFTER_S = 30.0
# Records per segment file before the next one is started: a segment is deleted only once
# all its records are acknowledged, so this bounds what one slow record keeps on disk.
SEGMENT_RECORDS = 1000
RESULTS_BYTES = 256 << 10  # a `results` message's records, estimated (the limit is 1 MiB)
ACKED = "acked"  # the key of an ack marker: {"acked": [run ids]}


# Each entry is framed: MAGIC, length and CRC-32 of the msgpack payload, then the payload.
# One bad byte then costs the one record it hit (the reader re-syncs on the next MAGIC
# whose checksum holds), not the rest of the segment. 0xC1 never starts a msgpack object.
MAGIC = b"\xc1ZR1"
HEADER = struct.Struct(">4sII")
MAX_ENTRY = 1 << 22


def frame(entry: dict) -> bytes:
    """One spool entry, framed for append."""
    payload = msgpack.packb(entry, use_bin_type=True)
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _entries(data: bytes) -> Iterator[tuple[object, str | None]]:
    """(entry, None) for each intact entry, (None, why) for each damaged stretch."""
    pos = 0
    while pos < len(data):
        problem = None
        if data[pos : pos + 4] != MAGIC or pos + HEADER.size > len(data):
            problem = "no entry header"
        else:
            _, size, crc = HEADER.unpack_from(data, pos)
            payload = data[pos + HEADER.size : pos + HEADER.size + size]
            if size > MAX_ENTRY or len(payload) != size:
                problem = "truncated entry"
            elif zlib.crc32(payload) != crc:
                problem = "checksum mismatch"
            else:
                try:
                    yield msgpack.unpackb(payload, raw=False), None
                except Exception:  # msgpack raises several unrelated types on garbage
                    yield None, "undecodable entry"
                pos += HEADER.size + size
                continue
        yield None, problem
        found = data.find(MAGIC, pos + 1)
        pos = len(data) if found < 0 else found


def _unframed(data: bytes) -> Iterator[tuple[object, str | None]]:
    """Entries of a segment written before framing (zcron 0.1): a bare msgpack stream."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    whole = 0  # bytes up to the end of the last complete entry
    try:
        for entry in unpacker:
            whole = unpacker.tell()
            yield entry, None
    except Exception:  # msgpack raises several unrelated types on garbage
        yield None, "undecodable entry"
        return
    if whole != len(data):
        yield None, "truncated entry at the end"


def read_segment(data: bytes) -> dict[str, dict]:
    """The records in a segment that no ack marker after them settled, by run id; raise
    ValueError(why, the intact records) when some entry was damaged (each costs itself)."""
    records: dict[str, dict] = {}
    damage = None
    entries = _entries(data) if data.startswith(MAGIC) or not data else _unframed(data)
    for entry, problem in entries:
        if isinstance(entry, dict) and isinstance(entry.get(ACKED), list):
            for run_id in entry[ACKED]:
                records.pop(run_id, None)
        elif isinstance(entry, dict) and isinstance(entry.get("run_id"), str):
            records[entry["run_id"]] = entry
        else:
            damage = damage or problem or f"not a run record: {entry!r:.80}"
    if damage is not None:
        raise ValueError(damage, records)
    return records


OWNER_MARK = "@"  # ends the owner's id in a file name: `seg-w1@<ns>.rec`, `orphans-w1@...`


def owner_tag(owner: str | None) -> str:
    """The owner's part of a file name (an id's characters other than these become _)."""
    return "" if not owner else re.sub(r"[^A-Za-z0-9_.-]", "_", owner)[:64] + OWNER_MARK


def pending_on_disk(directory: str | Path) -> int:
    """Records a spool directory holds unacknowledged, read without changing it (a record
    being appended right now is not counted)."""
    count = 0
    for path in Path(directory).glob("*.rec"):
        try:
            count += len(read_segment(path.read_bytes()))
        except ValueError as exc:
            count += len(exc.args[1])
        except FileNotFoundError:
            pass  # deleted since the listing: all acknowledged
    return count


class Spool:
    """Unacknowledged records appended to segment files; a segment is deleted once every
    record in it is acknowledged.

    A record survives a worker restart and a sink outage; `due(now)` says what to (re)send.
    Appending to a file costs one write; a file per record cost an inode allocation and a
    deletion, which was a third of a busy worker's CPU (ext4's search for a free inode).
    """

    def __init__(self, directory: str, owner: str | None = None):
        """`owner`: the worker id whose files these are. Workers of one host may share a
        directory (the lock is per id): a worker's segments and its spawner's reports
        carry its id, and a restarted worker takes only its own (and unnamed ones, from
        before names carried it). Taking another's, it sent them under its key and the
        sink refused them for good: the nemesis found 7 records spooled forever."""
        self.directory = Path(directory)
        self.tag = owner_tag(owner)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pending: dict[str, dict] = {}
        self.sent_at: dict[str, float] = {}
        self.wait: dict[str, float] = {}  # run id -> how long after its last send to resend
        self.segment_of: dict[str, Path] = {}  # run id -> the segment holding it
        self.unacked: dict[Path, set[str]] = {}  # segment -> its records not yet acknowledged
        self.segment: Path | None = None  # the segment being appended to
        self.segment_fd = -1
        self.segment_records = 0
        self.write_errors = 0
        self.unsent: list[dict] = []  # added since the last send_new
        self._load()
        self._take_spawner_reports()

    def _load(self) -> None:
        """Read every segment (and old one-record files), then move what is pending into a
        fresh segment: a torn tail from a crash is set aside as .bad, its good records kept."""
        found: list[dict] = []
        old = sorted(p for p in self.directory.glob("*.rec") if self.ours(p.name))
        for path in old:
            found += self._read(path)
        for rec in found:
            if rec["run_id"] not in self.pending:
                self.add(rec)
        for path in old:
            if path.exists():
                path.unlink()
        if self.pending:
            log.info("spool %s: %d records to deliver", self.directory, len(self.pending))

    def _take_spawner_reports(self) -> None:
        """Runs that ended on their own after this worker's previous process died, as its
        spawners wrote them (spawner_process.Ledger); each becomes a record unless the
        worker spooled its own (one record per run id). A report that is not a list of
        valid records is set aside as .bad, as a torn segment is."""
        for path in sorted(self.directory.glob("orphans-*.rep")):
            if not self.ours(path.name):
                continue
            try:
                records = marshal.loads(path.read_bytes())
                if not isinstance(records, list):
                    raise ValueError("not a list")
                for rec in records:
                    protocol.validate("result", {"record": rec})
            except (OSError, EOFError, ValueError, TypeError, ProtocolError) as exc:
                log.error("spool %s: spawner report %s unreadable (%s); moved to .bad",
                          self.directory, path.name, exc)  # fmt: skip
                path.rename(path.with_suffix(".bad"))
                continue
            taken = [rec for rec in records if rec["run_id"] not in self.pending]
            for rec in taken:
                self.add(rec)
            path.unlink()
            log.warning("spool %s: %d runs that ended after the worker died, from its "
                        "spawner's report", self.directory, len(taken))  # fmt: skip

    @property
    def reports_prefix(self) -> str:
        """Where our spawner writes its reports (spawner_process.REPORTS_ENV): the names
        _take_spawner_reports reads."""
        return str(self.directory / f"orphans-{self.tag}")

    def ours(self, name: str) -> bool:
        """A file of ours: named with our tag, or with none (written before names carried
        the owner); every file when we have no owner."""
        if not self.tag:
            return True
        _, _, rest = name.partition("-")
        return rest.startswith(self.tag) or OWNER_MARK not in rest

    def _read(self, path: Path) -> list[dict]:
        data = path.read_bytes()
        try:
            records = read_segment(data)
        except ValueError as exc:  # a torn write from a crash: keep the file aside, say so
            records = exc.args[1]
            log.error("spool %s unreadable after %d records (%s); moved to %s.bad",
                      path, len(records), exc.args[0], path.stem)  # fmt: skip
            path.rename(path.with_suffix(".bad"))
        return list(records.values())

    def add(self, rec: dict) -> None:
        """Persist a record, then hold it until acknowledged. A failed write (a full disk)
        is logged and counted; the record is still kept in memory and sent."""
        run_id = rec["run_id"]
        self.pending[run_id] = rec
        self.unsent.append(rec)
        try:
            segment = self._append(frame(rec))
        except OSError as exc:
            self.write_errors += 1
            log.error("spool %s: cannot write record %s (%s); kept in memory only",
                      self.directory, run_id, exc.strerror or exc)  # fmt: skip
            return
        self.segment_records += 1
        self.segment_of[run_id] = segment
        self.unacked.setdefault(segment, set()).add(run_id)

    def _append(self, frame: bytes) -> Path:
        if self.segment is None or self.segment_records >= SEGMENT_RECORDS:
            self._close_segment()
            self.segment = self.directory / f"seg-{self.tag}{time.time_ns():x}.rec"
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            self.segment_fd = os.open(self.segment, flags, 0o600)
            self.segment_records = 0
        size = os.fstat(self.segment_fd).st_size
        try:
            written = os.write(self.segment_fd, frame)
            if written != len(frame):
                raise OSError(28, "short write (no space left on device?)")
        except OSError:
            try:  # never leave half a record for the next append to follow
                os.ftruncate(self.segment_fd, size)
            except OSError:
                self._close_segment()
            raise
        return self.segment

    def _close_segment(self) -> None:
        if self.segment_fd >= 0:
            os.close(self.segment_fd)
        self.segment, self.segment_fd = None, -1

    def mark_sent(self, run_id: str, now: float) -> None:
        self.sent_at[run_id] = now

    def send_new(self, sink: zmq.Socket, now: float) -> None:
        """Send what was added since the last call (a loop turn's records, at its end)."""
        if self.unsent:
            records, self.unsent = self.unsent, []
            self.send_turn(sink, records, now)

    def send_turn(self, sink: zmq.Socket, records: list[dict], now: float) -> None:
        """A loop turn's records to the sink in as few `results` as fit: one message and
        one wake-up of the sink per turn, not per record (at 2 slots, a worker's sends
        were a quarter of its busy time; the sink drained one record per message)."""
        start = 0
        while start < len(records):
            chunk, size = [], 0
            while start < len(records) and len(chunk) < protocol.MAX_RESULTS:
                rec = records[start]
                # the tails dominate; 3 bytes a character at worst in UTF-8
                size += 600 + 3 * (len(rec["stdout_tail"]) + len(rec["stderr_tail"]))
                if chunk and size > RESULTS_BYTES:
                    break
                chunk.append(rec)
                start += 1
            send_nowait(sink, protocol.encode("results", records=chunk))
            for rec in chunk:
                self.sent_at[rec["run_id"]] = now

    def ack(self, run_ids: list[str]) -> None:
        """Forget acknowledged records; the sink answers, so resend the rest promptly again.

        A segment that still holds unacknowledged records gets an ack marker appended, so
        that a restart does not resend what the sink already has."""
        settled: dict[Path, list[str]] = {}
        for run_id in run_ids:
            if self.pending.pop(run_id, None) is None:
                continue
            self.sent_at.pop(run_id, None)
            segment = self.segment_of.pop(run_id, None)
            if segment is not None:
                self.unacked[segment].discard(run_id)
                settled.setdefault(segment, []).append(run_id)
        for segment, acked in settled.items():
            if not self.unacked[segment]:
                self._delete(segment)
            else:
                self._mark_acked(segment, acked)
        self.wait.clear()

    def _mark_acked(self, segment: Path, run_ids: list[str]) -> None:
        marker = frame({ACKED: run_ids})
        try:
            if segment == self.segment:
                self._append(marker)
            else:
                with open(segment, "ab") as out:
                    out.write(marker)
        except OSError as exc:  # only costs a duplicate resend after a restart
            log.warning("spool %s: cannot mark records acknowledged (%s)", segment, exc)

    def _delete(self, segment: Path) -> None:
        del self.unacked[segment]
        if segment == self.segment:
            self._close_segment()
        segment.unlink(missing_ok=True)

    def due(self, now: float, limit: int = 500) -> list[dict]:
        """Records never sent, or unacknowledged for longer than their wait (2 s, doubling)."""
        out = []
        for run_id, rec in self.pending.items():
            last = self.sent_at.get(run_id)
            wait = self.wait.get(run_id, RESEND_AFTER_S)
            if last is not None and now - last < wait:
                continue
            if last is not None:
                self.wait[run_id] = min(2 * wait, MAX_RESEND_AFTER_S)
            self.sent_at[run_id] = now
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    def take_acks(self, sink: zmq.Socket, reject: Callable[[str], None]) -> None:
        """Apply every `ack` waiting on the socket to the sink; anything else is rejected."""
        for _, msg in receive(sink, ("ack",), lambda why: reject(f"dropped from the sink: {why}")):
            self.ack(msg["run_ids"])

    def __len__(self) -> int:
        return len(self.pending)
