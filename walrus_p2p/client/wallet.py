"""A WAL wallet: an account key file, and transfers certified by the committee.

docs/economics.md, "The protocol". An account is an Ed25519 key. A transfer is made like this,
with a deadline on every call:

1. **ask** every committee member for the account (``GetAccountRequest``, in parallel, until
   members holding a quorum of shards answered): the next sequence number is the highest one a
   member *proves* with the certificate of the order just before it (checked against the
   committee), so a lying member cannot push it up, and a quorum always holds an honest member
   that took the latest certificate, so a lagging one cannot pull it down;
2. **sign** the order (:class:`~walrus_p2p.core.economy_messages.TransferBody` naming that
   sequence and the committee's epoch) and ask every member for an approval in parallel, until
   the approvers hold a quorum of shards (or a quorum is out of reach: then the refusal reason
   held by the most shards is the error);
3. **certify** and give the certificate to every member: the send returns once members holding a
   quorum of shards took it, the others get ``tail_seconds`` more.

A send that stopped half way (a member slow to answer, the process killed) is finished by running
the same send again: the body is the same (same sequence, epoch, recipient and amount), so is
the Ed25519 signature, and members that approved it give the same approval. A *different* order
for that sequence is refused by them (``ORDER_CONFLICT``).

The key file (:func:`load_wallet`, :func:`create_wallet`) is TOML with the seed, mode 0600,
written atomically and never replaced; one readable by others is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.core import identity, toml_text
from walrus_p2p.core.committee import Committee, is_quorum, is_validity
from walrus_p2p.core.economy_messages import (
    MAX_HISTORY,
    ORDER_APPROVAL_CONTEXT,
    ApproveOrderReply,
    ApproveOrderRequest,
    CertifiedOrder,
    GetAccountReply,
    GetAccountRequest,
    OrderBody,
    SignedOrder,
    SubmitCertificateReply,
    SubmitCertificateRequest,
    TransferBody,
    approval_bytes,
    certify,
    decode_certificate,
    decode_order_body,
    order_id,
    sign_order,
    verify_certified_order,
)
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import (
    ORDER_REFUSAL_REASONS,
    ConfigError,
    OrderRefusedError,
    QuorumError,
    VerificationError,
    WalrusError,
)
from walrus_p2p.types import Epoch, PeerId

logger = logging.getLogger(__name__)

WALLET_FILE_VERSION = 1
WALLET_KEY_TYPE = "ed25519"
MAX_WALLET_FILE_SIZE = 4096
FROST_PER_WAL = 10**9

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The key file


def _wallet_text(owner: identity.Identity) -> bytes:
    text = (
        "# walrus-p2p wallet: the secret key of a WAL account. Keep it private, back it up.\n"
        + toml_text.assignment("version", toml_text.integer(WALLET_FILE_VERSION))
        + toml_text.assignment("type", toml_text.string(WALLET_KEY_TYPE))
        + toml_text.assignment("seed", toml_text.string(owner.seed.hex()))
        + toml_text.assignment("address", toml_text.string(owner.public_key.hex()))
    )
    return text.encode("utf-8")


def create_wallet(path: str | os.PathLike[str], *, seed: bytes | None = None) -> identity.Identity:
    """Write a new wallet key file (mode 0600, atomically; an existing file is never replaced:
    ``ConfigError``). ``seed`` makes it deterministic (tests, devnets)."""
    target = Path(path)
    owner = identity.Identity.from_seed(seed or secrets.token_bytes(identity.SEED_LENGTH))
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create the directory ({error.strerror})", path=str(target)
        ) from error
    temporary = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        descriptor = os.open(temporary, flags, 0o600)
        try:
            os.fchmod(descriptor, 0o600)
            os.write(descriptor, _wallet_text(owner))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.link(temporary, target)  # fails if the target exists: no check-then-write race
    except FileExistsError:
        raise ConfigError("already exists; refusing to overwrite it", path=str(target)) from None
    except OSError as error:
        raise ConfigError(f"cannot write ({error.strerror})", path=str(target)) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return owner


def load_wallet(path: str | os.PathLike[str]) -> identity.Identity:
    """The account key of a wallet file; ``ConfigError`` if it is missing, malformed or
    readable by group or others."""
    where = str(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("not a regular file", path=where)
        if info.st_mode & 0o077:
            raise ConfigError(
                f"wallet file is accessible by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run: chmod 600 {path}",
                path=where,
            )
        if info.st_size > MAX_WALLET_FILE_SIZE:
            raise ConfigError("too large for a wallet file", path=where)
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            "no wallet here (walrus-peer wallet address --create makes one)", path=where
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read ({error.strerror})", path=where) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not TOML: {error}", path=where) from error
    unknown = set(document) - {"version", "type", "seed", "address"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown field", path=where)
    if document.get("version") != WALLET_FILE_VERSION:
        raise ConfigError(f"version: unsupported {document.get('version')!r}", path=where)
    if document.get("type") != WALLET_KEY_TYPE:
        raise ConfigError(f"type: must be {WALLET_KEY_TYPE!r}", path=where)
    seed_text = document.get("seed")
    try:
        seed = bytes.fromhex(seed_text) if isinstance(seed_text, str) else b""
    except ValueError:
        seed = b""
    if len(seed) != identity.SEED_LENGTH:
        raise ConfigError(f"seed: must be {2 * identity.SEED_LENGTH} hex digits", path=where)
    owner = identity.Identity.from_seed(seed)
    if document.get("address") != owner.public_key.hex():
        raise ConfigError("address: does not match the seed (corrupt wallet file)", path=where)
    return owner


def ensure_wallet(path: str | os.PathLike[str]) -> tuple[identity.Identity, bool]:
    """Load the wallet at ``path``, creating it if absent; returns (key, created)."""
    if Path(path).exists():
        return load_wallet(path), False
    try:
        return create_wallet(path), True
    except ConfigError:
        if Path(path).exists():  # another process created it meanwhile: use that one
            return load_wallet(path), False
        raise


def parse_address(text: str) -> bytes:
    """An account address: 64 hex digits, an Ed25519 public key (``ConfigError`` otherwise)."""
    try:
        raw = bytes.fromhex(text.strip())
        identity.peer_id_from_public_key(raw)
    except ValueError as error:
        raise ConfigError(f"not an account address (64 hex digits): {text!r}") from error
    return raw


def format_wal(frost: int) -> str:
    """FROST as WAL with up to nine decimals, trailing zeros dropped (``1.5``, ``0.000000001``)."""
    whole, part = divmod(frost, FROST_PER_WAL)
    return f"{whole}.{part:09d}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------------------------
# Talking to the committee


@dataclass(frozen=True, slots=True)
class WalletOptions:
    request_timeout: float = 10.0
    """One call to one member."""
    total_timeout: float = 60.0
    """A whole step (account query, approvals, delivery) across all members."""
    attempts: int = 3
    """Calls to one member in one step, for failures that may pass (timeouts, rate limits)."""
    retry_delay: float = 1.0
    tail_seconds: float = 5.0
    """After a quorum took the certificate, the other members get this long."""


RETRYABLE = frozenset(
    {"PEER_UNREACHABLE", "TIMEOUT", "RATE_LIMITED", "BUSY", "NETWORK_ERROR", "HANDOVER_PENDING"}
)
"""Failures of one member that may pass; ``HANDOVER_PENDING``: a member that just entered an
epoch still collects the previous committee's locks (docs/economics.md, "Double spending")."""
COMMITTEE_ATTEMPTS = 3
"""Committees one order is put to when the epoch changes while its approvals are collected."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One certified order, verified against the committee of its epoch."""

    order_id: bytes
    account: bytes
    sequence: int
    epoch: int
    kind: str
    """The body's type name without ``Body`` (``Transfer``, ``BuyStorage``, ...)."""
    amount: int | None
    recipient: bytes | None
    body: OrderBody | None = None
    """The order itself (a payment looks for an earlier purchase and attachment in it)."""


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account as the committee sees it (see the module docstring for the rules)."""

    account: bytes
    epoch: int
    balance: int
    next_sequence: int
    answered_shards: int
    n_shards: int
    pending: dict[bytes, int] = field(default_factory=dict)
    """Order ids members approved at ``next_sequence`` without a certificate, with the shard
    weight of those members."""
    orders: list[HistoryEntry] = field(default_factory=list)
    """The account's own certified orders, newest first."""
    received: list[HistoryEntry] = field(default_factory=list)
    """Transfers to the account, most recent first (as members saw them arrive)."""


