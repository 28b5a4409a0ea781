"""Economy messages: account orders, member approvals, certificates, evidence, votes, settlements.

Owner: the wire form of the token economy (docs/economics.md; docs/design.md §5). Type ids
96-127 are the economy's: 96-104 the order bodies, 105-108 signed orders, approvals,
certificates and conflict evidence, 109-110 parameter votes, 111 the epoch settlement, 112-120
the requests and replies of the storage protocol and the gossip batch that carry them between
wallets and peers (docs/economics.md, "The protocol"), 121-122 the economy query, 123-125 the
shared-blob order bodies and 126-127 the shared-blob query (docs/economics.md, "Shared
blobs"); 168-175 the lock hand-over at an epoch change (168-169 used; docs/economics.md,
"Double spending").

- An **account** is an Ed25519 public key. Its owner signs order *bodies*: a transfer, a storage
  purchase, an extension, a split, attaching a blob to a resource, releasing it after a delete,
  a stake, a withdrawal request, a withdrawal. Every body names the network, the account, the
  account's sequence number and the epoch in which it is to be certified.
- A :class:`SignedOrder` carries the body as its canonical encoding (``body``), so the order id
  (:func:`order_id`, a keyed blake3 hash of those bytes) and the owner's signature cover exactly
  one value, and the body can be forwarded byte for byte.
- A committee member that follows the signing rule (:class:`walrus_p2p.core.ledger.OrderSigner`)
  *approves* an order by signing :class:`OrderApprovalBody` (network, epoch, order id). An order
  with approvals from members holding a quorum of the epoch's shards is a
  :class:`CertifiedOrder`: final (:func:`verify_certified_order`).
- Two approvals by one member of two different orders of one (account, sequence) are
  :class:`ConflictEvidence`, which anyone holding the member's public key can check.
- :class:`ParameterVote` is a member's signed vote on prices, capacity and its commission;
  :class:`EpochSettlement` is what the epoch change agrees on for the economy.

Pure: no I/O. The state these messages change is :mod:`walrus_p2p.core.ledger`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeAlias

from walrus_p2p.core import identity, wire
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.core.merkle import derive_domain_key, keyed_hash
from walrus_p2p.core.records import (
    MAX_PEER_ID_LENGTH,
    EpochNumber,
    PeerIdText,
    Signature,
    Signatures,
    verify_weighted_signatures,
)
from walrus_p2p.core.wire import (
    MAX_SHARDS,
    U16,
    U64,
    BlobIdBytes,
    BytesSpec,
    Hash32,
    ListSpec,
    Message,
    NetworkIdBytes,
    PublicKeyBytes,
    SignatureBytes,
    TextSpec,
    record,
    record_spec,
    register,
    signing_bytes,
)
from walrus_p2p.errors import OrderRefusedError, VerificationError, WireError
from walrus_p2p.types import Epoch, PeerId

ORDER_CONTEXT = "walrus-p2p/economy-order/v1"
"""What an account owner signs its order bodies under."""
ORDER_APPROVAL_CONTEXT = "walrus-p2p/economy-order-approval/v1"
"""What a committee member signs an :class:`OrderApprovalBody` under."""
PARAMETER_VOTE_CONTEXT = "walrus-p2p/economy-parameter-vote/v1"

ORDER_ID_KEY = derive_domain_key("economy order id")
SETTLEMENT_ID_KEY = derive_domain_key("economy settlement id")
RESOURCE_ID_KEY = derive_domain_key("economy storage resource id")

MAX_ORDER_BODY_SIZE = 512
"""The largest body is an attach order, about 200 bytes."""
MAX_SETTLEMENT_STAKE_MOVES = 1024
"""Stake activations (and, separately, withdrawal requests) one settlement may list; more wait for
the next epoch change."""
MAX_COMMISSION_BPS = 10_000

AccountKey = PublicKeyBytes
"""An account: a 32-byte Ed25519 public key."""
Amount = U64
"""WAL in its base unit (FROST: 10^9 per WAL)."""
SequenceNumber = U64


# --------------------------------------------------------------------------------------------
# Order bodies. Every body starts with: network id, account, sequence, epoch.


@register(96)
@dataclass(frozen=True, slots=True)
class TransferBody(Message):
    """Move ``amount`` from the account to ``recipient``."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    recipient: AccountKey
    amount: Amount


@register(97)
@dataclass(frozen=True, slots=True)
class BuyStorageBody(Message):
    """Buy a storage resource of ``units`` (MiB of encoded size) for epochs [start, end).

    ``amount`` is units x storage price x (end - start) at the prices in force in ``epoch``; it
    is split evenly into the reward pools of epochs start..end-1. The resource's id is the
    order id."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    units: U64
    start_epoch: EpochNumber
    end_epoch: EpochNumber
    amount: Amount


@register(98)
@dataclass(frozen=True, slots=True)
class ExtendStorageBody(Message):
    """Extend a resource (attached to a blob or not) to ``end_epoch``, paying for the added
    epochs: units x storage price x (end_epoch - old end)."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    resource: Hash32
    end_epoch: EpochNumber
    amount: Amount


