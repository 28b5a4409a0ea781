"""Direct links to the committee: how a storage peer delivers its consensus messages.

docs/epochs.md, "Transport". Each proposal or vote a peer signs goes to every other committee
member once, in one request per member (:class:`~walrus_p2p.core.epochs.EpochMessagesRequest`),
not on gossip: n-1 messages per step network-wide instead of a flood with duplicates, and no
signed peer record or IDONTWANT per message. Messages signed together (a proposal and its
prevote) share one request.

Delivery is reliable while the agreement runs: a member's messages stay in its outbox until it
acknowledged them; a failed request is retried after a jittered, doubling delay (1 s up to
``max_backoff``), so a member that is down costs one attempt per backoff step, not a storm.
There is no periodic rebroadcast: what a member lacks is sent again only on evidence
(a reply saying so, or a request from a restarted process; see
:class:`~walrus_p2p.node.epochs.EpochService`). A process that starts greets every member with
one request (:meth:`EpochLinks.greet`); a member heard from cuts the backoff of its outbox
short (:meth:`EpochLinks.revive`).

Every successful request also measures the round trip; :meth:`EpochLinks.delay` is the median
of the members' smoothed round trips, from which the agreement's timeouts grow.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio

from walrus_p2p.core.epochs import (
    MAX_EPOCH_MESSAGES_PER_BATCH,
    EpochMessagesReply,
    EpochMessagesRequest,
)
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.types import Epoch, PeerId

logger = logging.getLogger(__name__)

MAX_BATCH_BYTES = 1 << 20
"""Bytes of messages in one request (at least one message goes, whatever its size)."""
MAX_PENDING = 4 * MAX_EPOCH_MESSAGES_PER_BATCH
"""Messages kept for one member; beyond that the oldest are dropped (a round's messages
supersede those of older rounds, and the reply rules resend what matters)."""

Position = Callable[[], tuple[int, int]]
"""``() -> (epoch being agreed on, round)`` of this peer, sent with every request."""
ReplyHandler = Callable[[PeerId, EpochMessagesReply], Awaitable[None]]


@dataclass
class _Outbox:
    pending: dict[bytes, None] = field(default_factory=dict)
    wake: trio.Event = field(default_factory=trio.Event)
    revived: trio.Event = field(default_factory=trio.Event)
    """Set when the member was heard from while this outbox backs off: retry at once."""
    greet: bool = False
    """Send one request even with nothing pending (this process just started)."""
    failures: int = 0
    round_trip: float | None = None


class EpochLinks:
    """Outboxes and sender tasks, one per committee member; run with :meth:`run`."""

    def __init__(
        self,
        caller: PeerCaller,
        *,
        incarnation: bytes,
        position: Position,
        on_reply: ReplyHandler,
        request_timeout: float = 10.0,
        max_backoff: float = 16.0,
    ) -> None:
        self.caller = caller
        self.incarnation = incarnation
        self.position = position
        self.on_reply = on_reply
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff
        self._outboxes: dict[PeerId, _Outbox] = {}
        self._nursery: trio.Nursery | None = None
        self.sent_requests = 0
        self.failed_requests = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def send(self, peers: Iterable[PeerId], encoded: Iterable[bytes]) -> None:
        """Queue messages for each peer (deduplicated); returns at once."""
        items = list(encoded)
        if not items:
            return
        for peer in peers:
            if peer == self.caller.host.peer_id:
                continue
            outbox = self._outbox(peer)
            for item in items:
                outbox.pending[item] = None
            while len(outbox.pending) > MAX_PENDING:
                del outbox.pending[next(iter(outbox.pending))]
            outbox.wake.set()

    def _outbox(self, peer: PeerId) -> _Outbox:
        outbox = self._outboxes.get(peer)
        if outbox is None:
            outbox = self._outboxes[peer] = _Outbox()
            if self._nursery is not None:
                self._nursery.start_soon(self._sender, peer, outbox)
        return outbox

    def greet(self, peers: Iterable[PeerId]) -> None:
        """One request to each peer even if nothing is queued for it: sent when this process
        starts, it carries the new incarnation, so each member learns that this peer is back
        (its links stop backing off) and answers with what this peer lost (docs/epochs.md,
        "Transport")."""
        for peer in peers:
            if peer == self.caller.host.peer_id:
                continue
            outbox = self._outbox(peer)
            outbox.greet = True
            outbox.wake.set()

    def revive(self, peer: PeerId) -> None:
        """``peer`` was just heard from: if its outbox is backing off after failures, retry
        now instead of at the end of the backoff."""
        outbox = self._outboxes.get(peer)
        if outbox is not None and outbox.failures:
            outbox.failures = 0
            outbox.revived.set()

    def clear(self) -> None:
        """Forget every undelivered message (the agreement they belong to is over)."""
        for outbox in self._outboxes.values():
            outbox.pending.clear()

    def replace_pending(self, encoded: bytes) -> None:
        """Members that have not acknowledged everything get ``encoded`` (the decided record)
        instead of what they still lack: it settles the agreement those messages were for."""
        for outbox in self._outboxes.values():
            if outbox.pending:
                outbox.pending = {encoded: None}
                outbox.wake.set()

    def pending(self) -> int:
        return sum(len(outbox.pending) for outbox in self._outboxes.values())

    def delay(self) -> float:
        """Median smoothed round trip to the members (seconds; 0 before any was measured)."""
        trips = [o.round_trip for o in self._outboxes.values() if o.round_trip is not None]
        return statistics.median(trips) if trips else 0.0

    async def _sender(self, peer: PeerId, outbox: _Outbox) -> None:
        while True:
            await outbox.wake.wait()
            outbox.wake = trio.Event()
            while outbox.pending or outbox.greet:
                batch = take_batch(outbox.pending)  # empty for a greeting
                epoch, round_ = self.position()
                request = EpochMessagesRequest(
                    epoch=Epoch(epoch),
                    round=round_,
                    incarnation=self.incarnation,
                    messages=tuple(batch),
                )
                started = trio.current_time()
                try:
                    reply = await self.caller.call(
                        peer, request, EpochMessagesReply, timeout=self.request_timeout
                    )
                except WalrusError as error:
                    self.failed_requests += 1
                    outbox.failures += 1
                    backoff = min(self.max_backoff, 2.0 ** (outbox.failures - 1))
                    logger.debug(
                        "epoch messages not delivered peer=%s reason=%s retry_in=%.1f",
                        peer[:12],
                        error.reason,
                        backoff,
                    )
                    # New messages for this peer do not cut the wait short: a member that is
                    # down gets one attempt per backoff step, whatever is queued meanwhile.
                    # Hearing from it does (:meth:`revive`): it is back.
                    with trio.move_on_after(backoff * random.uniform(0.5, 1.0)):
                        await outbox.revived.wait()
                    outbox.revived = trio.Event()
                    continue
                outbox.greet = False
                self.sent_requests += 1
                elapsed = trio.current_time() - started
                previous = outbox.round_trip
                outbox.round_trip = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed
                outbox.failures = 0
                for item in batch:
                    outbox.pending.pop(item, None)
                if reply.messages:
                    try:
                        await self.on_reply(peer, reply)
                    except WalrusError as error:
                        logger.info("epoch reply dropped peer=%s error=%s", peer[:12], error)


def take_batch(
    pending: Iterable[bytes],
    *,
    max_count: int = MAX_EPOCH_MESSAGES_PER_BATCH,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[bytes]:
    """The first messages, in order, that fit one request (never fewer than one)."""
    batch: list[bytes] = []
    size = 0
    for item in pending:
        if batch and (len(batch) >= max_count or size + len(item) > max_bytes):
            break
        batch.append(item)
        size += len(item)
    return batch