@dataclass(frozen=True, slots=True)
class TransferResult:
    order_id: bytes
    account: bytes
    recipient: bytes
    amount: int
    sequence: int
    epoch: int
    approved_shards: int
    delivered_shards: int
    n_shards: int
    certificate: CertifiedOrder


async def each_member(
    committee: Committee,
    call: Callable[[PeerId], Awaitable[T]],
    *,
    options: WalletOptions,
    enough: Callable[[dict[PeerId, T], dict[PeerId, WalrusError]], bool],
) -> tuple[dict[PeerId, T], dict[PeerId, WalrusError]]:
    """``call`` every member at once (retrying what may pass) until ``enough(answers,
    failures)`` or everyone answered or failed or ``total_timeout`` passed."""
    answers: dict[PeerId, T] = {}
    failures: dict[PeerId, WalrusError] = {}

    async def one(peer_id: PeerId, nursery: trio.Nursery) -> None:
        for attempt in range(1, options.attempts + 1):
            try:
                answers[peer_id] = await call(peer_id)
                failures.pop(peer_id, None)
                break
            except WalrusError as error:
                failures[peer_id] = error
                if error.reason not in RETRYABLE or attempt == options.attempts:
                    break
                await trio.sleep(options.retry_delay * attempt)
        if enough(answers, failures):
            nursery.cancel_scope.cancel()

    with trio.move_on_after(options.total_timeout):
        async with trio.open_nursery() as nursery:
            for peer_id in committee.peer_ids:
                nursery.start_soon(one, peer_id, nursery)
    return answers, failures