class SplitKind(enum.Enum):
    """How a resource is split: by size (``at`` units go to the first part) or by epoch (the
    first part ends at epoch ``at``). Values are wire codes; never renumber them."""

    SIZE = 0
    EPOCH = 1


@register(99)
@dataclass(frozen=True, slots=True)
class SplitStorageBody(Message):
    """Split an unattached resource in two (:func:`split_resource_ids` names the parts)."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    resource: Hash32
    kind: SplitKind
    at: U64


@register(100)
@dataclass(frozen=True, slots=True)
class AttachBlobBody(Message):
    """Register a blob on a resource: the resource must cover the blob's encoded size (in units)
    and is consumed (attached) until a :class:`ReleaseStorageBody` after a delete. ``amount`` is
    the write fee, units x write price, paid into the pool of ``epoch``."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    resource: Hash32
    blob_id: BlobIdBytes
    encoded_size: U64
    deletable: bool
    amount: Amount


@register(101)
@dataclass(frozen=True, slots=True)
class ReleaseStorageBody(Message):
    """Detach a deletable blob's resource (the blob was deleted): the resource can be reused for
    what is left of its epochs."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    resource: Hash32


@register(102)
@dataclass(frozen=True, slots=True)
class StakeBody(Message):
    """Stake ``amount`` with the storage peer whose public key is ``peer``. The stake's id is the
    order id; it counts from the committee selection of the first settlement that lists it."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    peer: PublicKeyBytes
    amount: Amount


@register(103)
@dataclass(frozen=True, slots=True)
class RequestWithdrawBody(Message):
    """Ask to withdraw a stake: it stops counting from the committee selection of the first
    settlement that lists this request, and can be withdrawn once that settlement is applied."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    stake: Hash32


@register(104)
@dataclass(frozen=True, slots=True)
class WithdrawBody(Message):
    """Withdraw a stake whose withdrawal is complete: its principal and rewards go to the
    account's balance."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    stake: Hash32


@register(123)
@dataclass(frozen=True, slots=True)
class ShareBlobBody(Message):
    """Make the account's resource attached to a permanent blob a *shared blob*: from then on
    anyone may fund it and ask for it to be extended from its funds, and its owner extends it
    that way too (docs/economics.md, "Shared blobs"). ``amount`` (may be 0) moves from the
    account into the shared blob's funds. The shared blob's id is the resource id."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    resource: Hash32
    amount: Amount


@register(124)
@dataclass(frozen=True, slots=True)
class FundSharedBlobBody(Message):
    """Move ``amount`` from the account into the funds of the shared blob ``shared``."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    shared: Hash32
    amount: Amount


@register(125)
@dataclass(frozen=True, slots=True)
class ExtendSharedBlobBody(Message):
    """Ask for the shared blob ``shared`` to live ``epochs`` epochs longer, paid from its funds.

    Costs the account nothing. The next epoch change lists the request in its settlement when the
    shared blob's funds cover it at the storage price in force (the settlement states the new
    end); a request no settlement of its own epoch or the next one lists lapses."""

    network_id: NetworkIdBytes
    account: AccountKey
    sequence: SequenceNumber
    epoch: EpochNumber
    shared: Hash32
    epochs: U64


OrderBody: TypeAlias = (
    TransferBody
    | BuyStorageBody
    | ExtendStorageBody
    | SplitStorageBody
    | AttachBlobBody
    | ReleaseStorageBody
    | StakeBody
    | RequestWithdrawBody
    | WithdrawBody
    | ShareBlobBody
    | FundSharedBlobBody
    | ExtendSharedBlobBody
)
ORDER_BODY_TYPES = (
    TransferBody,
    BuyStorageBody,
    ExtendStorageBody,
    SplitStorageBody,
    AttachBlobBody,
    ReleaseStorageBody,
    StakeBody,
    RequestWithdrawBody,
    WithdrawBody,
    ShareBlobBody,
    FundSharedBlobBody,
    ExtendSharedBlobBody,
)
"""For ``wire.decode(data, ORDER_BODY_TYPES)``."""

OrderBodyBytes = Annotated[bytes, BytesSpec(min_length=1, max_length=MAX_ORDER_BODY_SIZE)]


# --------------------------------------------------------------------------------------------
# Signed orders, approvals, certificates


