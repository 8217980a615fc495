"""The scheduler's side of the peer protocol: heartbeats, view changes, catch-up, claims.

See docs/design.md, "Leaderless schedulers". Who owns a tick and which ticks are unfired
are plain functions of the job, the ledger's word, the view and `now`; `Takeover` applies
them when the view changes and fires through the callback it is given.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable

from zcron import protocol
from zcron.clock import Clock
from zcron.config import Config
from zcron.errors import ProtocolError
from zcron.fence import ahead_bound_s
from zcron.job import Job
from zcron.ledger import TickLedger
from zcron.log import iso_utc
from zcron.mesh import PeerMesh
from zcron.peers import Membership
from zcron.plan import LEAD_S, MAX_LEAD_S, Plan
from zcron.ring import OwnerCache, has_quorum, owner_of

log = logging.getLogger("zcron.scheduler")
MAX_CATCH_UP = 10_000  # ticks of one job fired by one catch-up, at most
MAX_HEARTBEAT_SKEW_S = 86400.0  # a peer's clock further off than this is a forgery
SUSPECT_MARGIN_S = 0.1  # loop and transit jitter on top of the bound below


def tick_owner(
    job: Job, tick: float, members: Membership, now_mono: float, as_of: float = 0.0,
    owners: OwnerCache | None = None,
) -> str | None:  # fmt: skip
    """The owner of a tick among the schedulers eligible for it in this view.

    A late tick whose eligible set is empty (the whole cluster was down, or warming
    up) belongs to the owner `as_of` now; otherwise its owner then, if still live,
    has fired it, and a newcomer must not.
    """
    eligible = members.eligible_at(tick, now_mono)
    if not eligible and as_of:
        eligible = members.eligible_at(as_of, now_mono)
    if members.digests_agree(now_mono):
        return owners.owner(job.name, eligible) if owners else owner_of(job.name, eligible)
    return owner_of(job.name, [p for p in eligible if members.knows(p, job.name)])


def caught_up(job: Job, handled: float | None, before: float) -> bool:
    """The steady state: no tick of the job between the last one handled and `before`."""
    return handled is not None and (job.next_after(handled) or before) >= before


def unfired_ticks(
    job: Job, handled: float | None, horizon: float | None, now: float
) -> list[float]:
    """Ticks after the last one handled that the heap has passed (up to `horizon`), within
    the grace and per the job's catch_up policy; the ones still to come all stay."""
    if handled is None or horizon is None or not job.enabled:
        return []
    ticks: list[float] = []
    tick = job.next_after(max(handled, now - job.misfire_grace))
    while tick is not None and tick < horizon and len(ticks) < MAX_CATCH_UP:
        ticks.append(tick)
        tick = job.next_after(tick)
    late = [t for t in ticks if t <= now]
    keep = {"none": [], "last": late[-1:], "all": late}[job.catch_up]
    return keep + [t for t in ticks if t > now]


def warm_up_s(config: Config) -> float:
    """How long after start we begin firing: every live peer has heard us (and we them)
    before it dispatches, up to MAX_LEAD_S ahead, a tick that becomes ours."""
    cluster = config.cluster
    if len(cluster.schedulers) == 1:
        return 0.0
    return cluster.peer_timeout + 2 * cluster.heartbeat + MAX_LEAD_S