def _entry(light: LightPeer, encoded: bytes, verified: set[bytes]) -> HistoryEntry | None:
    """A history entry from a certificate a member sent, or None if it does not verify (a
    member cannot make up history, only withhold it)."""
    try:
        certificate = decode_certificate(encoded)
        identifier = order_id(certificate.order)
        if identifier in verified:
            body = decode_order_body(certificate.order)
        else:
            body = verify_certified_order(certificate, light.genesis.network_id, light.committee_of)
            verified.add(identifier)
    except WalrusError as error:
        logger.info("history certificate dropped reason=%s detail=%s", error.reason, error)
        return None
    amount = getattr(body, "amount", None)
    recipient = getattr(body, "recipient", None)
    return HistoryEntry(
        order_id=identifier,
        account=bytes(body.account),
        sequence=body.sequence,
        epoch=int(body.epoch),
        kind=type(body).__name__.removesuffix("Body"),
        amount=amount if isinstance(amount, int) else None,
        recipient=bytes(recipient) if isinstance(recipient, bytes) else None,
        body=body,
    )


def _weighted_mode(values: dict[PeerId, int], committee: Committee) -> int:
    """The value reported by the most shard weight (ties: the lower value)."""
    weights: dict[int, int] = {}
    for peer_id, value in values.items():
        weights[value] = weights.get(value, 0) + committee.shard_weight([peer_id])
    return min(weights, key=lambda value: (-weights[value], value))