@register(105)
@dataclass(frozen=True, slots=True)
class SignedOrder(Message):
    """An order body (its canonical encoding) and the owner's signature over those bytes under
    :data:`ORDER_CONTEXT`. Unverified until :func:`verify_order`."""

    body: OrderBodyBytes
    signature: SignatureBytes


@register(106)
@dataclass(frozen=True, slots=True)
class OrderApprovalBody(Message):
    """What a committee member of ``epoch`` signs to approve the order with id ``order_id``."""

    network_id: NetworkIdBytes
    epoch: EpochNumber
    order_id: Hash32


@register(107)
@dataclass(frozen=True, slots=True)
class CertifiedOrder(Message):
    """An order and approvals (sorted by signer) from members holding a quorum of the shards of
    ``epoch``'s committee: final (:func:`verify_certified_order`). ``epoch`` is the order's own
    epoch or the next one (an order caught by an epoch change is completed by the new
    committee; docs/economics.md, "Double spending")."""

    order: SignedOrder
    approvals: Signatures
    epoch: EpochNumber


@register(108)
@dataclass(frozen=True, slots=True)
class ConflictEvidence(Message):
    """One member's approvals of two different orders of one (account, sequence): an honest
    member never signs both (docs/economics.md, "Double spending"). ``public_key`` is the
    member's; :func:`verify_conflict_evidence` checks everything else."""

    public_key: PublicKeyBytes
    first: SignedOrder
    first_approval: SignatureBytes
    first_epoch: EpochNumber
    second: SignedOrder
    second_approval: SignatureBytes
    second_epoch: EpochNumber


# --------------------------------------------------------------------------------------------
# Parameter votes and the settlement


@register(109)
@dataclass(frozen=True, slots=True)
class ParameterVoteBody(Message):
    """A storage peer's vote, from ``epoch`` on: prices (FROST per MiB of encoded size: per epoch
    for storage, once for a write), the capacity it offers (bytes) and its commission (basis
    points of its rewards, at most 10 000)."""

    network_id: NetworkIdBytes
    public_key: PublicKeyBytes
    epoch: EpochNumber
    storage_price: U64
    write_price: U64
    capacity: U64
    commission_bps: U16


@register(110)
@dataclass(frozen=True, slots=True)
class ParameterVote(Message):
    body: ParameterVoteBody
    signature: SignatureBytes


@record
@dataclass(frozen=True, slots=True, order=True)
class VoteEntry:
    """A member's vote as the settlement carries it (the member is named by peer id)."""

    peer_id: PeerIdText
    storage_price: U64
    write_price: U64
    capacity: U64
    commission_bps: U16


VoteEntries = Annotated[
    tuple[VoteEntry, ...],
    ListSpec(record_spec(VoteEntry), MAX_SHARDS, strictly_increasing=True),
]
OrderIds = Annotated[tuple[bytes, ...], ListSpec(BytesSpec.exact(32), MAX_SETTLEMENT_STAKE_MOVES)]
"""Order ids, sorted without repeats (checked by :func:`check_settlement_form`)."""
PeerIds = Annotated[
    tuple[PeerId, ...],
    ListSpec(TextSpec(MAX_PEER_ID_LENGTH, r"[1-9A-HJ-NP-Za-km-z]+"), MAX_SHARDS),
]
"""Peer ids, sorted without repeats (checked by :func:`check_settlement_form`)."""


@record
@dataclass(frozen=True, slots=True, order=True)
class SharedExtension:
    """A shared blob's extension as a settlement lists it: the request order ``order_id``
    moved the end of the shared blob of ``owner`` (the resource's owner) for ``blob_id`` to
    ``end_epoch``, paid from its funds. The blob and owner are repeated here so that anyone
    holding the epoch chain (a light client) learns the blob's new end without a ledger."""

    order_id: Hash32
    blob_id: BlobIdBytes
    owner: PublicKeyBytes
    end_epoch: EpochNumber


SharedExtensions = Annotated[
    tuple[SharedExtension, ...],
    ListSpec(record_spec(SharedExtension), MAX_SETTLEMENT_STAKE_MOVES, strictly_increasing=True),
]
VoteSignatures = Annotated[tuple[bytes, ...], ListSpec(BytesSpec.exact(64), MAX_SHARDS)]
VoteEpochs = Annotated[tuple[Epoch, ...], ListSpec(wire.IntSpec(0, 2**64 - 1), MAX_SHARDS)]


