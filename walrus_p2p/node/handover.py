"""The lock hand-over at an epoch change: a new committee member learns the old committee's locks
before it approves any order (docs/economics.md, "Double spending").

Owner: the network part of cross-epoch double-spend safety. The rule (which locks are reported,
adopted, contested) is :class:`walrus_p2p.core.order_signer.OrderSigner`'s; this module runs
the requests:

- **reporting** (``GetLocksRequest``): a member of committee e answers only once it is in a
  later epoch itself — it never signs for e again, so what it reports is final — and only if it
  completed its own hand-over into e (else an order certified before e might be missing from
  its locks), with the owner-signed orders it approved or adopted in epochs e − 1 and e, paged
  in slot order; otherwise it refuses ``HANDOVER_NOT_READY`` and the asker retries;
- **collecting**: after switching to epoch E, a member of E's committee asks every member of
  committee E − 1 in parallel (retrying refusals and failures with a growing delay) and adopts
  what they report, until reporters holding a quorum of E − 1's shards answered in full; its
  own locks count as its own report if it completed the hand-over into E − 1. Only then does
  it approve orders in E (until then it refuses with ``HANDOVER_PENDING``, which wallets
  retry). The completed epochs are journalled with the locks, so a restarted member does not
  collect twice. If the epoch moves on before the collection ends, the member collects for
  the newer epoch, then still finishes the missed one (for at most
  :data:`PAST_EPOCH_SECONDS`: the next committee needs its report of that epoch).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from walrus_p2p.core import wire
from walrus_p2p.core.economy_messages import (
    MAX_DECIDED_PER_MESSAGE,
    MAX_LOCKS_PER_MESSAGE,
    CertifiedOrder,
    DecidedSlot,
    GetLocksReply,
    GetLocksRequest,
    ListCertificatesReply,
    ListCertificatesRequest,
    SignedOrder,
    decode_certificate,
    order_id,
    order_key,
)
from walrus_p2p.core.order_signer import KEEP_EPOCHS
from walrus_p2p.errors import OrderRefusedError, WalrusError, WireError
from walrus_p2p.types import Epoch, PeerId

if TYPE_CHECKING:
    from walrus_p2p.node.economy import EconomyService

logger = logging.getLogger(__name__)

MAX_PAGES = 4096
"""Pages read from one reporter in one hand-over (64 orders each)."""
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Waits between attempts at one reporter; the last repeats until the hand-over ends."""
PAST_EPOCH_SECONDS = 60.0
"""How long the hand-over of an epoch this peer has already left is still tried."""


@dataclass(slots=True)
class HandoverFigures:
    """What one completed hand-over cost this member (for logs, metrics and tests)."""

    epoch: int = 0
    reporters: int = 0
    requests: int = 0
    orders: int = 0
    adopted: int = 0
    seconds: float = 0.0