async def account_view(
    light: LightPeer,
    account: bytes,
    *,
    history: int = MAX_HISTORY,
    options: WalletOptions | None = None,
) -> AccountView:
    """Ask every member of the current committee about ``account``.

    ``next_sequence`` is the highest one a member proves (its newest certificate is the order
    just before it, and verifies); ``balance`` is what the most shard weight reports among the
    members at that sequence (members may lag on credits: a transfer's certificate reaches some
    later). Raises ``QuorumError`` when fewer than f + 1 shards answered: the view could be
    made up by faulty members alone."""
    options = options or WalletOptions()
    committee = light.committee
    request = GetAccountRequest(account=account, history=max(1, min(history, MAX_HISTORY)))

    async def ask(peer_id: PeerId) -> GetAccountReply:
        return await light.call(peer_id, request, GetAccountReply, timeout=options.request_timeout)

    # A quorum of answers is enough: the certificate of the account's latest order reached a
    # quorum (the sending wallet waits for that), and two quorums share an honest member, so
    # the highest sequence proven among a quorum is the account's (when its last send ended).
    replies, failures = await each_member(
        committee,
        ask,
        options=options,
        enough=lambda answers, failed: committee.is_quorum(answers),
    )
    answered = committee.shard_weight(replies)
    if not is_validity(answered, committee.n_shards):
        detail = "; ".join(f"{p[:12]}: {e.reason}" for p, e in sorted(failures.items())[:4])
        raise QuorumError(
            f"only {answered} of {committee.n_shards} shards answered for the account ({detail})"
        )
    verified: set[bytes] = set()
    proven: dict[PeerId, int] = {}
    for peer_id, reply in replies.items():
        if reply.next_sequence == 0:
            proven[peer_id] = 0
            continue
        newest = _entry(light, reply.orders[0], verified) if reply.orders else None
        if (
            newest is not None
            and newest.account == account
            and newest.sequence == reply.next_sequence - 1
        ):
            proven[peer_id] = reply.next_sequence
        else:
            logger.warning("member did not prove its sequence peer=%s", peer_id[:12])
    if not proven:
        raise VerificationError("no member proved the account's next sequence number")
    next_sequence = max(proven.values())
    at_newest = [peer for peer, sequence in proven.items() if sequence == next_sequence]
    balance = _weighted_mode({peer: replies[peer].balance for peer in at_newest}, committee)
    pending: dict[bytes, int] = {}
    for peer_id in at_newest:
        lock = replies[peer_id].pending
        if lock is not None:
            pending[bytes(lock)] = pending.get(bytes(lock), 0) + committee.shard_weight([peer_id])
    orders: dict[bytes, HistoryEntry] = {}
    received: dict[bytes, HistoryEntry] = {}
    for reply in replies.values():
        for encoded in reply.orders:
            entry = _entry(light, encoded, verified)
            if entry is not None and entry.account == account:
                orders.setdefault(entry.order_id, entry)
        for encoded in reply.received:
            entry = _entry(light, encoded, verified)
            if entry is not None and entry.recipient == account:
                received.setdefault(entry.order_id, entry)
    return AccountView(
        account=account,
        epoch=light.epoch,
        balance=balance,
        next_sequence=next_sequence,
        answered_shards=answered,
        n_shards=committee.n_shards,
        pending=pending,
        orders=sorted(orders.values(), key=lambda e: -e.sequence)[:history],
        received=list(received.values())[:history],
    )


def _refusal(
    failures: dict[PeerId, WalrusError], committee: Committee, approved: int, what: str
) -> WalrusError:
    """The error of a step that missed its quorum: the order refusal held by the most shards,
    else a ``QuorumError`` listing why members failed."""
    by_reason: dict[str, int] = {}
    for peer_id, error in failures.items():
        if error.reason in ORDER_REFUSAL_REASONS:
            by_reason[error.reason] = by_reason.get(error.reason, 0) + committee.shard_weight(
                [peer_id]
            )
    detail = "; ".join(f"{p[:12]}: {e.reason} {e}" for p, e in sorted(failures.items())[:4])
    if by_reason:
        reason = max(sorted(by_reason), key=lambda r: by_reason[r])
        example = next(e for e in failures.values() if e.reason == reason)
        return OrderRefusedError(
            reason,
            f"{what} refused by members holding {by_reason[reason]} of {committee.n_shards} "
            f"shards: {example.message}",
        )
    return QuorumError(
        f"{what}: only {approved} of {committee.n_shards} shards approved, a quorum is "
        f"{-(-(2 * committee.n_shards + 1) // 3)} ({detail or 'no member answered'})"
    )


