"""Storage challenges of a storage peer: one round per epoch, PASS, availability certificates.

docs/challenges.md (the design, the window and its bound) and docs/design.md §11.1 (how the
service is composed). When the committee view switches to epoch e >= 1 and this peer is a
member, :class:`ChallengeService` runs the round of e:

1. **Window.** It opens its challenge window: until the round's deadline it refuses recovery
   symbols of blobs certified before e (``CHALLENGE_WINDOW``), and it builds one ticket (a fresh
   nonce and the blobs it holds that are challenged in e) for every other member.
2. **Tickets.** It asks every other member for its ticket (``ChallengeTicketRequest``); asking
   is how a member shows it entered its own window. A member hands out tickets only once
   members holding a quorum of e's shards entered (itself included).
3. **One pass over local disk** (a worker thread): each listed blob's slivers of the stable
   pairs are read once and expanded, and the shared symbols feed two digests per other member:
   the response to that member's ticket, and the digest expected from that member for this
   peer's ticket.
4. **Responses.** It sends each digest (``ChallengeResponseRequest``) and keeps the PASS
   signatures that verify; its own PASS counts as well. With PASS from a quorum of shard weight
   it makes its :class:`~walrus_p2p.core.challenge_messages.AvailabilityCertificate`, stores it
   and pushes it to every member.
5. At the deadline the window closes; tickets and responses of e are refused from then on
   (``CHALLENGE_CLOSED``), and the peer pulls the certificates of e it missed from two members.

Certificates are verified against the committee of their epoch before they are kept
(namespace ``availability-certificates``: key = 8-byte epoch + member peer id), and served to
anyone (``GetAvailabilityCertificatesRequest``): that is what ``walrus-peer challenges`` reads.
"""

from __future__ import annotations

import hmac
import logging
import random
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import trio

from walrus_p2p.core import wire
from walrus_p2p.core.challenge_messages import (
    MAX_CHALLENGE_BLOBS,
    AvailabilityCertificate,
    ChallengeResponseReply,
    ChallengeResponseRequest,
    ChallengeTicketReply,
    ChallengeTicketRequest,
    GetAvailabilityCertificatesReply,
    GetAvailabilityCertificatesRequest,
    PostAvailabilityCertificatesReply,
    PostAvailabilityCertificatesRequest,
)
from walrus_p2p.core.challenges import (
    ResponseHasher,
    challenged_pairs,
    expand_held,
    is_challenged,
    is_valid_pass,
    make_certificate,
    response_key,
    sample_blob_ids,
    shared_symbols,
    sign_pass,
    stable_shards,
    verify_availability_certificate,
)
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.errors import (
    EncodingError,
    NotFoundError,
    VerificationError,
    WalrusError,
    WireError,
)
from walrus_p2p.node.challenge_metrics import ChallengeMetrics
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.node.protocol import ProtocolRefusal
from walrus_p2p.node.router import RequestHandler, Router
from walrus_p2p.storage import BlobStore
from walrus_p2p.types import BlobId, Epoch, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)

CERTIFICATES_NAMESPACE = "availability-certificates"
"""Store namespace of verified availability certificates: key = 8-byte epoch + peer id."""
ROUNDS_KEPT = 4
"""Rounds (epochs) whose state stays in memory; older ones are dropped."""
EPOCHS_CACHED = 16
"""Epochs whose certificates are kept in memory (all stay in the store)."""