@register(111)
@dataclass(frozen=True, slots=True)
class EpochSettlement(Message):
    """The economy part of an epoch change: agreed by the committee of ``epoch`` together with
    the committee of ``epoch`` + 1 (docs/economics.md, "What is agreed where").

    - ``payout``: what the reward fund pays for ``epoch`` (the members' shares, the stakers'
      shares and the burn);
    - ``votes``: the parameter votes in force, sorted by peer id; prices and capacity of epoch
      ``epoch`` + 1 are their quorum quantiles over the next committee's shards, and each
      commission applies to the rewards of epoch ``epoch`` + 2;
    - ``stake_activations``: stake orders that count from the next committee on;
    - ``withdrawal_requests``: withdrawal requests whose stake stops counting from the next
      committee on (and is withdrawable once this settlement is applied);
    - ``slashed``: members whose commission for ``epoch`` is burned (a quorum voted for it);
    - ``certified``: the members paid for ``epoch`` because they hold an availability
      certificate of it (docs/challenges.md, "Payout"): the share of every other member is
      burned; None when no storage challenge ran in ``epoch`` (every member is paid);
    - ``vote_signatures`` and ``vote_epochs``: for each entry of ``votes``, in the same order,
      the epoch the voter cast it in (at most ``epoch``) and the voter's signature of that
      ``ParameterVoteBody`` (:func:`vote_body_of`), so that any validator checks a vote without
      having received it (:func:`verify_settlement_votes`). A vote stays in force until a newer
      one of its voter is listed: a settlement lists only new votes (docs/economics.md, "Votes");
    - ``shared_extensions``: shared-blob extension requests carried out, sorted by order id
      (docs/economics.md, "Shared blobs").
    """

    network_id: NetworkIdBytes
    epoch: EpochNumber
    payout: Amount
    votes: VoteEntries
    stake_activations: OrderIds
    withdrawal_requests: OrderIds
    slashed: PeerIds
    certified: PeerIds | None = None
    vote_signatures: VoteSignatures = ()
    vote_epochs: VoteEpochs = ()
    shared_extensions: SharedExtensions = ()


# --------------------------------------------------------------------------------------------
# Requests and replies on the storage protocol, and the gossip batch (docs/economics.md, "The
# protocol"). Certificates travel as their canonical encodings, each decoded and verified on its
# own by the receiver, so one bad certificate in a page or batch does not hide the others and a
# known one is recognised by its bytes before any signature is checked.

MAX_CERTIFIED_ORDER_SIZE = 36 * 1024
"""A certificate with approvals from all 256 shard holders is 34 636 bytes."""
MAX_CERTIFICATES_PER_MESSAGE = 24
"""Certificates in one listing page, gossip batch or history list: at most ~830 KiB, below the
gossip message cap of the default genesis limits (1 MiB)."""
MAX_HISTORY = 10
"""Orders of each kind (signed by the account, received by it) an account query returns."""
ORDER_KEY_SIZE = 40
"""A certified order's place in a listing: the account (32 bytes), then its sequence (8 bytes,
big-endian), so the listing is in account then sequence order."""

EncodedCertificates = Annotated[
    tuple[bytes, ...],
    ListSpec(
        BytesSpec(min_length=1, max_length=MAX_CERTIFIED_ORDER_SIZE),
        MAX_CERTIFICATES_PER_MESSAGE,
    ),
]
HistoryCertificates = Annotated[
    tuple[bytes, ...],
    ListSpec(BytesSpec(min_length=1, max_length=MAX_CERTIFIED_ORDER_SIZE), MAX_HISTORY),
]
OrderKeyBytes = Annotated[bytes, BytesSpec.exact(ORDER_KEY_SIZE)]


def order_key(account: bytes, sequence: int) -> bytes:
    """The listing key of the order at (account, sequence)."""
    return bytes(account) + sequence.to_bytes(8, "big")


class SubmitOutcome(enum.Enum):
    """What a peer did with a submitted certificate (:class:`walrus_p2p.core.ledger.Outcome`).
    Values are wire codes; never renumber them."""

    APPLIED = 0
    WAITING = 1
    DUPLICATE = 2
    VOID = 3


@register(112)
@dataclass(frozen=True, slots=True)
class ApproveOrderRequest(Message):
    """Ask a committee member to approve an order under its signing rule. The reply is an
    :class:`ApproveOrderReply`, or an error reply whose reason is the refusal's
    (:data:`walrus_p2p.errors.ORDER_REFUSAL_REASONS`)."""

    order: SignedOrder


@register(113)
@dataclass(frozen=True, slots=True)
class ApproveOrderReply(Message):
    """The member's signature over :func:`approval_bytes` (network, ``epoch``, order id); the
    member wrote its lock to durable storage before sending it."""

    epoch: EpochNumber
    signature: SignatureBytes


@register(114)
@dataclass(frozen=True, slots=True)
class SubmitCertificateRequest(Message):
    """Give a peer a certified order: it verifies, stores, merges and announces it."""

    certificate: CertifiedOrder