async def collect_approvals(
    light: LightPeer,
    committee: Committee,
    signed: SignedOrder,
    *,
    options: WalletOptions,
    before: Callable[[PeerId], Awaitable[object]] | None = None,
) -> list[Signature]:
    """Approvals of ``signed`` from members holding a quorum of ``committee``'s shards, each
    checked; raises the refusal (or ``QuorumError``) when a quorum is out of reach. ``before``
    is awaited for each member just before it is asked (a paid store gives it the certificate
    of the purchase the attachment needs, without a round of its own)."""
    body = decode_order_body(signed)
    message = approval_bytes(light.genesis.network_id, committee.epoch, order_id(signed))
    n_shards = committee.n_shards

    async def ask(peer_id: PeerId) -> Signature:
        if before is not None:
            await before(peer_id)
        reply = await light.call(
            peer_id,
            ApproveOrderRequest(order=signed),
            ApproveOrderReply,
            timeout=options.request_timeout,
        )
        if reply.epoch != committee.epoch:
            # A member already in another epoch signs that epoch (certify_order moves on).
            raise VerificationError(
                f"approval from peer={peer_id[:12]} is for epoch {reply.epoch}, "
                f"not {committee.epoch}"
            )
        key = identity.PublicKey(committee.member(peer_id).public_key)
        key.verify(ORDER_APPROVAL_CONTEXT, message, reply.signature)
        return Signature(peer_id, reply.signature)

    def enough(answers: dict[PeerId, Signature], failed: dict[PeerId, WalrusError]) -> bool:
        weight = committee.shard_weight(answers)
        final = [p for p, e in failed.items() if e.reason not in RETRYABLE]
        return is_quorum(weight, n_shards) or not is_quorum(
            n_shards - committee.shard_weight(final), n_shards
        )

    approvals, failures = await each_member(committee, ask, options=options, enough=enough)
    weight = committee.shard_weight(approvals)
    if not is_quorum(weight, n_shards):
        raise _refusal(failures, committee, weight, f"order {body.sequence}")
    return list(approvals.values())


async def certify_order(
    light: LightPeer,
    committee: Committee,
    signed: SignedOrder,
    *,
    options: WalletOptions,
    before: Callable[[PeerId], Awaitable[object]] | None = None,
) -> tuple[CertifiedOrder, Committee]:
    """The verified certificate of ``signed`` and the committee that approved it.

    When the epoch changes while the approvals are collected, the same order is put to the
    new committee, whose members approve an order of the epoch before their own
    (docs/economics.md, "Double spending"); at most :data:`COMMITTEE_ATTEMPTS` committees."""
    body = decode_order_body(signed)
    for _attempt in range(COMMITTEE_ATTEMPTS):
        try:
            approvals = await collect_approvals(
                light, committee, signed, options=options, before=before
            )
        except (QuorumError, OrderRefusedError) as error:
            if isinstance(error, OrderRefusedError) and error.reason not in (
                "ORDER_WRONG_EPOCH",
                "HANDOVER_PENDING",
            ):
                raise
            await light.refresh_if_stale(min_interval=0.0)
            newer = light.committee
            if newer.epoch <= committee.epoch and error.reason == "HANDOVER_PENDING":
                await trio.sleep(options.retry_delay)  # members still collect: ask again
                continue
            if newer.epoch <= committee.epoch or newer.epoch > body.epoch + 1:
                raise
            logger.info(
                "epoch changed while order %d was approved: asking committee %d",
                body.sequence,
                newer.epoch,
            )
            committee = newer
            continue
        certificate = certify(signed, approvals, committee.epoch)
        verify_certified_order(certificate, light.genesis.network_id, light.committee_of)
        return certificate, committee
    raise QuorumError(f"order {body.sequence}: the epoch kept changing while it was approved")


async def _deliver_all(
    light: LightPeer,
    committee: Committee,
    request: SubmitCertificateRequest,
    taken: set[PeerId],
    quorum: trio.Event,
    options: WalletOptions,
) -> None:
    """Give ``request`` to every member until each answered, or ``tail_seconds`` after members
    holding a quorum took it; sets ``quorum`` then (or when every member answered)."""

    async def give(peer_id: PeerId) -> SubmitCertificateReply:
        reply = await light.call(
            peer_id, request, SubmitCertificateReply, timeout=options.request_timeout
        )
        taken.add(peer_id)
        if committee.is_quorum(taken):
            quorum.set()
        return reply

    async with trio.open_nursery() as nursery:

        async def everyone() -> None:
            await each_member(
                committee, give, options=options, enough=lambda answers, failed: False
            )
            quorum.set()
            nursery.cancel_scope.cancel()

        nursery.start_soon(everyone)
        await quorum.wait()
        with trio.move_on_after(options.tail_seconds):
            await trio.sleep_forever()
        nursery.cancel_scope.cancel()


