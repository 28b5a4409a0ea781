"""The direct consensus path of the epoch service (docs/epochs.md, "Transport").

No network: the service runs on a stub peer (committee, genesis, an in-memory store for the
journal and the records); requests are handed to :meth:`EpochService.serve_messages` as the
epochs protocol handler would, and :class:`EpochLinks` talks to a scripted caller.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
import trio
from epoch_stubs import certified, epoch_service
from epoch_stubs import prevote as stub_prevote

from walrus_p2p.core import wire
from walrus_p2p.core.consensus import EpochAgreement, Step, Timeout, Vote
from walrus_p2p.core.epochs import (
    EpochMessagesReply,
    EpochMessagesRequest,
    propose_next,
)
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import (
    VoteKind,
)
from walrus_p2p.errors import PeerUnreachableError, WalrusError
from walrus_p2p.node.epoch_links import EpochLinks, take_batch
from walrus_p2p.node.epochs import (
    EARLY_BYTES_KEPT,
    EARLY_STRANGER_BYTES_KEPT,
    MAX_HINTS,
    EpochService,
    sync_wait,
)
from walrus_p2p.node.ratelimit import Rate, RequestRates
from walrus_p2p.testing import fuzz
from walrus_p2p.testing.epochs import epoch_genesis
from walrus_p2p.types import Epoch, PeerId

PEERS = [Identity.from_seed(bytes([7, index]) * 16) for index in range(4)]
OUTSIDER = Identity.from_seed(bytes([7, 99]) * 16)


def make_service() -> tuple[EpochService, Genesis]:
    genesis = epoch_genesis(
        PEERS,
        [f"/ip4/127.0.0.1/tcp/{5000 + index}" for index in range(4)],
        network="direct-rules",
        n_shards=8,
        epoch_seconds=3600,
        start_in=-10,
    )
    service = epoch_service(genesis, PEERS[0])
    return service, genesis


def prevote(signer: Identity, genesis: Genesis, round_: int = 0) -> Vote:
    return stub_prevote(signer, genesis.network_id, 1, round_)


def request(
    messages: list[wire.Message],
    *,
    epoch: int = 1,
    round_: int = 0,
    incarnation: bytes = b"A" * 8,
) -> EpochMessagesRequest:
    return EpochMessagesRequest(
        epoch=Epoch(epoch),
        round=round_,
        incarnation=incarnation,
        messages=tuple(wire.encode(m) for m in messages),
    )


async def running_agreement(service: EpochService) -> EpochAgreement:
    agreement, _changed = await service._prepare_agreement()
    agreement.own_value = propose_next(service.genesis, agreement.committee, {})
    await service._process(agreement, agreement.start(trio.current_time()))
    return agreement


async def test_member_votes_are_counted_and_outsiders_refused() -> None:
    service, genesis = make_service()
    agreement = await running_agreement(service)
    reply = await service.serve_messages(request([prevote(PEERS[1], genesis)]), PEERS[1].peer_id)
    assert isinstance(reply, EpochMessagesReply)
    assert reply.epoch == 1 and reply.messages == ()
    votes = agreement._votes[(VoteKind.PREVOTE, 0)].by_signer
    assert PEERS[1].peer_id in votes
    # A forged vote in the same batch is dropped, the batch is still answered.
    forged = dataclasses.replace(prevote(PEERS[2], genesis), signature=bytes(64))
    await service.serve_messages(request([forged]), PEERS[2].peer_id)
    assert PEERS[2].peer_id not in votes
    with pytest.raises(WalrusError) as refused:
        await service.serve_messages(request([prevote(OUTSIDER, genesis)]), OUTSIDER.peer_id)
    assert refused.value.reason == "NOT_A_MEMBER"
    assert OUTSIDER.peer_id not in votes


async def test_malformed_messages_in_a_batch_are_skipped() -> None:
    service, genesis = make_service()
    agreement = await running_agreement(service)
    batch = EpochMessagesRequest(
        epoch=Epoch(1),
        round=0,
        incarnation=b"A" * 8,
        messages=(b"\x82\x01", wire.encode(prevote(PEERS[3], genesis))),
    )
    await service.serve_messages(batch, PEERS[3].peer_id)
    assert PEERS[3].peer_id in agreement._votes[(VoteKind.PREVOTE, 0)].by_signer


async def test_a_later_epoch_hints_a_sync_from_the_sender() -> None:
    service, _genesis = make_service()
    await running_agreement(service)
    assert not service._sync_wanted.is_set()
    await service.serve_messages(request([], epoch=3), PEERS[2].peer_id)
    assert service._sync_wanted.is_set()
    assert service._hinted == {PEERS[2].peer_id: 2}


async def test_evidence_goes_to_peers_that_restarted_or_fell_behind() -> None:
    service, genesis = make_service()
    agreement = await running_agreement(service)
    # The vote comes from the round's proposer (its own vote, relayed): no fallback evidence.
    signer = next((p for p in PEERS[1:] if p.peer_id == agreement.proposer(0)), PEERS[1])
    member = signer.peer_id
    vote = prevote(signer, genesis)
    # Past the propose timeout of round 0: this peer has signed a prevote.
    await service._process(
        agreement, agreement.on_timeout(Timeout(Step.PROPOSE, 0, 0.0), trio.current_time())
    )
    own = {wire.encode(m) for m in agreement.rebroadcast()}
    assert own
    # Same round, first contact carrying a vote: nothing to add.
    assert (await service.serve_messages(request([vote]), member)).messages == ()
    # The same process again: still nothing.
    assert (await service.serve_messages(request([vote]), member)).messages == ()
    # A new incarnation (it restarted and lost what it was sent): everything this peer signed.
    reply = await service.serve_messages(request([vote], incarnation=b"B" * 8), member)
    assert set(reply.messages) == own
    # Behind by a round: sent once per round of this peer, not on every request.
    agreement.round = 2
    behind = request([vote], round_=1, incarnation=b"B" * 8)
    assert set((await service.serve_messages(behind, member)).messages) == own
    assert (await service.serve_messages(behind, member)).messages == ()


async def test_a_greeting_from_a_started_process_gets_what_it_lost() -> None:
    # A process that starts greets every member with a request without messages; the member
    # answers with its own messages of the running agreement, even the first time it hears of
    # that process (it cannot tell a restart from a first contact then).
    service, _genesis = make_service()
    agreement = await running_agreement(service)
    await service._process(
        agreement, agreement.on_timeout(Timeout(Step.PROPOSE, 0, 0.0), trio.current_time())
    )
    own = {wire.encode(m) for m in agreement.rebroadcast()}
    assert own
    reply = await service.serve_messages(request([]), PEERS[2].peer_id)
    assert set(reply.messages) == own
    # Once per round: a second greeting of the same process in the same round gets nothing.
    assert (await service.serve_messages(request([]), PEERS[2].peer_id)).messages == ()


async def test_a_peer_still_agreeing_on_a_decided_epoch_gets_the_record() -> None:
    service, genesis = make_service()
    await running_agreement(service)
    record = certified(genesis, PEERS[:3])
    assert await service.apply_record(record, source="test")
    assert service.epoch == 1
    reply = await service.serve_messages(request([]), PEERS[2].peer_id)
    assert reply.messages == (wire.encode(record),)
    assert service.ctx.metrics.epoch_current._value.get() == 1  # type: ignore[attr-defined]


def test_take_batch_bounds_count_and_bytes() -> None:
    items = [bytes([i]) * 100 for i in range(10)]
    assert take_batch(items, max_count=3) == items[:3]
    assert take_batch(items, max_bytes=250) == items[:2]
    assert take_batch([b"x" * 1000], max_bytes=10) == [b"x" * 1000]  # one always goes
    assert take_batch([]) == []


def test_request_rates_refuse_beyond_the_burst_and_refill() -> None:
    now = [0.0]
    rates = RequestRates({"Ping": Rate(2.0, 3.0)}, max_entries=2, clock=lambda: now[0])
    peer = PeerId("peer-a")
    assert [rates.allow(peer, "Ping") for _ in range(4)] == [True, True, True, False]
    assert rates.allow(PeerId("peer-b"), "Ping")  # buckets are per peer
    assert rates.allow(peer, "Other")  # kinds without a rate are not limited
    now[0] += 0.5  # one token back
    assert rates.allow(peer, "Ping") and not rates.allow(peer, "Ping")
    assert rates.refused == 2
    rates.allow(PeerId("peer-c"), "Ping")
    assert len(rates._buckets) == 2  # bounded table


class ScriptedCaller:
    """Fails the first ``failures`` calls, then answers with ``reply``; records what it got."""

    def __init__(self, failures: int, reply: EpochMessagesReply) -> None:
        self.host = type("H", (), {"peer_id": PeerId("self")})()
        self.failures = failures
        self.reply = reply
        self.calls: list[tuple[float, EpochMessagesRequest]] = []

    async def call(
        self, peer: PeerId, message: EpochMessagesRequest, expected: type, *, timeout: float
    ) -> EpochMessagesReply:
        self.calls.append((trio.current_time(), message))
        if len(self.calls) <= self.failures:
            raise PeerUnreachableError("down")
        return self.reply


async def test_links_retry_with_backoff_and_deliver_replies(autojump_clock: Any) -> None:
    evidence = EpochMessagesReply(epoch=Epoch(1), round=0, messages=(b"record",))
    caller = ScriptedCaller(failures=3, reply=evidence)
    got: list[tuple[PeerId, EpochMessagesReply]] = []

    async def on_reply(peer: PeerId, reply: EpochMessagesReply) -> None:
        got.append((peer, reply))

    links = EpochLinks(
        caller,  # type: ignore[arg-type]
        incarnation=b"I" * 8,
        position=lambda: (1, 0),
        on_reply=on_reply,
        max_backoff=4.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        links.send([PeerId("self"), PeerId("m1")], [b"vote-a", b"vote-b"])
        links.send([PeerId("m1")], [b"vote-a"])  # deduplicated
        with trio.fail_after(60):
            while not got:
                await trio.sleep(0.1)
        # A decision replaces what a member has not acknowledged yet.
        caller.failures = 10**6
        links.send([PeerId("m2")], [b"vote-c"])
        links.replace_pending(b"record")
        assert links._outboxes[PeerId("m2")].pending == {b"record": None}
        nursery.cancel_scope.cancel()
    # Never to itself; four attempts (three failed), each with the whole batch.
    calls = [call for call in caller.calls if call[1].messages != (b"vote-c",)][:4]
    assert len(calls) == 4
    assert all(call.messages == (b"vote-a", b"vote-b") for _, call in calls)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    # Jittered doubling: 0.5-1 s, 1-2 s, 2-4 s.
    assert 0.5 <= gaps[0] <= 1.0 and 1.0 <= gaps[1] <= 2.0 and 2.0 <= gaps[2] <= 4.0
    assert got == [(PeerId("m1"), evidence)]
    assert links._outboxes[PeerId("m1")].pending == {}
    assert links.failed_requests >= 3


async def test_links_greet_once_and_a_member_heard_from_cuts_the_backoff_short(
    autojump_clock: Any,
) -> None:
    caller = ScriptedCaller(failures=2, reply=EpochMessagesReply(Epoch(1), 0, ()))

    async def on_reply(peer: PeerId, reply: EpochMessagesReply) -> None:
        pass

    links = EpochLinks(
        caller,  # type: ignore[arg-type]
        incarnation=b"I" * 8,
        position=lambda: (1, 0),
        on_reply=on_reply,
        max_backoff=16.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run)
        # A greeting goes even though nothing is queued (never to itself).
        links.greet([PeerId("self"), PeerId("m1")])
        with trio.fail_after(5):
            while len(caller.calls) < 2:  # the first attempt failed, the second as well
                await trio.sleep(0.01)
        failed_at = trio.current_time()
        # Now backing off 1-2 s after the second failure; hearing from the member ends it.
        await trio.sleep(0.2)
        links.revive(PeerId("m1"))
        with trio.fail_after(5):
            while len(caller.calls) < 3:
                await trio.sleep(0.01)
        retried_after = caller.calls[2][0] - failed_at
        # Delivered: the greeting is not repeated.
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert [call.messages for _, call in caller.calls] == [(), (), ()]
    assert all(call.incarnation == b"I" * 8 for _, call in caller.calls)
    assert retried_after < 0.5
    assert len(caller.calls) == 3


async def test_a_vote_sent_by_its_signer_outside_the_relay_gets_this_peers_votes() -> None:
    # A member that is not the round's proposer sends its own vote directly: it fell back to
    # all-to-all because the relay did not reach it (the proposer is down), so it lacks this
    # peer's vote too. If this peer already sees a quorum it does not fall back itself; without
    # this answer the member would wait for that vote forever (seen with 4 peers, the proposer
    # killed: the change never completed).
    service, genesis = make_service()
    agreement = await running_agreement(service)
    await service._process(
        agreement, agreement.on_timeout(Timeout(Step.PROPOSE, 0, 0.0), trio.current_time())
    )
    own = {wire.encode(m) for m in agreement.rebroadcast()}
    assert own
    proposer = agreement.proposer(0)
    # Fixed keys: this peer does not propose round 0 (when it does, votes come to it directly).
    assert proposer != PEERS[0].peer_id
    member = next(p for p in PEERS[1:] if p.peer_id != proposer)
    reply = await service.serve_messages(request([prevote(member, genesis)]), member.peer_id)
    assert set(reply.messages) == own
    # Once per step: the same fallback vote again gets nothing more.
    again = await service.serve_messages(request([prevote(member, genesis)]), member.peer_id)
    assert again.messages == ()
    # A vote relayed by the proposer (not sent by its signer) is no such evidence.
    other = next(p for p in PEERS[1:] if p.peer_id not in (proposer, member.peer_id))
    relayed = await service.serve_messages(request([prevote(other, genesis)]), proposer)
    assert relayed.messages == ()


def big_proposal(genesis: Genesis, epoch: int, round_: int) -> wire.Message:
    """An unverifiable proposal of about 200 KiB for ``epoch`` (signed by nobody)."""
    golden = next(v for v in fuzz.golden_vectors() if v.cls.__name__ == "Proposal")
    proposal: Any = wire.decode(golden.data, golden.cls)
    member = proposal.value.members[0]
    member = dataclasses.replace(member, addresses=tuple("/dns/" + "a" * 195 for _ in range(8)))
    value = dataclasses.replace(
        proposal.value, network_id=genesis.network_id, members=(member,) * 120
    )
    body = dataclasses.replace(
        proposal.body, network_id=genesis.network_id, epoch=Epoch(epoch), round=round_
    )
    return dataclasses.replace(proposal, body=body, value=value)


async def test_strangers_claiming_a_later_epoch_leave_a_bounded_hint_and_nothing_else() -> None:
    """Fuzzing regression (docs/testing.md, "Fuzzing"): each fresh key used to add an entry to
    the liveness and incarnation tables for good, and hints were unbounded between syncs."""
    service, _genesis = make_service()
    await running_agreement(service)
    strangers = [Identity.from_seed(bytes([9, index]) * 16) for index in range(100)]
    for index, stranger in enumerate(strangers):
        await service.serve_messages(
            request([], epoch=3 + index, incarnation=bytes([index]) * 8), stranger.peer_id
        )
    known = {peer.peer_id for peer in PEERS}
    assert set(service._heard) <= known
    assert set(service._incarnations) <= known
    assert len(service._hinted) == MAX_HINTS
    # The highest epochs are kept: the latest claim is still asked first.
    assert service._hinted[strangers[-1].peer_id] == 3 + 99 - 1


async def test_early_messages_are_bounded_in_bytes_and_strangers_get_a_small_share() -> None:
    """Fuzzing regression: messages of the next agreement cannot be verified yet, and a
    stranger could park 4,096 proposals of up to 256 KiB each until the next epoch change."""
    service, genesis = make_service()
    agreement = await running_agreement(service)
    next_epoch = int(agreement.epoch) + 1
    size = len(wire.encode(big_proposal(genesis, next_epoch, 0)))
    assert size > 150_000
    for batch in range(10):
        proposals = [big_proposal(genesis, next_epoch, 5 * batch + i) for i in range(5)]
        await service.serve_messages(request(proposals, epoch=next_epoch + 1), OUTSIDER.peer_id)
    assert 0 < len(service._early) <= EARLY_STRANGER_BYTES_KEPT // size
    for batch in range(20):
        proposals = [big_proposal(genesis, next_epoch, 100 + 5 * batch + i) for i in range(5)]
        await service.serve_messages(request(proposals, epoch=next_epoch), PEERS[1].peer_id)
    kept = sum(len(wire.encode(message)) for message in service._early)
    assert EARLY_BYTES_KEPT - size < kept <= EARLY_BYTES_KEPT


def test_the_sync_backoff_never_overflows() -> None:
    """Regression (fuzzing campaign): after 1,024 fruitless catch-up attempts the doubling
    overflowed a float and the sync loop died with the peer."""
    assert sync_wait(0, 2.0, 60.0) == 2.0
    assert sync_wait(3, 2.0, 60.0) == 16.0
    assert sync_wait(1024, 2.0, 60.0) == 60.0
    assert sync_wait(10**9, 2.0, 60.0) == 60.0