@register(115)
@dataclass(frozen=True, slots=True)
class SubmitCertificateReply(Message):
    outcome: SubmitOutcome


@register(116)
@dataclass(frozen=True, slots=True)
class GetAccountRequest(Message):
    """An account as the peer's ledger sees it, with up to ``history`` recent certificates of
    each kind (0: none)."""

    account: AccountKey
    history: Annotated[int, wire.IntSpec(0, MAX_HISTORY)]


@register(117)
@dataclass(frozen=True, slots=True)
class GetAccountReply(Message):
    """``orders``: certificates of the account's own orders, newest (highest sequence) first;
    the first is the one at ``next_sequence - 1``, which proves ``next_sequence`` to an asker
    holding the committee. ``received``: certificates of transfers to the account, newest
    arrival here first. ``pending``: the id of the order this member approved at
    ``next_sequence`` and whose certificate it has not seen (a send under way, or an earlier
    one left unfinished)."""

    epoch: EpochNumber
    balance: Amount
    next_sequence: SequenceNumber
    pending: Hash32 | None
    orders: HistoryCertificates
    received: HistoryCertificates


@register(118)
@dataclass(frozen=True, slots=True)
class ListCertificatesRequest(Message):
    """Certified orders whose key (:func:`order_key`) is at least ``start`` (None: from the
    first), in key order, at most ``limit`` (the server may send fewer)."""

    start: OrderKeyBytes | None
    limit: Annotated[int, wire.IntSpec(1, MAX_CERTIFICATES_PER_MESSAGE)]


@register(119)
@dataclass(frozen=True, slots=True)
class ListCertificatesReply(Message):
    """One page; ``next_start`` is the ``start`` of the next page, None when the listing ended."""

    certificates: EncodedCertificates
    next_start: OrderKeyBytes | None


@register(120)
@dataclass(frozen=True, slots=True)
class CertificatesBatch(Message):
    """News on the certified-orders gossip topic: verified by every receiver before it is
    forwarded (the topic validator) and before it is merged."""

    certificates: EncodedCertificates


MAX_STAKES_PER_REPLY = 64
"""Stakes of one account an economy query returns (the oldest first when there are more)."""
MAX_RESOURCES_PER_REPLY = 64
"""Storage resources of one account an economy query returns (free ones first)."""
MAX_POOLS_PER_REPLY = 128
"""Reward pools an economy query returns (the nearest epochs; the ring is at most the maximum
lifetime long)."""


class StakeStateCode(enum.Enum):
    PENDING = 1
    ACTIVE = 2
    WITHDRAWABLE = 3


@record
@dataclass(frozen=True, slots=True)
class StakeEntry:
    """One stake as a member's ledger holds it (docs/economics.md, "Staking")."""

    stake_id: Hash32
    peer: PublicKeyBytes
    principal: Amount
    rewards: Amount
    state: StakeStateCode
    active_from: EpochNumber | None
    active_until: EpochNumber | None
    request: Hash32 | None


@record
@dataclass(frozen=True, slots=True)
class PoolEntry:
    epoch: EpochNumber
    amount: Amount


@record
@dataclass(frozen=True, slots=True)
class ResourceEntry:
    """One storage resource as a member's ledger holds it (docs/economics.md, "Storage
    resources"): ``blob_id`` is the blob attached to it, None when it is free."""

    resource_id: Hash32
    units: U64
    start_epoch: EpochNumber
    end_epoch: EpochNumber
    blob_id: BlobIdBytes | None
    deletable: bool
    shared: bool


@register(121)
@dataclass(frozen=True, slots=True)
class GetEconomyRequest(Message):
    """The economy as the peer's ledger sees it; with ``account``, also that account's stakes
    and storage resources."""

    account: AccountKey | None


@register(122)
@dataclass(frozen=True, slots=True)
class GetEconomyReply(Message):
    """``settled_epoch``: the last settlement applied (-1 encoded as None: none yet); the prices
    are those in force in ``epoch``; ``stake_by_peer`` counts for the committee of ``epoch``."""

    epoch: EpochNumber
    settled_epoch: EpochNumber | None
    storage_price: Amount
    write_price: Amount
    total_stake: Amount
    reward_fund: Amount
    burned: Amount
    pools: Annotated[tuple[PoolEntry, ...], ListSpec(record_spec(PoolEntry), MAX_POOLS_PER_REPLY)]
    stakes: Annotated[
        tuple[StakeEntry, ...], ListSpec(record_spec(StakeEntry), MAX_STAKES_PER_REPLY)
    ]
    resources: Annotated[
        tuple[ResourceEntry, ...], ListSpec(record_spec(ResourceEntry), MAX_RESOURCES_PER_REPLY)
    ] = ()