class Takeover:
    """Peer messages, the view changes they cause, and the claims we announce."""

    def __init__(
        self, config: Config, clock: Clock, members: Membership, ledger: TickLedger,
        plan: Plan, mesh: PeerMesh, counters: dict[str, int],
        fire: Callable[[Job, float], None],
        reject: Callable[[str], None] = log.warning,
    ) -> None:  # fmt: skip
        self.config, self.clock, self.id = config, clock, members.me
        self.members, self.ledger, self.plan, self.mesh = members, ledger, plan, mesh
        self.counters, self.fire, self.reject = counters, fire, reject
        self.owners = OwnerCache()
        self.views_at: list[float] = []  # wall instants at which the view changes
        self.claims: list[list] = []
        self.next_heartbeat = 0.0
        self.last_expire_check = clock.monotonic()
        self.quorum_since: float | None = None  # wall: since when we see a majority
        self.quorum_lost_at: float | None = None  # wall: when we lost it while firing
        self.suspects: dict[str, float] = {}  # dead peer -> newest tick start it may have sent
        self.heartbeat_fields: Callable[[], dict] = dict  # more to say in heartbeats (pauses)
        self.on_rejoin: Callable[[str], None] = lambda why: None  # drop what the old view fired

    def owner(self, job: Job, tick: float, now_mono: float, as_of: float = 0.0) -> str | None:
        return tick_owner(job, tick, self.members, now_mono, as_of, self.owners)

    def may_fire(self, job: Job, tick: float, now_mono: float, as_of: float = 0.0) -> bool:
        """Ours to fire: unfired anywhere, we own it, and a quorum job sees a majority."""
        if self.owner(job, tick, now_mono, as_of) != self.id:
            return False
        if self.ledger.has_fired(job.name, tick) or tick <= self.plan.queued.get(job.name, -1.0):
            return False
        return not job.quorum or has_quorum(
            self.members.visible(now_mono), self.config.cluster.schedulers
        )

    def catch_up(
        self, job: Job, now: float, now_mono: float, before: float = float("inf"),
        as_of: float | None = None,
    ) -> int:  # fmt: skip
        """Fire the job's unfired ticks before `before` that are ours; how many.

        Run before firing any tick of the job too, so its ticks always fire in order and
        the ledger's newest tick never hides an older unfired one.
        """
        handled = self.plan.handled(job.name, self.ledger.last(job.name))
        if caught_up(job, handled, before):
            return 0
        fired = 0
        for tick in unfired_ticks(job, handled, self.plan.next_instant.get(job.name), now):
            if tick < before and self.may_fire(job, tick, now_mono, as_of or now):
                self.fire(job, tick)
                fired += 1
        self.counters["caught_up"] += fired
        return fired

    def sees_quorum(self, now_mono: float) -> bool:
        return has_quorum(self.members.visible(now_mono), self.config.cluster.schedulers)

    def check_quorum(self, now: float, now_mono: float) -> None:
        """Track since when we see a majority. A scheduler that lost it while firing and
        regains it next to a peer that kept one was on the minority side of a cut: its
        ledger lacks what the majority fired meanwhile, so it rejoins as a new incarnation
        (peers own the ticks until its warm-up ends) instead of catching those ticks up
        again (108 runs of quorum jobs twice in 3 minutes of cuts, before)."""
        if not self.sees_quorum(now_mono):
            self.quorum_since = None
            if self.quorum_lost_at is None and self.members.since <= now:
                self.quorum_lost_at = now
            return
        if self.quorum_since is None:
            self.quorum_since = now
        lost, self.quorum_lost_at = self.quorum_lost_at, None
        kept = [p.id for p in self.members.live(now_mono) if lost is not None
                and p.quorum_since is not None and p.quorum_since <= lost]  # fmt: skip
        if kept:
            self.counters["rejoins"] = self.counters.get("rejoins", 0) + 1
            log.warning("scheduler %s was cut off from the majority (%s kept one) since %s: "
                        "rejoining as a new incarnation", self.id, ", ".join(kept),
                        iso_utc(lost))  # fmt: skip
            self.on_rejoin(f"cut off from the majority ({', '.join(kept)} kept one)")
            self.start_firing(now)
            self.next_heartbeat = 0.0

    def suspect(self, peer_id: str, now: float, now_mono: float) -> None:
        """A peer we stopped counting may still have sent ticks of quorum jobs while its own
        view held us (until peer_timeout after we last heard it), each up to LEAD_S before
        its start, by a clock up to max_clock_skew off ours: none of those is fired again."""
        cluster = self.config.cluster
        heard = self.members.last_heard_wall(peer_id, now_mono, now)
        bound = heard + cluster.peer_timeout + LEAD_S + cluster.max_clock_skew
        self.suspects[peer_id] = bound + SUSPECT_MARGIN_S

    def maybe_fired_by(self, job: Job, tick: float, now: float, now_mono: float) -> str | None:
        """The dead peer that may have sent this tick of a quorum job, if any: it would own
        the tick were it live, and the tick starts before that peer's suspect bound."""
        for peer_id, bound in list(self.suspects.items()):
            if bound < now - MAX_LEAD_S:
                del self.suspects[peer_id]
            elif tick + job.delay_s <= bound:
                eligible = self.members.eligible_at(tick, now_mono) | {peer_id}
                if owner_of(job.name, eligible) == peer_id:
                    return peer_id
        return None

    def view_changed(self, now: float, now_mono: float, why: str) -> None:
        """Fire every unfired tick of the jobs we own now (per catch_up, within the grace)."""
        self.check_quorum(now, now_mono)
        fired = sum(self.catch_up(job, now, now_mono) for job in self.plan.jobs.values())
        self.record_claims()
        if fired:
            log.warning("%s: fired %d unfired ticks", why, fired)

    def claim(self, job: str, tick: float) -> None:
        self.ledger.note(job, tick)
        self.claims.append([job, tick])

    def record_claims(self) -> None:
        """Tell the peers what we fired, then commit it to the local ledger.

        Peers first: a slow fsync must not hold back the claims (or the heartbeats after
        them), or a live owner could look dead. The commit, in the ledger's writer thread,
        is for a restart of this scheduler, or of the whole cluster.
        """
        if self.claims:
            self.mesh.broadcast("claims", scheduler=self.id, ticks=self.claims)
            self.claims = []
            self.ledger.flush_async()

    def start_firing(self, now: float) -> None:
        """Fire from now plus the warm-up; the view changes at that instant."""
        self.members.since = now + warm_up_s(self.config)
        heapq.heappush(self.views_at, self.members.since)

    def heartbeat_if_due(self, now: float, now_mono: float) -> None:
        if now_mono < self.next_heartbeat:
            return
        self.next_heartbeat = now_mono + self.config.cluster.heartbeat
        was_eligible = self.members.self_eligible
        self.members.check_clock(self.config.cluster.max_clock_skew, now_mono)
        if was_eligible != self.members.self_eligible:
            log.warning(
                "scheduler %s %s",
                self.id,
                self.members.self_reason or "clock back within bounds: firing again",
            )
            self.view_changed(now, now_mono, "own clock check")
        self.check_quorum(now, now_mono)
        self.send_heartbeat(now, now_mono)

    def leave(self) -> None:
        """On a clean stop, say so: peers take our jobs at once instead of after peer_timeout."""
        self.members.self_eligible, self.members.self_reason = False, "stopping"
        self.send_heartbeat(self.clock.now(), self.clock.monotonic())
        self.clock.sleep(0.05)  # linger 0 would drop it: give the I/O thread a moment to send

    def send_heartbeat(self, now: float, now_mono: float) -> None:
        self.members.note_sent(now, now_mono)
        self.mesh.broadcast(
            "heartbeat", scheduler=self.id, since=self.members.since, sent=now,
            digest=self.members.my_digest, eligible=self.members.self_eligible,
            reason=self.members.self_reason, heard=self.members.echoes(now_mono),
            quorum_since=self.quorum_since, **self.heartbeat_fields(),
        )  # fmt: skip

    def expire_peers(self, now: float, now_mono: float) -> None:
        dead = self.members.expire(now_mono, self.last_expire_check)
        self.last_expire_check = now_mono
        for peer_id in dead:
            self.suspect(peer_id, now, now_mono)
        # Counted per dead peer, whether or not it left ticks unfired: with the 0.5 s lead a
        # peer killed just after it sent a tick leaves none (caught_up counts those fired).
        self.counters["takeovers"] += len(dead)
        if dead:
            log.warning(
                "peers %s silent for %.1fs: taking over their jobs",
                ", ".join(dead),
                self.config.cluster.peer_timeout,
            )
            self.view_changed(now, now_mono, f"peers {', '.join(dead)} dead")

    def change_view_if_due(self, now: float, now_mono: float) -> None:
        """A peer's (or our own) `since` has come: ownership moves at that instant."""
        if self.views_at and self.views_at[0] <= now:
            while self.views_at and self.views_at[0] <= now:
                heapq.heappop(self.views_at)
            self.view_changed(now, now_mono, "a scheduler started firing")

    def next_view_change(self) -> float | None:
        return self.views_at[0] if self.views_at else None

    def on_heartbeat(self, identity: bytes, msg: dict) -> None:
        now, now_mono = self.clock.now(), self.clock.monotonic()
        if msg["scheduler"] == self.id:
            return self.reject(f"a heartbeat under our own id {self.id}: is a second "
                               f"scheduler {self.id} running elsewhere?")  # fmt: skip
        # `since` may lie far back (a peer up for months), and a little ahead (its warm-up)
        skew = MAX_HEARTBEAT_SKEW_S
        sent = (msg["sent"], skew, skew)
        since = (msg["since"], math.inf, skew + warm_up_s(self.config))
        if not self.in_window(now, sent, since, what="heartbeat"):
            return
        peer = self.members.peers.get(msg["scheduler"])
        was_live = peer is not None and self.members.is_live(peer, now_mono)
        if self.members.heard(msg, now_mono, now):
            self.peer_changed(msg, was_live, now, now_mono)
        if msg["scheduler"] in self.members.needs_names(now_mono):
            self.mesh.send(msg["scheduler"], "jobset_request", scheduler=self.id)

    def peer_changed(self, msg: dict, was_live: bool, now: float, now_mono: float) -> None:
        """A heartbeat changed our view: the peer came (back), restarted, or no longer
        hears us (its echo of our heartbeats went stale: a one-way cut)."""
        peer_id = msg["scheduler"]
        if not self.members.is_live(self.members.peers[peer_id], now_mono):
            log.warning("peer %s no longer hears us: out of our view", peer_id)
            if was_live:
                self.suspect(peer_id, now, now_mono)
            return self.view_changed(now, now_mono, f"peer {peer_id} cut off from us")
        log.info("peer %s is live (firing from %s)", peer_id, iso_utc(msg["since"]))
        if msg["since"] > now:
            heapq.heappush(self.views_at, msg["since"])
        self.view_changed(now, now_mono, f"peer {peer_id} joined")

    def on_fired(self, identity: bytes, msg: dict) -> None:
        """A peer's claims or a worker's `accepted`: these ticks fired somewhere. Every
        tick must lie within [now - retention, now + max lead + max_clock_skew]: one claim
        of tick 1e300 once stopped a job for good, also after restarts (it was persisted)."""
        ahead = ahead_bound_s(self.config.cluster)
        behind = self.config.sink.retention
        ticks = ((t, behind, ahead) for _, t in msg["ticks"])
        if not self.in_window(self.clock.now(), *ticks, what="claims or accepted"):
            return
        peer = self.members.peers.get(msg.get("scheduler", ""))
        if peer is not None and not self.members.is_live(peer, self.clock.monotonic()):
            # Out of our view (cut off): its ticks are ours to fire, and its dispatches,
            # queued in a cut link, are refused as stale; its claims must not stop ours.
            self.counters["claims_ignored"] = self.counters.get("claims_ignored", 0) + 1
            return
        for job, tick in msg["ticks"]:
            if job in self.plan.jobs:
                self.ledger.note(job, float(tick))

    def in_window(self, now: float, *times: tuple[float, float, float], what: str) -> bool:
        """Whether each (time, how far back, how far ahead it may be) is within its window;
        else the message is dropped and counted."""
        try:
            for value, behind, ahead in times:
                protocol.check_window(value, now, behind, ahead, what)
        except ProtocolError as exc:
            self.reject(f"dropped {what}: {exc}")
            return False
        return True

    def on_jobset_request(self, identity: bytes, msg: dict) -> None:
        names = sorted(self.plan.jobs)
        size = protocol.NAMES_PER_PART
        parts = max(1, -(-len(names) // size))
        for part in range(parts):
            self.mesh.send(msg["scheduler"], "jobset", scheduler=self.id,
                           digest=self.members.my_digest, part=part, parts=parts,
                           names=names[part * size:(part + 1) * size])  # fmt: skip

    def on_jobset(self, identity: bytes, msg: dict) -> None:
        if self.members.note_names(msg):
            log.warning(
                "scheduler %s has a different job set (digest %s, ours %s)",
                msg["scheduler"],
                msg["digest"],
                self.members.my_digest,
            )
            self.view_changed(self.clock.now(), self.clock.monotonic(), "job sets compared")