class LockHandover:
    """Reports this member's locks and collects the previous committee's."""

    def __init__(self, economy: EconomyService) -> None:
        self.economy = economy
        self.ctx = economy.ctx
        self._changed = trio.Event()
        self.figures: dict[int, HandoverFigures] = {}
        """What the hand-overs this process completed cost, by epoch (the latest 8)."""

    def _needs_none(self, epoch: int) -> bool:
        """An epoch with no committee before it (the genesis) hands nothing over."""
        return epoch <= 0 or self.ctx.committees.committee_of(epoch - 1) is None

    def complete(self, epoch: int) -> bool:
        """Whether this member holds the previous committee's locks for ``epoch``."""
        return self._needs_none(epoch) or epoch in self.economy.signer.handovers

    def pending(self, epoch: int) -> bool:
        """Whether this member must still collect locks before approving in ``epoch``."""
        return not self.complete(epoch)

    def epoch_changed(self) -> None:
        self._changed.set()

    async def get_locks(self, request: GetLocksRequest, remote: PeerId) -> GetLocksReply:
        epoch = self.ctx.epoch
        asked = int(request.epoch)
        if epoch <= asked:
            raise OrderRefusedError(
                "HANDOVER_NOT_READY",
                f"this member is in epoch {epoch}: it reports its locks of epoch {asked} once it "
                "has left it",
            )
        if not self.complete(asked):
            # Its report would not stand for the committee before: an order that committee
            # certified might be missing from it.
            raise OrderRefusedError(
                "HANDOVER_NOT_READY",
                f"this member has not completed its hand-over into epoch {asked}",
            )
        start = None if request.start is None else bytes(request.start)
        report = self.economy.signer.report(
            self.economy.ledger, asked, start, MAX_LOCKS_PER_MESSAGE, MAX_DECIDED_PER_MESSAGE
        )
        return GetLocksReply(
            epoch=Epoch(epoch),
            orders=tuple(report.orders),
            decided=tuple(
                DecidedSlot(account, sequence, identifier)
                for account, sequence, identifier in report.decided
            ),
            next_start=report.next_start,
        )

    async def run(self) -> None:
        """Complete the hand-over of every epoch this peer enters, until cancelled.

        The current epoch's collection retries until it completes or the epoch moves on; then
        the newer epoch's runs first, and the missed one is finished afterwards as a past
        epoch, for at most :data:`PAST_EPOCH_SECONDS` (its report is what the next committee
        needs from this member). Epochs more than :data:`KEEP_EPOCHS` back are not collected."""
        tried = -1
        while True:
            current = self.ctx.epoch
            if self.pending(current):
                await self.collect(current)
            if self.ctx.epoch != current:
                continue  # moved on: the newer epoch first
            first = max(tried + 1, current - KEEP_EPOCHS + 1, 0)
            for epoch in range(first, current):
                if self.pending(epoch):
                    with trio.move_on_after(PAST_EPOCH_SECONDS):
                        await self.collect(epoch)
                tried = epoch
            # Still pending when the others alone hold no quorum and this member's own report
            # counted only once the past epoch's hand-over completed: try again shortly.
            with trio.move_on_after(RETRY_DELAYS[-1] if self.pending(current) else math.inf):
                await self._changed.wait()
            if self._changed.is_set():
                self._changed = trio.Event()

    async def collect(self, epoch: int) -> bool:
        """The hand-over into ``epoch``: False if it did not complete (the current epoch moved
        on first; a past epoch's collection is bounded by the caller)."""
        committee = self.ctx.committees.committee_of(epoch)
        previous = self.ctx.committees.committee_of(epoch - 1) if epoch > 0 else None
        me = self.ctx.peer_id
        figures = HandoverFigures(epoch=epoch)
        started = time.monotonic()
        if previous is not None and committee is not None and committee.shards_of(me):
            # Its own locks of epoch - 1 stand as its report only if it completed that epoch's
            # hand-over (else an order certified before might be missing from them).
            answered: set[PeerId] = {me} if me in previous and self.complete(epoch - 1) else set()
            if not previous.is_quorum(answered):
                async with trio.open_nursery() as nursery:
                    for peer_id in previous.peer_ids:
                        if peer_id != me:
                            nursery.start_soon(
                                self._collect_from, peer_id, epoch, answered, figures, nursery
                            )
                    if epoch == self.ctx.epoch:
                        nursery.start_soon(self._watch_epoch, epoch, nursery)
            if not previous.is_quorum(answered):
                logger.info(
                    "lock hand-over into epoch %d not complete: now in epoch %d",
                    epoch,
                    self.ctx.epoch,
                )
                return False
            figures.reporters = len(answered)
        self.economy.signer.handover_done(epoch)
        await self.economy.persist_journal()
        figures.seconds = time.monotonic() - started
        self.figures[epoch] = figures
        for old in sorted(self.figures)[:-8]:
            del self.figures[old]
        self.ctx.metrics.handover_done(epoch, figures.seconds, figures.orders, figures.adopted)
        logger.info(
            "lock hand-over done epoch=%d reporters=%d requests=%d orders=%d adopted=%d "
            "seconds=%.3f",
            epoch,
            figures.reporters,
            figures.requests,
            figures.orders,
            figures.adopted,
            figures.seconds,
        )
        return True

    async def _watch_epoch(self, epoch: int, nursery: trio.Nursery) -> None:
        while self.ctx.epoch == epoch:
            await self._changed.wait()
            self._changed = trio.Event()
        self._changed.set()  # the run loop sees the change too
        nursery.cancel_scope.cancel()

    async def _collect_from(
        self,
        reporter: PeerId,
        epoch: int,
        answered: set[PeerId],
        figures: HandoverFigures,
        nursery: trio.Nursery,
    ) -> None:
        """Read one reporter's whole report (retrying), adopt it, and end the hand-over's
        requests when reporters holding a quorum answered."""
        previous = self.ctx.committees.committee_of(epoch - 1)
        assert previous is not None
        attempt = 0
        while True:
            try:
                figures.requests += await self._read_report(reporter, epoch, figures)
                break
            except WalrusError as error:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                attempt += 1
                logger.debug(
                    "lock report failed peer=%s epoch=%d reason=%s retry_in=%.2f",
                    reporter[:12],
                    epoch - 1,
                    error.reason,
                    delay,
                )
                await trio.sleep(delay)
        answered.add(reporter)
        if previous.is_quorum(answered):
            nursery.cancel_scope.cancel()

    async def _fetch_certificate(
        self, reporter: PeerId, slot: DecidedSlot
    ) -> CertifiedOrder | None:
        """The certificate of a slot ``reporter`` decided and this peer has not: verified and
        merged here (which decides the slot once its account's earlier orders are known), and
        its order adopted by the caller. None if the reporter cannot show it (it is faulty, or
        its listing moved on: the slot then stands on the other reporters)."""
        key = order_key(bytes(slot.account), int(slot.sequence))
        reply = await self.economy.caller.call(
            reporter,
            ListCertificatesRequest(start=key, limit=1),
            ListCertificatesReply,
            timeout=self.economy.options.request_timeout,
        )
        for encoded in reply.certificates[:1]:
            try:
                certificate = decode_certificate(encoded)
                self.economy.verify(certificate)
            except (WireError, OrderRefusedError) as error:
                logger.warning("decided slot unproven peer=%s: %s", reporter[:12], error)
                return None
            if order_id(certificate.order) != bytes(slot.order_id):
                return None
            try:
                await self.economy.merge(certificate, announce=False)
            except OrderRefusedError as error:
                logger.info("decided slot not merged peer=%s: %s", reporter[:12], error)
            return certificate
        return None

    async def _read_report(self, reporter: PeerId, epoch: int, figures: HandoverFigures) -> int:
        """Page through ``reporter``'s locks of epoch ``epoch - 1``, adopting each verified
        order as a lock of ``epoch``; returns the requests made. An order that does not decode
        or verify is skipped (logged): it cannot stand for a lock, and the rest still can."""
        signer, ledger = self.economy.signer, self.economy.ledger
        start: bytes | None = None
        requests = 0
        changed = False
        for _page in range(MAX_PAGES):
            reply = await self.economy.caller.call(
                reporter,
                GetLocksRequest(epoch=Epoch(epoch - 1), start=start),
                GetLocksReply,
                timeout=self.economy.options.request_timeout,
            )
            requests += 1
            orders: list[SignedOrder] = []
            for encoded in reply.orders:
                try:
                    order = wire.decode(encoded, SignedOrder)
                    assert isinstance(order, SignedOrder)
                    orders.append(order)
                except WireError as error:
                    logger.warning("lock report entry refused peer=%s: %s", reporter[:12], error)
            for slot in reply.decided:
                account, sequence = bytes(slot.account), int(slot.sequence)
                if sequence < ledger.next_sequence(account):
                    continue  # decided here too
                certificate = await self._fetch_certificate(reporter, slot)
                requests += 1
                if certificate is not None:
                    orders.append(certificate.order)
            figures.orders += len(reply.orders) + len(reply.decided)
            for order in orders:
                try:
                    if signer.adopt(order, ledger, epoch):
                        figures.adopted += 1
                        changed = True
                except OrderRefusedError as error:
                    logger.warning(
                        "lock report entry refused peer=%s reason=%s", reporter[:12], error.reason
                    )
            if reply.next_start is None:
                break
            if start is not None and bytes(reply.next_start) <= start:
                raise WireError("lock report did not advance")
            start = bytes(reply.next_start)
        if changed:
            await self.economy.persist_journal()
        return requests