MAX_SHARED_PER_REPLY = 16
"""Shared blobs one query returns (one blob id may have several, one per owner)."""


@record
@dataclass(frozen=True, slots=True)
class SharedBlobEntry:
    """A shared blob as a member's ledger holds it: its resource's owner, blob, size and end,
    its funds, and the extension requests waiting for the next settlement."""

    shared_id: Hash32
    blob_id: BlobIdBytes
    owner: PublicKeyBytes
    units: U64
    end_epoch: EpochNumber
    funds: Amount
    pending_requests: U16


@register(126)
@dataclass(frozen=True, slots=True)
class GetSharedBlobRequest(Message):
    """The shared blob ``key`` names: a shared blob id, or a blob id (every shared blob of it)."""

    key: Hash32


@register(127)
@dataclass(frozen=True, slots=True)
class GetSharedBlobReply(Message):
    epoch: EpochNumber
    storage_price: Amount
    shared: Annotated[
        tuple[SharedBlobEntry, ...], ListSpec(record_spec(SharedBlobEntry), MAX_SHARED_PER_REPLY)
    ]


# --------------------------------------------------------------------------------------------
# The lock hand-over at an epoch change (docs/economics.md, "Double spending"): type ids 168-175.

MAX_LOCKS_PER_MESSAGE = 64
"""Locked orders in one hand-over page (each at most ~600 bytes: ~38 KiB)."""
MAX_DECIDED_PER_MESSAGE = 512
"""Decided slots in one hand-over page (77 bytes each: ~39 KiB)."""
MAX_SIGNED_ORDER_SIZE = 1024
"""A signed order's encoding: a body of at most 512 bytes, a signature and CBOR heads."""

EncodedOrders = Annotated[
    tuple[bytes, ...],
    ListSpec(BytesSpec(min_length=1, max_length=MAX_SIGNED_ORDER_SIZE), MAX_LOCKS_PER_MESSAGE),
]


@record
@dataclass(frozen=True, slots=True)
class DecidedSlot:
    """A locked slot whose certified order the reporter has applied: the asker that has not
    fetches the certificate (``ListCertificatesRequest``) instead of getting the order here."""

    account: PublicKeyBytes
    sequence: U64
    order_id: Hash32


@register(168)
@dataclass(frozen=True, slots=True)
class GetLocksRequest(Message):
    """Ask a member of committee ``epoch`` for the orders it approved or adopted in epochs
    ``epoch - 1`` and ``epoch``, from key ``start`` (:func:`order_key`; None: the first) on.
    It answers only once it has left ``epoch`` (its locks of it are frozen), else refuses with
    ``HANDOVER_NOT_READY``."""

    epoch: EpochNumber
    start: OrderKeyBytes | None


@register(169)
@dataclass(frozen=True, slots=True)
class GetLocksReply(Message):
    """One page of the report, in slot order: the owner-signed orders of slots the reporter has
    not decided (encoded, each checked on its own by the asker), and the slots it has decided
    (their certificates are fetched by an asker that has not); ``next_start`` is the next
    page's ``start``, None when the report is complete."""

    epoch: EpochNumber
    orders: EncodedOrders
    decided: Annotated[
        tuple[DecidedSlot, ...], ListSpec(record_spec(DecidedSlot), MAX_DECIDED_PER_MESSAGE)
    ]
    next_start: OrderKeyBytes | None


def decode_certificate(encoded: bytes) -> CertifiedOrder:
    """One certificate from its canonical encoding; ``WireError`` if it is not one."""
    certificate = wire.decode(encoded, CertifiedOrder)
    assert isinstance(certificate, CertifiedOrder)
    return certificate


# --------------------------------------------------------------------------------------------
# Ids, signing, verification


def order_id(order: SignedOrder) -> bytes:
    """The 32-byte id of an order: a keyed hash of its body's canonical encoding."""
    return keyed_hash(ORDER_ID_KEY, order.body)


def settlement_id(settlement: EpochSettlement) -> bytes:
    """The 32-byte id of a settlement, for the epoch value to carry."""
    return keyed_hash(SETTLEMENT_ID_KEY, signing_bytes(settlement))


def split_resource_ids(order: bytes) -> tuple[bytes, bytes]:
    """The ids of the two resources a split order (id ``order``) makes."""
    first = keyed_hash(RESOURCE_ID_KEY, order + b"\x00")
    return first, keyed_hash(RESOURCE_ID_KEY, order + b"\x01")


def sign_order(owner: identity.Identity, body: OrderBody) -> SignedOrder:
    """The owner's signed order; the body must name the owner's account."""
    if body.account != owner.public_key.raw:
        raise ValueError("the order names another account than the signer's")
    encoded = wire.encode(body)
    return SignedOrder(encoded, owner.sign(ORDER_CONTEXT, encoded))


