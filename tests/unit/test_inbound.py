"""The inbound budget of a host (net/inbound.py): streams refused, byte grants throttled, and
one request of any allowed size always able to progress."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from walrus_p2p.errors import ConfigError
from walrus_p2p.net.inbound import SMALL_REQUEST_BYTES, InboundBudget, InboundLimits
from walrus_p2p.types import PeerId

MIB = 1 << 20
ALICE = PeerId("alice")
BOB = PeerId("bob")


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8"])
def test_limits_must_be_positive_integers(value: object) -> None:
    with pytest.raises(ConfigError, match="max_streams"):
        InboundLimits(max_streams=value)  # type: ignore[arg-type]


def test_streams_beyond_the_per_peer_and_total_limits_are_refused() -> None:
    budget = InboundBudget(
        InboundLimits(max_streams=3, max_streams_per_peer=2, guaranteed_streams_per_peer=1)
    )
    assert budget.admit(ALICE) is None and budget.admit(ALICE) is None
    assert budget.admit(ALICE) == "streams_per_peer"
    assert budget.admit(BOB) is None
    assert budget.admit(BOB) == "streams"
    assert budget.streams == 3 and budget.held_by(ALICE) == (2, 0)
    budget.leave(ALICE, 0)
    assert budget.admit(BOB) is None
    assert budget.counts == {("refused", "streams_per_peer"): 1, ("refused", "streams"): 1}


def test_a_peer_with_few_streams_is_admitted_when_strangers_spent_the_total() -> None:
    budget = InboundBudget(
        InboundLimits(max_streams=4, max_streams_per_peer=4, guaranteed_streams_per_peer=2)
    )
    strangers = [PeerId(f"sybil-{index}") for index in range(2)]
    for stranger in strangers:
        for _ in range(2):
            assert budget.admit(stranger) is None
    assert budget.admit(strangers[0]) == "streams"  # the total is spent
    assert budget.admit(ALICE) is None and budget.admit(ALICE) is None  # guaranteed two
    assert budget.admit(ALICE) == "streams"
    assert budget.streams == 6


async def test_a_spent_budget_makes_readers_wait_until_bytes_come_back() -> None:
    budget = InboundBudget(InboundLimits(max_bytes=100 * MIB, max_bytes_per_peer=60 * MIB))
    for peer in (ALICE, ALICE, BOB):
        assert budget.admit(peer) is None
    await budget.reserve(ALICE, 50 * MIB)
    granted: list[str] = []

    async def take(peer: PeerId, size: int, name: str) -> None:
        await budget.reserve(peer, size * MIB)
        granted.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, ALICE, 20, "alice-second")  # 50 + 20 > 60 per peer: waits
        nursery.start_soon(take, BOB, 40, "bob")  # 50 + 40 <= 100: granted
        await trio.testing.wait_all_tasks_blocked()
        assert granted == ["bob"]
        assert budget.held_bytes == 90 * MIB
        budget.leave(ALICE, 50 * MIB)  # the first request is done
        await trio.testing.wait_all_tasks_blocked()
        assert granted == ["bob", "alice-second"]
    assert budget.held_by(ALICE) == (1, 20 * MIB) and budget.held_bytes == 60 * MIB
    assert budget.counts[("throttled", "bytes_per_peer")] == 1


async def test_a_waiting_grant_gives_up_at_the_callers_deadline() -> None:
    budget = InboundBudget(InboundLimits(max_bytes=10 * MIB, max_bytes_per_peer=10 * MIB))
    budget.admit(ALICE)
    budget.admit(BOB)
    await budget.reserve(ALICE, 10 * MIB)
    with trio.move_on_after(0.05) as scope:
        await budget.reserve(BOB, MIB)
    assert scope.cancelled_caught
    assert budget.held_by(BOB) == (1, 0) and budget.held_bytes == 10 * MIB
    assert budget.counts[("throttled", "bytes")] == 1


async def test_small_requests_are_never_held_back_by_big_ones() -> None:
    budget = InboundBudget(InboundLimits(max_bytes=100_000, max_bytes_per_peer=10 * MIB))
    budget.admit(ALICE)
    budget.admit(BOB)
    await budget.reserve(ALICE, 100_000)  # a stranger holds the whole budget
    with trio.fail_after(1):
        await budget.reserve(BOB, SMALL_REQUEST_BYTES)  # a status request: granted at once
    assert budget.held_bytes == 100_000 + SMALL_REQUEST_BYTES
    with trio.move_on_after(0.05) as scope:
        await budget.reserve(BOB, SMALL_REQUEST_BYTES + 1)
    assert scope.cancelled_caught
    assert budget.counts[("throttled", "bytes")] == 1


async def test_one_request_bigger_than_every_budget_still_progresses() -> None:
    budget = InboundBudget(InboundLimits(max_bytes=10 * MIB, max_bytes_per_peer=5 * MIB))
    budget.admit(ALICE)
    with trio.fail_after(1):
        await budget.reserve(ALICE, 1_000 * MIB)  # nothing held: granted at once
    assert budget.held_bytes == 1_000 * MIB
    budget.leave(ALICE, 1_000 * MIB)
    assert budget.held_bytes == 0 and budget.streams == 0