@dataclass(frozen=True, slots=True)
class ChallengeOptions:
    """How a storage peer runs its challenge rounds (docs/challenges.md, "Timing")."""

    enabled: bool = True
    window_seconds: float | None = None
    """Length of the window from the switch to epoch e; None: a quarter of the epoch, at most
    300 s and at least 10 s or half the epoch, whichever is shorter (short test epochs)."""
    ticket_fraction: float = 0.5
    """Part of the window spent collecting tickets before the pass over local disk (the pass
    starts earlier once every member answered)."""
    request_timeout: float = 10.0
    retry_delay: float = 0.5
    """Pause before asking a member again (it has not entered its window yet, or is busy)."""
    quorum_wait: float = 5.0
    """How long a ticket request waits for a quorum of members to enter their windows."""
    max_blobs: int = MAX_CHALLENGE_BLOBS
    """Blobs in one ticket; a challenger holding more samples this many."""
    min_epoch_seconds: float = 60.0
    """With the default window, rounds run only on networks whose epochs last at least this
    long: on a test network of 12 s epochs a round (and its window, half of each epoch) took
    enough of a 2-core machine that stores across epoch changes failed (docs/challenges.md,
    "Timing"). An explicit ``window_seconds`` runs them whatever the epoch length."""

    def runs_for(self, epoch_seconds: float) -> bool:
        return self.enabled and (
            self.window_seconds is not None or epoch_seconds >= self.min_epoch_seconds
        )

    def window_for(self, epoch_seconds: float) -> float:
        if self.window_seconds is not None:
            return self.window_seconds
        return min(300.0, max(epoch_seconds / 4, min(10.0, epoch_seconds / 2)))


@dataclass(slots=True)
class _Ticket:
    """What this peer handed (or will hand) one member in one epoch, and its verdict."""

    nonce: bytes
    blob_ids: tuple[bytes, ...]
    pairs_of: tuple[int, ...]
    """The member's stable shards (its pairs are derived per blob)."""
    issued: bool = False
    expected: bytes | None = None
    unverifiable: bool = False
    verdict: str | None = None
    """None until judged; then ``pass`` or the refusal reason (the same answer every time)."""


@dataclass(slots=True)
class _Round:
    epoch: int
    committee: Committee
    previous: Committee | None
    mine: tuple[int, ...]
    """This peer's stable shards in the epoch."""
    closes_at: float
    entered: set[PeerId] = field(default_factory=set)
    quorum_entered: trio.Event = field(default_factory=trio.Event)
    tickets: dict[PeerId, _Ticket] = field(default_factory=dict)
    tickets_ready: trio.Event = field(default_factory=trio.Event)
    received: dict[PeerId, ChallengeTicketReply] = field(default_factory=dict)
    responses: dict[PeerId, bytes] = field(default_factory=dict)
    """This peer's response digest to each ticket it received (after its pass)."""
    expected_ready: trio.Event = field(default_factory=trio.Event)
    closed: bool = False
    started_monotonic: float = field(default_factory=time.monotonic)

    def enter(self, member: PeerId) -> None:
        if member in self.committee:
            self.entered.add(member)
        weight = self.committee.shard_weight(self.entered)
        if is_quorum(weight, self.committee.n_shards):
            self.quorum_entered.set()


@dataclass(frozen=True, slots=True)
class PassFigures:
    """What one pass over local slivers cost (for metrics and the bench)."""

    blobs: int
    bytes_read: int
    seconds: float


@dataclass(frozen=True, slots=True)
class PassResult:
    """The digests one pass computed: this peer's response to each ticket it received, and the
    response it expects from each member it gave a ticket."""

    responses: dict[PeerId, bytes]
    expected: dict[PeerId, bytes]
    unverifiable: frozenset[PeerId]
    """Members whose ticket lists a blob this peer could not read itself: it cannot judge them."""
    figures: PassFigures


Ticket = tuple[bytes, tuple[bytes, ...]]
"""(nonce, blob ids) of one ticket."""