def decode_order_body(order: SignedOrder) -> OrderBody:
    """The body of an order; ``OrderRefusedError(ORDER_MALFORMED)`` if it does not decode."""
    try:
        body = wire.decode(order.body, ORDER_BODY_TYPES)
    except WireError as error:
        raise OrderRefusedError("ORDER_MALFORMED", f"order body: {error}") from error
    assert isinstance(body, ORDER_BODY_TYPES)
    return body


def verify_order(order: SignedOrder, network_id: bytes) -> OrderBody:
    """Decode the body and check the network and the owner's signature.

    Refusals: ``ORDER_MALFORMED``, ``ORDER_WRONG_NETWORK``, ``ORDER_FORGED``."""
    body = decode_order_body(order)
    if body.network_id != network_id:
        raise OrderRefusedError("ORDER_WRONG_NETWORK", "the order is for another network")
    key = identity.PublicKey(body.account)
    if not key.is_valid_signature(ORDER_CONTEXT, order.body, order.signature):
        raise OrderRefusedError("ORDER_FORGED", "the owner's signature does not verify")
    return body


def approval_bytes(network_id: bytes, epoch: int, order: bytes) -> bytes:
    """The bytes a member signs to approve the order with id ``order`` in ``epoch``."""
    return signing_bytes(OrderApprovalBody(network_id, Epoch(epoch), order))


def approve(member: identity.Identity, network_id: bytes, epoch: int, order: bytes) -> Signature:
    """A member's approval (call it only through the signing rule, ``OrderSigner``)."""
    signature = member.sign(ORDER_APPROVAL_CONTEXT, approval_bytes(network_id, epoch, order))
    return Signature(member.peer_id, signature)


def certify(order: SignedOrder, approvals: list[Signature], epoch: int) -> CertifiedOrder:
    """A certificate from approvals collected from the committee of ``epoch`` (sorted;
    verified by the receivers)."""
    return CertifiedOrder(order, tuple(sorted(approvals)), Epoch(epoch))


CommitteeOf: TypeAlias = Callable[[Epoch], Committee | None]


def verify_certified_order(
    certificate: CertifiedOrder, network_id: bytes, committee_of: CommitteeOf
) -> OrderBody:
    """Check the order (as :func:`verify_order`) and that members of the committee of the
    certificate's epoch — the order's own or the next one — holding a quorum of its shards
    approved it; each approval must verify.

    Refusals: the order's own, then ``CERTIFICATE_INVALID``.
    """
    body = verify_order(certificate.order, network_id)
    epoch = int(certificate.epoch)
    if epoch not in (body.epoch, body.epoch + 1):
        raise OrderRefusedError(
            "CERTIFICATE_INVALID",
            f"approved in epoch {epoch}: an order of epoch {body.epoch} is approved in it or "
            "in the next",
        )
    committee = committee_of(Epoch(epoch))
    if committee is None:
        raise OrderRefusedError("CERTIFICATE_INVALID", f"no committee known for epoch {epoch}")
    message = approval_bytes(network_id, epoch, order_id(certificate.order))
    try:
        verify_weighted_signatures(
            committee,
            certificate.approvals,
            ORDER_APPROVAL_CONTEXT,
            lambda signer: message,
            need=is_quorum,
            what="order certificate",
        )
    except VerificationError as error:
        raise OrderRefusedError("CERTIFICATE_INVALID", error.message) from error
    return body


def verify_conflict_evidence(evidence: ConflictEvidence, network_id: bytes) -> tuple[bytes, int]:
    """Check that one key approved two different orders of one (account, sequence); returns the
    (account, sequence). ``VerificationError`` if it is not such evidence.

    The orders' own signatures are checked too, so evidence cannot be made from orders the
    account's owner never signed."""
    try:
        first = verify_order(evidence.first, network_id)
        second = verify_order(evidence.second, network_id)
    except OrderRefusedError as error:
        raise VerificationError(f"conflict evidence: {error.message}") from error
    if (first.account, first.sequence) != (second.account, second.sequence):
        raise VerificationError("conflict evidence: the orders are for different sequence slots")
    first_id, second_id = order_id(evidence.first), order_id(evidence.second)
    if first_id == second_id:
        raise VerificationError("conflict evidence: the two orders are the same order")
    key = identity.PublicKey(evidence.public_key)
    for order, signature, epoch in (
        (first_id, evidence.first_approval, evidence.first_epoch),
        (second_id, evidence.second_approval, evidence.second_epoch),
    ):
        message = approval_bytes(network_id, epoch, order)
        if not key.is_valid_signature(ORDER_APPROVAL_CONTEXT, message, signature):
            raise VerificationError("conflict evidence: an approval does not verify")
    return first.account, first.sequence


