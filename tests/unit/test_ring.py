from collections import Counter

import pytest

from zcron.ring import OwnerCache, has_quorum, owner_of

JOBS = [f"job-{i}" for i in range(10_000)]


def owners(peers: list[str]) -> dict[str, str]:
    return {job: owner_of(job, peers) for job in JOBS}


@pytest.mark.parametrize("count", [3, 5, 10])
def test_each_peer_owns_its_fair_share_within_ten_percent(count: int) -> None:
    peers = [f"s{i}" for i in range(count)]
    shares = Counter(owners(peers).values())
    fair = len(JOBS) / count
    assert set(shares) == set(peers)
    assert all(abs(n - fair) <= 0.10 * fair for n in shares.values()), shares


def test_when_a_peer_leaves_only_its_jobs_move_and_they_move_back() -> None:
    peers = ["a", "b", "c", "d", "e"]
    before = owners(peers)
    after = owners([p for p in peers if p != "c"])
    moved = {job for job in JOBS if before[job] != after[job]}
    assert moved == {job for job in JOBS if before[job] == "c"}
    assert owners(peers) == before


def test_owner_does_not_depend_on_the_order_of_peers() -> None:
    assert all(owner_of(j, ["a", "b", "c"]) == owner_of(j, ["c", "a", "b"]) for j in JOBS[:500])


def test_no_peers_no_owner() -> None:
    assert owner_of("x", []) is None


@pytest.mark.parametrize(
    "visible, configured, quorum",
    [
        ({"a"}, {"a"}, True),
        ({"a"}, {"a", "b"}, False),
        ({"a", "b"}, {"a", "b", "c"}, True),
        ({"a"}, {"a", "b", "c"}, False),
        ({"a", "x"}, {"a", "b", "c"}, False),
    ],
)
def test_quorum_is_a_majority_of_the_configured(visible, configured, quorum) -> None:
    assert has_quorum(visible, configured) is quorum


def test_owner_cache_follows_the_peer_set() -> None:
    cache = OwnerCache()
    three, two = frozenset("abc"), frozenset("ab")
    assert [cache.owner(j, three) for j in JOBS[:100]] == [owner_of(j, three) for j in JOBS[:100]]
    assert [cache.owner(j, two) for j in JOBS[:100]] == [owner_of(j, two) for j in JOBS[:100]]