def challenge_pass(
    store: BlobStore,
    *,
    network_id: bytes,
    epoch: int,
    me: PeerId,
    n_shards: int,
    mine: tuple[int, ...],
    received: Mapping[PeerId, Ticket],
    given: Mapping[PeerId, Ticket],
    stable_of: Mapping[PeerId, tuple[int, ...]],
) -> PassResult:
    """One pass over local slivers (blocking; docs/challenges.md, "One pass").

    Every blob listed in a ticket received or given is read once (metadata, then the primary
    and secondary sliver of each pair of this peer's stable shards ``mine``) and expanded; its
    shared symbols feed the response digest of each ticket received (from the challenger
    named by the key) and the expected digest of each ticket given. A blob this peer cannot
    read is hashed as missing: its responses will not match, and the members it gave a
    ticket listing that blob are marked unverifiable.
    """
    started = time.monotonic()
    responses: dict[PeerId, ResponseHasher] = {}
    expectations: dict[PeerId, ResponseHasher] = {}
    wanted: dict[bytes, tuple[list[PeerId], list[PeerId]]] = {}
    for member, (nonce, blob_ids) in received.items():
        key = response_key(
            network_id=network_id,
            epoch=epoch,
            challenger=member,
            challenged=me,
            nonce=nonce,
            blob_ids=blob_ids,
        )
        responses[member] = ResponseHasher(key)
        for blob_id in blob_ids:
            wanted.setdefault(blob_id, ([], []))[0].append(member)
    for member, (nonce, blob_ids) in given.items():
        key = response_key(
            network_id=network_id,
            epoch=epoch,
            challenger=me,
            challenged=member,
            nonce=nonce,
            blob_ids=blob_ids,
        )
        expectations[member] = ResponseHasher(key)
        for blob_id in blob_ids:
            wanted.setdefault(blob_id, ([], []))[1].append(member)
    unverifiable: set[PeerId] = set()
    bytes_read = 0
    blobs = 0
    # Sorted: every digest is fed its blobs in its ticket's (sorted) order.
    for blob_id in sorted(wanted):
        asked_by, asked_of = wanted[blob_id]
        pairs = challenged_pairs(blob_id, mine, n_shards)
        try:
            raw = store.get_metadata(BlobId(blob_id))
            metadata = wire.decode(raw, wire.GetMetadataReply).metadata
            slivers = {
                pair: (
                    store.get_sliver(BlobId(blob_id), pair, SliverKind.PRIMARY),
                    store.get_sliver(BlobId(blob_id), pair, SliverKind.SECONDARY),
                )
                for pair in pairs
            }
            bytes_read += sum(
                len(primary) + len(secondary) for primary, secondary in slivers.values()
            )
            if not pairs or metadata.shards != n_shards:
                raise EncodingError("no stable pair, or metadata of another shard count")
            held = expand_held(BlobId(blob_id), metadata.config, metadata.symbol_size, slivers)
        except (NotFoundError, EncodingError, WireError) as error:
            logger.info(
                "challenge pass: blob unreadable blob=%s error=%s", short_id(blob_id), error
            )
            for member in asked_by:
                responses[member].add_missing(blob_id)
            for member in asked_of:
                expectations[member].add_missing(blob_id)
                unverifiable.add(member)
            continue
        blobs += 1
        for member in asked_by:
            theirs = challenged_pairs(blob_id, stable_of.get(member, ()), n_shards)
            responses[member].add_blob(
                blob_id, shared_symbols(pairs, theirs, held, held_by_challenger=False)
            )
        for member in asked_of:
            theirs = challenged_pairs(blob_id, stable_of.get(member, ()), n_shards)
            expectations[member].add_blob(
                blob_id, shared_symbols(theirs, pairs, held, held_by_challenger=True)
            )
    return PassResult(
        responses={member: hasher.digest() for member, hasher in responses.items()},
        expected={member: hasher.digest() for member, hasher in expectations.items()},
        unverifiable=frozenset(unverifiable),
        figures=PassFigures(blobs, bytes_read, time.monotonic() - started),
    )