def sign_parameter_vote(
    member: identity.Identity,
    *,
    network_id: bytes,
    epoch: int,
    storage_price: int,
    write_price: int,
    capacity: int,
    commission_bps: int,
) -> ParameterVote:
    """A storage peer's signed vote on prices, capacity and its commission."""
    if not 0 <= commission_bps <= MAX_COMMISSION_BPS:
        raise ValueError(f"commission must be 0..{MAX_COMMISSION_BPS} basis points")
    body = ParameterVoteBody(
        network_id,
        member.public_key.raw,
        Epoch(epoch),
        storage_price,
        write_price,
        capacity,
        commission_bps,
    )
    return ParameterVote(body, member.sign(PARAMETER_VOTE_CONTEXT, signing_bytes(body)))


def verify_parameter_vote(vote: ParameterVote, network_id: bytes) -> VoteEntry:
    """Check a vote's network, signature and commission range; its settlement entry."""
    if vote.body.network_id != network_id:
        raise VerificationError("parameter vote for another network")
    if vote.body.commission_bps > MAX_COMMISSION_BPS:
        raise VerificationError("parameter vote: commission above 10 000 basis points")
    key = identity.PublicKey(vote.body.public_key)
    key.verify(PARAMETER_VOTE_CONTEXT, signing_bytes(vote.body), vote.signature)
    return VoteEntry(
        key.peer_id,
        vote.body.storage_price,
        vote.body.write_price,
        vote.body.capacity,
        vote.body.commission_bps,
    )


def vote_body_of(
    entry: VoteEntry, network_id: bytes, public_key: bytes, epoch: int
) -> ParameterVoteBody:
    """The signed body behind a settlement's vote entry (the voter's key from the committee)."""
    return ParameterVoteBody(
        network_id=network_id,
        public_key=public_key,
        epoch=Epoch(epoch),
        storage_price=entry.storage_price,
        write_price=entry.write_price,
        capacity=entry.capacity,
        commission_bps=entry.commission_bps,
    )


def verify_settlement_votes(settlement: EpochSettlement, committee: Committee) -> None:
    """Every vote entry is signed by its voter, a member of ``committee``, for the epoch it
    names (at most the settled one); ``VerificationError`` otherwise."""
    votes = settlement.votes
    if not len(settlement.vote_signatures) == len(settlement.vote_epochs) == len(votes):
        raise VerificationError("settlement: not one signature and epoch per vote")
    for entry, signature, epoch in zip(
        votes, settlement.vote_signatures, settlement.vote_epochs, strict=True
    ):
        if entry.peer_id not in committee:
            raise VerificationError(f"vote of {entry.peer_id}, not a member of the committee")
        if epoch > settlement.epoch:
            raise VerificationError(f"vote of {entry.peer_id} cast in a later epoch ({epoch})")
        key = identity.PublicKey(committee.member(entry.peer_id).public_key)
        body = vote_body_of(entry, settlement.network_id, key.raw, epoch)
        key.verify(PARAMETER_VOTE_CONTEXT, signing_bytes(body), signature)


def check_settlement_form(settlement: EpochSettlement, network_id: bytes) -> None:
    """What a settlement must satisfy on its own: the network, sorted lists without repeats,
    commissions in range. ``OrderRefusedError(SETTLEMENT_INVALID)`` otherwise."""

    def refuse(why: str) -> OrderRefusedError:
        return OrderRefusedError("SETTLEMENT_INVALID", f"settlement of {settlement.epoch}: {why}")

    if settlement.network_id != network_id:
        raise refuse("for another network")
    for name in ("stake_activations", "withdrawal_requests", "slashed", "certified"):
        items: tuple[bytes | str, ...] = getattr(settlement, name) or ()
        if any(not a < b for a, b in itertools.pairwise(items)):  # type: ignore[operator]
            raise refuse(f"{name} not sorted without repeats")
    extensions = [entry.order_id for entry in settlement.shared_extensions]
    if any(not a < b for a, b in itertools.pairwise(extensions)):
        raise refuse("shared_extensions not sorted by order id without repeats")
    if set(settlement.stake_activations) & set(settlement.withdrawal_requests):
        raise refuse("an order is listed both as activation and as withdrawal request")
    if any(vote.commission_bps > MAX_COMMISSION_BPS for vote in settlement.votes):
        raise refuse("a commission above 10 000 basis points")
    for name in ("vote_signatures", "vote_epochs"):
        proofs = getattr(settlement, name)
        if proofs and len(proofs) != len(settlement.votes):
            raise refuse(f"{name}: not one per vote")
    if any(epoch > settlement.epoch for epoch in settlement.vote_epochs):
        raise refuse("a vote cast after the settled epoch")