async def deliver_certificate(
    light: LightPeer,
    committee: Committee,
    certificate: CertifiedOrder,
    *,
    options: WalletOptions,
    background: trio.Nursery | None = None,
) -> int:
    """Give the certificate to every member; returns the shard weight that took it. Waits for
    a quorum, then at most ``tail_seconds`` for the others: here, or in ``background`` after
    returning (a paid store goes on at once; docs/economics.md, "Paid storage")."""
    request = SubmitCertificateRequest(certificate=certificate)
    taken: set[PeerId] = set()
    quorum = trio.Event()
    if background is None:
        await _deliver_all(light, committee, request, taken, quorum, options)
    else:
        background.start_soon(_deliver_all, light, committee, request, taken, quorum, options)
        await quorum.wait()
    return committee.shard_weight(taken)


@dataclass(frozen=True, slots=True)
class OrderResult:
    """A certified order of the wallet's account (a stake, a withdrawal, ...)."""

    order_id: bytes
    account: bytes
    body: OrderBody
    approved_shards: int
    delivered_shards: int
    n_shards: int
    certificate: CertifiedOrder


OrderBuilder = Callable[[bytes, bytes, int, Epoch], OrderBody]
"""Builds an order body from (network id, account, sequence, epoch)."""


async def send_order(
    light: LightPeer,
    owner: identity.Identity,
    build: OrderBuilder,
    *,
    options: WalletOptions | None = None,
) -> OrderResult:
    """Get one order of ``owner``'s account certified and delivered: the flow of the module
    docstring, for any order body ``build`` makes. Raises ``OrderRefusedError`` (the members'
    reason), ``QuorumError`` (not enough members answered)."""
    options = options or WalletOptions()
    account = owner.public_key.raw
    await light.refresh_if_stale(min_interval=0.0)
    committee = light.committee
    view = await account_view(light, account, history=1, options=options)
    body = build(light.genesis.network_id, account, view.next_sequence, Epoch(committee.epoch))
    signed = sign_order(owner, body)
    certificate, committee = await certify_order(light, committee, signed, options=options)
    delivered = await deliver_certificate(light, committee, certificate, options=options)
    if not is_quorum(delivered, committee.n_shards):
        # Certified all the same (final); the members that missed it learn it by gossip or
        # when they fill the gap this leaves before the account's next order.
        logger.warning("certificate delivered to %d shards only", delivered)
    return OrderResult(
        order_id=order_id(signed),
        account=account,
        body=body,
        approved_shards=committee.shard_weight(s.signer for s in certificate.approvals),
        delivered_shards=delivered,
        n_shards=committee.n_shards,
        certificate=certificate,
    )


async def send_fields(
    light: LightPeer,
    owner: identity.Identity,
    body_type: Callable[..., OrderBody],
    *,
    options: WalletOptions | None = None,
    **fields: Any,
) -> OrderResult:
    """:func:`send_order` for an order body of ``body_type`` with ``fields`` besides the four
    every body starts with (network, account, sequence, epoch)."""

    def build(network_id: bytes, account: bytes, sequence: int, epoch: Epoch) -> OrderBody:
        return body_type(
            network_id=network_id, account=account, sequence=sequence, epoch=epoch, **fields
        )

    return await send_order(light, owner, build, options=options)


async def send_transfer(
    light: LightPeer,
    owner: identity.Identity,
    recipient: bytes,
    amount: int,
    *,
    options: WalletOptions | None = None,
) -> TransferResult:
    """Transfer ``amount`` FROST from ``owner``'s account to ``recipient``: the flow of the
    module docstring. Raises ``OrderRefusedError`` (the members' reason: ``ORDER_OVERDRAWN``,
    ``ORDER_CONFLICT``, ...), ``QuorumError`` (not enough members answered) or
    ``ConfigError`` (a bad amount or recipient)."""
    account = owner.public_key.raw
    if amount <= 0:
        raise ConfigError("the amount must be positive")
    if recipient == account:
        raise ConfigError("a transfer to the sending account itself is not an order")

    result = await send_fields(
        light, owner, TransferBody, options=options, recipient=recipient, amount=amount
    )
    return TransferResult(
        order_id=result.order_id,
        account=account,
        recipient=recipient,
        amount=amount,
        sequence=result.body.sequence,
        epoch=int(result.body.epoch),
        approved_shards=result.approved_shards,
        delivered_shards=result.delivered_shards,
        n_shards=result.n_shards,
        certificate=result.certificate,
    )