class ChallengeService:
    """The challenge rounds, the PASS a peer signs and the availability certificates it keeps."""

    def __init__(self, ctx: PeerContext, options: ChallengeOptions | None = None) -> None:
        self.ctx = ctx
        self.options = options or ChallengeOptions()
        self.metrics = ChallengeMetrics(ctx.metrics)
        self.caller = PeerCaller(
            ctx.host,
            protocol=ctx.protocol,
            limits=ctx.limits,
            max_frame=ctx.max_frame,
            committee=lambda: ctx.committee,
            discovery=ctx.discovery,
        )
        self._rounds: dict[int, _Round] = {}
        self._certificates: dict[int, dict[PeerId, AvailabilityCertificate]] = {}
        self._finished: dict[int, trio.Event] = {}
        self.last_pass: PassFigures | None = None
        self.last_certified_epoch: int | None = None

    # -- composition ----------------------------------------------------------------------

    def register(self, router: Router) -> None:
        """Serve the challenge requests, and guard the recovery symbol handlers (registered by
        the sliver service before) with the window (docs/challenges.md, "The window")."""
        router.add(ChallengeTicketRequest, self.ticket)
        router.add(ChallengeResponseRequest, self.response)
        router.add(PostAvailabilityCertificatesRequest, self.post_certificates)
        router.add(GetAvailabilityCertificatesRequest, self.get_certificates)
        self._guard(router, wire.GetRecoverySymbolRequest)
        self._guard(router, wire.GetRecoverySymbolsRequest)

    def _guard(self, router: Router, message_type: type[wire.Message]) -> None:
        original: RequestHandler = router.handler(message_type)

        async def guarded(request: wire.Message, remote: PeerId) -> wire.Message:
            blob_id = BlobId(request.blob_id)  # type: ignore[attr-defined]
            if await self.restricts(blob_id):
                self.metrics.refused_symbols.inc()
                raise ProtocolRefusal(
                    "CHALLENGE_WINDOW",
                    f"recovery symbols of {short_id(blob_id)} are not served during the "
                    "challenge window; retry after it",
                )
            reply: wire.Message = await original(request, remote)
            return reply

        router.replace(message_type, guarded)

    async def restricts(self, blob_id: BlobId) -> bool:
        """Whether a window is open in which ``blob_id`` is challenged (certified before)."""
        open_epochs = [epoch for epoch, round_ in self._rounds.items() if not round_.closed]
        if not open_epochs:
            return False
        state = await self.ctx.records.blob_state(blob_id)
        certified = state.certified_epoch
        return certified is not None and any(certified < epoch for epoch in open_epochs)

    # -- the loop -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the round of every epoch this peer switches to, until cancelled."""
        started: set[int] = set()
        runs = self.options.runs_for(self.ctx.genesis.epoch_duration_seconds)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                changed = self.ctx.committees.changed
                epoch = self.ctx.epoch
                if runs and epoch >= 1 and epoch not in started:
                    started.add(epoch)
                    nursery.start_soon(self.run_round, epoch)
                await changed.wait()

    def finished(self, epoch: int) -> trio.Event:
        """Set once this peer's round of ``epoch`` ended (for tests and the bench)."""
        return self._finished.setdefault(epoch, trio.Event())

    async def run_round(self, epoch: int) -> AvailabilityCertificate | None:
        """This peer's round of ``epoch``; returns its own certificate, if it got one."""
        try:
            return await self._run_round(epoch)
        finally:
            self.finished(epoch).set()

    async def _run_round(self, epoch: int) -> AvailabilityCertificate | None:
        ctx = self.ctx
        committee = ctx.committees.committee_of(epoch)
        if committee is None or ctx.peer_id not in committee:
            self.metrics.rounds.labels(outcome="skipped").inc()
            return None
        previous = ctx.committees.committee_of(epoch - 1)
        window = self.options.window_for(ctx.genesis.epoch_duration_seconds)
        mine = stable_shards(previous, committee, ctx.peer_id)
        round_ = _Round(epoch, committee, previous, mine, closes_at=trio.current_time() + window)
        self._rounds[epoch] = round_
        for old in sorted(self._rounds)[:-ROUNDS_KEPT]:
            del self._rounds[old]
        round_.enter(ctx.peer_id)
        certificate: AvailabilityCertificate | None = None
        try:
            await self._make_tickets(round_)
            round_.tickets_ready.set()
            with trio.move_on_at(round_.closes_at):
                certificate = await self._take_part(round_)
            await trio.sleep_until(round_.closes_at)
        finally:
            round_.closed = True
            round_.expected_ready.set()
        self.metrics.duration.set(time.monotonic() - round_.started_monotonic)
        if certificate is None:
            self.metrics.rounds.labels(outcome="uncertified" if mine else "skipped").inc()
        await self._pull_certificates(epoch)
        return certificate

    async def _make_tickets(self, round_: _Round) -> None:
        """One ticket per other member: its nonce, and the challenged blobs this peer holds
        (every sliver of its stable pairs recorded), sampled down to ``max_blobs``."""
        ctx = self.ctx
        if not round_.mine:
            return
        needed = 2 * len(round_.mine)

        def candidates() -> list[bytes]:
            return [
                bytes(info.blob_id)
                for info in ctx.store.iter_blobs()
                if info.has_metadata
                and info.sliver_count >= needed
                and is_challenged(
                    round_.epoch,
                    certified_epoch=info.state.certified_epoch,
                    end_epoch=info.state.end_epoch,
                    invalid=info.state.invalid,
                )
            ]

        held = await trio.to_thread.run_sync(candidates)
        for member in round_.committee.peer_ids:
            if member == ctx.peer_id:
                continue
            theirs = stable_shards(round_.previous, round_.committee, member)
            if not theirs:
                continue
            nonce = secrets.token_bytes(32)
            chosen = sample_blob_ids(held, self.options.max_blobs, nonce)
            round_.tickets[member] = _Ticket(nonce=nonce, blob_ids=chosen, pairs_of=theirs)

    async def _take_part(self, round_: _Round) -> AvailabilityCertificate | None:
        """Collect tickets, run the pass, answer; the certificate if PASS reached a quorum."""
        ctx = self.ctx
        others = [member for member in round_.committee.peer_ids if member != ctx.peer_id]
        all_received = trio.Event()
        ticket_deadline = trio.current_time() + self.options.ticket_fraction * max(
            0.0, round_.closes_at - trio.current_time()
        )
        # Every member asks, challenged or not: asking is how it shows it entered its window.
        if others:
            async with trio.open_nursery() as nursery:
                pending = set(others)

                async def fetch(member: PeerId) -> None:
                    await self._fetch_ticket(round_, member, ticket_deadline)
                    pending.discard(member)
                    if not pending:
                        all_received.set()

                for member in others:
                    nursery.start_soon(fetch, member)
                with trio.move_on_at(ticket_deadline):
                    await all_received.wait()
                nursery.cancel_scope.cancel()
        figures = await trio.to_thread.run_sync(self._pass, round_)
        self.last_pass = figures
        self.metrics.pass_seconds.set(figures.seconds)
        self.metrics.disk_bytes.inc(figures.bytes_read)
        self.metrics.blobs.inc(figures.blobs)
        round_.expected_ready.set()
        if not round_.mine:
            return None
        return await self._answer(round_)

    async def _fetch_ticket(self, round_: _Round, member: PeerId, deadline: float) -> None:
        request = ChallengeTicketRequest(Epoch(round_.epoch))
        while trio.current_time() < deadline:
            try:
                with trio.fail_after(self.options.request_timeout):
                    reply = await self.caller.call(
                        member,
                        request,
                        ChallengeTicketReply,
                        timeout=self.options.request_timeout,
                    )
            except (WalrusError, trio.TooSlowError) as error:
                reason = getattr(error, "reason", "TIMEOUT")
                self.metrics.messages.labels(type="ticket", outcome=reason).inc()
                if reason in ("CHALLENGE_CLOSED", "CHALLENGE_NOT_CHALLENGED", "NOT_A_CHALLENGER"):
                    return
                await trio.sleep(self.options.retry_delay)
                continue
            self.metrics.messages.labels(type="ticket", outcome="ok").inc()
            if reply.epoch == round_.epoch:
                round_.received[member] = reply
            return

    def _pass(self, round_: _Round) -> PassFigures:
        """The round's pass over local slivers (blocking: a worker thread)."""
        ctx = self.ctx
        stable_of = {member: ticket.pairs_of for member, ticket in round_.tickets.items()}
        for member in round_.received:
            stable_of.setdefault(member, stable_shards(round_.previous, round_.committee, member))
        result = challenge_pass(
            ctx.store,
            network_id=ctx.genesis.network_id,
            epoch=round_.epoch,
            me=ctx.peer_id,
            n_shards=round_.committee.n_shards,
            mine=round_.mine,
            received={
                member: (reply.nonce, reply.blob_ids) for member, reply in round_.received.items()
            },
            given={
                member: (ticket.nonce, ticket.blob_ids) for member, ticket in round_.tickets.items()
            },
            stable_of=stable_of,
        )
        for member, digest in result.expected.items():
            ticket = round_.tickets[member]
            ticket.expected = digest
            ticket.unverifiable = member in result.unverifiable
        round_.responses = dict(result.responses)
        return result.figures

    async def _answer(self, round_: _Round) -> AvailabilityCertificate | None:
        ctx = self.ctx
        network_id = ctx.genesis.network_id
        passes: dict[PeerId, bytes] = {
            ctx.peer_id: sign_pass(ctx.identity, network_id, round_.epoch, ctx.peer_id)
        }
        enough = trio.Event()
        digests = dict(round_.responses)

        async def send(member: PeerId, digest: bytes) -> None:
            request = ChallengeResponseRequest(Epoch(round_.epoch), digest)
            while trio.current_time() < round_.closes_at:
                try:
                    with trio.fail_after(self.options.request_timeout):
                        reply = await self.caller.call(
                            member,
                            request,
                            ChallengeResponseReply,
                            timeout=self.options.request_timeout,
                        )
                except (WalrusError, trio.TooSlowError) as error:
                    reason = getattr(error, "reason", "TIMEOUT")
                    self.metrics.messages.labels(type="response", outcome=reason).inc()
                    if reason in ("CHALLENGE_NOT_READY", "RATE_LIMITED", "TIMEOUT") or (
                        reason in ("PEER_UNREACHABLE", "NETWORK_ERROR")
                    ):
                        await trio.sleep(self.options.retry_delay)
                        continue
                    logger.info(
                        "challenge response refused epoch=%d by=%s reason=%s",
                        round_.epoch,
                        member[:12],
                        reason,
                    )
                    return
                self.metrics.messages.labels(type="response", outcome="ok").inc()
                if is_valid_pass(
                    round_.committee,
                    member,
                    reply.signature,
                    network_id=network_id,
                    member=ctx.peer_id,
                ):
                    passes[member] = reply.signature
                    if is_quorum(round_.committee.shard_weight(passes), round_.committee.n_shards):
                        enough.set()
                return

        async with trio.open_nursery() as nursery:
            for member, digest in digests.items():
                nursery.start_soon(send, member, digest)
        if not is_quorum(round_.committee.shard_weight(passes), round_.committee.n_shards):
            logger.info(
                "challenge round without certificate epoch=%d passes=%d weight=%d",
                round_.epoch,
                len(passes),
                round_.committee.shard_weight(passes),
            )
            return None
        certificate = make_certificate(network_id, round_.epoch, ctx.peer_id, passes)
        await self.keep([certificate])
        self.metrics.rounds.labels(outcome="certified").inc()
        self.metrics.last_certified_epoch.set(round_.epoch)
        self.last_certified_epoch = round_.epoch
        logger.info(
            "availability certified epoch=%d passes=%d seconds=%.2f",
            round_.epoch,
            len(passes),
            time.monotonic() - round_.started_monotonic,
        )
        await self._push(certificate, round_.committee)
        return certificate

    async def _push(self, certificate: AvailabilityCertificate, committee: Committee) -> None:
        request = PostAvailabilityCertificatesRequest((certificate,))

        async def push(member: PeerId) -> None:
            try:
                await self.caller.call(
                    member,
                    request,
                    PostAvailabilityCertificatesReply,
                    timeout=self.options.request_timeout,
                )
                self.metrics.messages.labels(type="post", outcome="ok").inc()
            except WalrusError as error:
                self.metrics.messages.labels(type="post", outcome=error.reason).inc()

        async with trio.open_nursery() as nursery:
            for member in committee.peer_ids:
                if member != self.ctx.peer_id:
                    nursery.start_soon(push, member)

    async def _pull_certificates(self, epoch: int) -> None:
        """After the window: fetch the certificates of ``epoch`` from two random members (a
        push missed while this peer was busy or restarting is not lost)."""
        committee = self.ctx.committees.committee_of(epoch)
        if committee is None:
            return
        others = [member for member in committee.peer_ids if member != self.ctx.peer_id]
        random.shuffle(others)
        for member in others[:2]:
            try:
                reply = await self.caller.call(
                    member,
                    GetAvailabilityCertificatesRequest(Epoch(epoch)),
                    GetAvailabilityCertificatesReply,
                    timeout=self.options.request_timeout,
                )
            except WalrusError as error:
                self.metrics.messages.labels(type="get", outcome=error.reason).inc()
                continue
            self.metrics.messages.labels(type="get", outcome="ok").inc()
            for certificate in reply.certificates:
                try:
                    await self.keep([certificate])
                except VerificationError as error:
                    logger.info("pulled certificate refused peer=%s error=%s", member[:12], error)

    # -- certificates ---------------------------------------------------------------------

    def _verify(self, certificate: AvailabilityCertificate) -> None:
        verify_availability_certificate(
            certificate, self.ctx.genesis.network_id, self.ctx.committees.committee_of
        )

    async def certificates(self, epoch: int) -> dict[PeerId, AvailabilityCertificate]:
        """The verified certificates of ``epoch`` this peer keeps (loaded from the store once)."""
        cached = self._certificates.get(epoch)
        if cached is not None:
            return cached
        prefix = epoch.to_bytes(8, "big")

        def load() -> list[bytes]:
            return [
                value
                for _, value in self.ctx.store.iter_values(CERTIFICATES_NAMESPACE, prefix=prefix)
            ]

        kept: dict[PeerId, AvailabilityCertificate] = {}
        for raw in await trio.to_thread.run_sync(load):
            try:
                certificate = wire.decode(raw, AvailabilityCertificate)
            except WireError as error:
                logger.warning("stored availability certificate unreadable error=%s", error)
                continue
            kept[certificate.member] = certificate
        self._certificates[epoch] = kept
        for old in sorted(self._certificates)[:-EPOCHS_CACHED]:
            del self._certificates[old]
        return kept

    async def keep(self, items: Iterable[AvailabilityCertificate]) -> int:
        """Verify, persist and keep certificates; returns how many were new. A bad one raises
        ``VerificationError`` (those before it are kept)."""
        accepted = 0
        for certificate in items:
            known = await self.certificates(certificate.epoch)
            if known.get(certificate.member) == certificate:
                continue  # the same certificate again: verified when it was kept
            # Verified even when another certificate of the member is kept: a bad one is refused.
            self._verify(certificate)
            if certificate.member in known:
                continue
            key = certificate.epoch.to_bytes(8, "big") + certificate.member.encode()
            encoded = wire.encode(certificate)
            await trio.to_thread.run_sync(
                self.ctx.store.put_value, CERTIFICATES_NAMESPACE, key, encoded
            )
            known = await self.certificates(certificate.epoch)
            known[certificate.member] = certificate
            accepted += 1
            self.metrics.certificates_kept.inc()
        return accepted

    # -- handlers -------------------------------------------------------------------------

    def _open_round(self, epoch: int, remote: PeerId) -> _Round:
        round_ = self._rounds.get(epoch)
        if round_ is None:
            if epoch < self.ctx.epoch:
                raise ProtocolRefusal("CHALLENGE_CLOSED", f"the round of epoch {epoch} is over")
            raise ProtocolRefusal(
                "CHALLENGE_NOT_STARTED", f"this peer has not started the round of epoch {epoch}"
            )
        if round_.closed:
            raise ProtocolRefusal("CHALLENGE_CLOSED", f"the window of epoch {epoch} is closed")
        if remote not in round_.committee:
            raise ProtocolRefusal(
                "CHALLENGE_NOT_MEMBER", f"the remote is not a member of epoch {epoch}"
            )
        return round_

    async def ticket(self, request: ChallengeTicketRequest, remote: PeerId) -> ChallengeTicketReply:
        round_ = self._open_round(request.epoch, remote)
        round_.enter(remote)
        with trio.move_on_after(self.options.quorum_wait):
            await round_.tickets_ready.wait()
        if not round_.tickets_ready.is_set():
            raise ProtocolRefusal("CHALLENGE_NOT_STARTED", "this peer is still making its tickets")
        if not round_.mine:
            raise ProtocolRefusal(
                "NOT_A_CHALLENGER", "this peer holds no shard it also held in the epoch before"
            )
        ticket = round_.tickets.get(remote)
        if ticket is None:
            raise ProtocolRefusal(
                "CHALLENGE_NOT_CHALLENGED", "the remote holds no shard it also held before"
            )
        with trio.move_on_after(self.options.quorum_wait):
            await round_.quorum_entered.wait()
        if not round_.quorum_entered.is_set():
            raise ProtocolRefusal(
                "CHALLENGE_NOT_STARTED", "members holding a quorum have not entered the window"
            )
        if round_.closed:
            raise ProtocolRefusal("CHALLENGE_CLOSED", "the window closed")
        ticket.issued = True
        return ChallengeTicketReply(Epoch(round_.epoch), ticket.nonce, ticket.blob_ids)

    async def response(
        self, request: ChallengeResponseRequest, remote: PeerId
    ) -> ChallengeResponseReply:
        round_ = self._open_round(request.epoch, remote)
        ticket = round_.tickets.get(remote)
        if ticket is None or not ticket.issued:
            raise ProtocolRefusal("CHALLENGE_NO_TICKET", "no ticket was given to the remote")
        if ticket.verdict is None:
            with trio.move_on_after(self.options.quorum_wait):
                await round_.expected_ready.wait()
            if ticket.expected is None:
                raise ProtocolRefusal("CHALLENGE_NOT_READY", "this peer's pass is not done yet")
            if ticket.unverifiable:
                ticket.verdict = "CHALLENGE_UNVERIFIABLE"
            elif hmac.compare_digest(ticket.expected, request.digest):
                ticket.verdict = "pass"
            else:
                ticket.verdict = "CHALLENGE_FAILED"
                self.metrics.failures.labels(member=remote[:12]).inc()
                logger.info(
                    "challenge failed epoch=%d member=%s blobs=%d",
                    round_.epoch,
                    remote[:12],
                    len(ticket.blob_ids),
                )
            self.metrics.verdicts.labels(verdict=ticket.verdict).inc()
        if ticket.verdict != "pass":
            raise ProtocolRefusal(ticket.verdict, "the response does not match this peer's slivers")
        signature = sign_pass(self.ctx.identity, self.ctx.genesis.network_id, round_.epoch, remote)
        return ChallengeResponseReply(signature)

    async def post_certificates(
        self, request: PostAvailabilityCertificatesRequest, remote: PeerId
    ) -> PostAvailabilityCertificatesReply:
        try:
            accepted = await self.keep(request.certificates)
        except VerificationError as error:
            raise ProtocolRefusal("CERTIFICATE_INVALID", str(error)) from error
        return PostAvailabilityCertificatesReply(accepted)

    async def get_certificates(
        self, request: GetAvailabilityCertificatesRequest, remote: PeerId
    ) -> GetAvailabilityCertificatesReply:
        kept = await self.certificates(request.epoch)
        items = tuple(kept[member] for member in sorted(kept))
        return GetAvailabilityCertificatesReply(request.epoch, items)
