"""The signed records of the system log, their verification, and how a blob's records merge.

Owner: network state without a chain (docs/design.md §5). Every fact the peers keep together is
one of these records, signed so that anybody holding the genesis file can check it:

- :class:`Candidacy` -- a peer offers to serve (signed by the candidate);
- :class:`EpochRecord` -- the committee of epoch e+1 (:class:`EpochValue`) with the precommits of
  a quorum of epoch e's shard weight (:class:`EpochCertificate`, produced by
  :mod:`walrus_p2p.core.consensus`);
- blob records: :class:`BlobRegister`, :class:`BlobExtend`, :class:`BlobDelete` and
  :class:`BlobAttribute` (owner-signed),
  :class:`BlobCertificate` (storage confirmations of a quorum) and :class:`BlobInvalid`
  (attestations of at least f+1 shard weight).

Every record is a registered :mod:`~walrus_p2p.core.wire` message (type ids 32..46, 53..54), so
it has one canonical encoding and a schema-checked decoder. A signature covers
``wire.signing_bytes`` of an unsigned *body* message (whose type id and network id are in the
signed bytes) under a per-purpose :mod:`~walrus_p2p.core.identity` context: nothing signed for
one purpose or one network verifies as another.

A blob's status is a :class:`BlobState`, a join-semilattice: :meth:`BlobState.join` is commutative,
associative and idempotent, so peers that receive the same records in any order, any number of
times, reach the same state. Records are verified before they are merged
(:func:`verify_blob_record`, :meth:`BlobState.with_verified`); the merge itself trusts its input.

Quorums always count shards held in the committee of the epoch a record names, never peers.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, TypeAlias

from walrus_p2p.core import identity
from walrus_p2p.core.committee import Committee, Member, is_quorum, is_validity
from walrus_p2p.core.merkle import derive_domain_key, keyed_hash
from walrus_p2p.core.wire import (
    MAX_SHARDS,
    U64,
    BlobIdBytes,
    BytesSpec,
    Hash32,
    IntSpec,
    ListSpec,
    Message,
    NetworkIdBytes,
    PublicKeyBytes,
    SignatureBytes,
    SignedStorageConfirmation,
    StorageConfirmation,
    TextSpec,
    record,
    record_spec,
    register,
    signing_bytes,
)
from walrus_p2p.errors import ConfigError, VerificationError, WireError
from walrus_p2p.types import BlobId, Epoch, PeerId, short_id

__all__ = [
    "BLOB_ATTRIBUTE_CONTEXT",
    "BLOB_DELETE_CONTEXT",
    "BLOB_EXTEND_CONTEXT",
    "BLOB_RECORD_TYPES",
    "BLOB_REGISTER_CONTEXT",
    "CANDIDACY_CONTEXT",
    "CONFIRMATION_CONTEXT",
    "EPOCH_VALUE_KEY",
    "INVALID_BLOB_CONTEXT",
    "MAX_ADDRESSES",
    "MAX_ADDRESS_LENGTH",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_LENGTH",
    "MAX_ATTRIBUTE_VALUE_LENGTH",
    "MAX_PEER_ID_LENGTH",
    "MAX_RECORD_EPOCH",
    "PRECOMMIT_CONTEXT",
    "PREVOTE_CONTEXT",
    "PROPOSAL_CONTEXT",
    "Addresses",
    "AttributePair",
    "BlobAttribute",
    "BlobAttributeBody",
    "BlobCertificate",
    "BlobDelete",
    "BlobDeleteBody",
    "BlobExtend",
    "BlobExtendBody",
    "BlobInvalid",
    "BlobRecord",
    "BlobRegister",
    "BlobRegisterBody",
    "BlobState",
    "Candidacy",
    "CandidacyBody",
    "CommitteeLookup",
    "EpochCertificate",
    "EpochNumber",
    "EpochRecord",
    "EpochValue",
    "InvalidBlobBody",
    "MemberEntry",
    "PeerIdText",
    "ProposalBody",
    "Registration",
    "RegistrationKey",
    "Signature",
    "Signatures",
    "VoteBody",
    "VoteKind",
    "confirmation_body",
    "confirmation_signature",
    "merge_records",
    "newer_attribute",
    "newer_candidacy",
    "sign_attribute",
    "sign_confirmation",
    "sign_delete",
    "sign_extend",
    "sign_invalid_blob",
    "sign_register",
    "verify_blob_record",
    "verify_epoch_chain",
    "verify_weighted_signatures",
    "vote_context",
]

MAX_ADDRESSES = 8
MAX_ADDRESS_LENGTH = 200
MAX_PEER_ID_LENGTH = 64

# Signature contexts: one per purpose (identity prefixes and length-delimits them).
CANDIDACY_CONTEXT = "walrus-p2p/candidacy/v1"
PROPOSAL_CONTEXT = "walrus-p2p/epoch-proposal/v1"
PREVOTE_CONTEXT = "walrus-p2p/epoch-prevote/v1"
PRECOMMIT_CONTEXT = "walrus-p2p/epoch-precommit/v1"
BLOB_REGISTER_CONTEXT = "walrus-p2p/blob-register/v1"
BLOB_EXTEND_CONTEXT = "walrus-p2p/blob-extend/v1"
BLOB_DELETE_CONTEXT = "walrus-p2p/blob-delete/v1"
BLOB_ATTRIBUTE_CONTEXT = "walrus-p2p/blob-attribute/v1"
CONFIRMATION_CONTEXT = "walrus-p2p/storage-confirmation/v1"
INVALID_BLOB_CONTEXT = "walrus-p2p/invalid-blob/v1"

EPOCH_VALUE_KEY = derive_domain_key("epoch value")
"""Blake3 key of an epoch value id (what proposals and votes sign instead of the committee)."""

PeerIdText = Annotated[PeerId, TextSpec(MAX_PEER_ID_LENGTH, r"[1-9A-HJ-NP-Za-km-z]+")]  # base58btc
Addresses = Annotated[tuple[str, ...], ListSpec(TextSpec(MAX_ADDRESS_LENGTH), MAX_ADDRESSES)]
Round = Annotated[int, IntSpec(0, (1 << 32) - 1)]
ValidRound = Annotated[int, IntSpec(-1, (1 << 32) - 1)]
ShardOwners = Annotated[
    tuple[int, ...], ListSpec(IntSpec(0, MAX_SHARDS - 1), MAX_SHARDS, min_length=4)
]
EpochNumber = Annotated[Epoch, IntSpec(0, (1 << 64) - 1)]
Size = Annotated[int, IntSpec(0, (1 << 64) - 1)]
"""A blob's unencoded length; 0 is a valid (empty) blob, as in the metadata."""
Signature64 = Annotated[bytes, BytesSpec.exact(identity.SIGNATURE_LENGTH)]


# --------------------------------------------------------------------------------------------
# Signatures of committee members


@record
@dataclass(frozen=True, slots=True, order=True)
class Signature:
    """One committee member's signature, named by its peer id (the key comes from the committee)."""

    signer: PeerIdText
    signature: Signature64


Signatures = Annotated[
    tuple[Signature, ...],
    ListSpec(record_spec(Signature), MAX_SHARDS, min_length=1, strictly_increasing=True),
]
"""Sorted without repeats: a decoder accepts only the one canonical order."""


def _sorted_signatures(signatures: Iterable[Signature]) -> tuple[Signature, ...]:
    return tuple(sorted(signatures))


def _is_member_signature(
    committee: Committee, signer: PeerId, context: str, message: bytes, signature: bytes
) -> bool:
    if signer not in committee:
        return False
    public_key = identity.PublicKey(committee.member(signer).public_key)
    return public_key.is_valid_signature(context, message, signature)


def verify_weighted_signatures(
    committee: Committee,
    signatures: Sequence[Signature],
    context: str,
    message: Callable[[PeerId], bytes],
    *,
    need: Callable[[int, int], bool],
    what: str,
) -> int:
    """Check that distinct members signed and that their shard weight passes ``need``.

    ``message(signer)`` gives the bytes that signer must have signed. ``need(weight, n)`` is
    :func:`committee.is_quorum` or :func:`committee.is_validity`. A repeated signer is rejected
    (rather than counted once) so a record has one canonical form, and every signature must
    verify: one bad signature makes the whole record bad. Returns the shard weight.
    """
    seen: set[PeerId] = set()
    for item in signatures:
        if item.signer in seen:
            raise VerificationError(f"{what}: signer {item.signer} appears twice")
        seen.add(item.signer)
        if item.signer not in committee or not _is_member_signature(
            committee, item.signer, context, message(item.signer), item.signature
        ):
            raise VerificationError(
                f"{what}: bad signature from {item.signer} for epoch {committee.epoch}"
            )
    weight = committee.shard_weight(seen)
    if not need(weight, committee.n_shards):
        raise VerificationError(
            f"{what}: signers hold {weight} of {committee.n_shards} shards, not enough"
        )
    return weight


def _owner_key(raw: bytes) -> identity.PublicKey:
    try:
        return identity.PublicKey(raw)
    except (ValueError, TypeError) as error:
        raise VerificationError("malformed public key") from error


def _check_network(record_network: bytes, network_id: bytes, what: str) -> None:
    if record_network != network_id:
        raise VerificationError(f"{what} is for another network")


# --------------------------------------------------------------------------------------------
# Candidacy


@register(32)
@dataclass(frozen=True, slots=True)
class CandidacyBody(Message):
    """What a candidate signs: it offers to serve from ``epoch`` on.

    ``weight`` feeds the D'Hondt assignment and ``capacity`` (bytes) bounds what it will store.
    """

    network_id: NetworkIdBytes
    epoch: EpochNumber
    public_key: PublicKeyBytes
    addresses: Addresses
    weight: U64
    capacity: U64


@register(33)
@dataclass(frozen=True, slots=True)
class Candidacy(Message):
    """A candidacy signed by the candidate's own key. Of two candidacies of one peer the later
    epoch wins (ties: larger encoding), see :func:`newer_candidacy`."""

    body: CandidacyBody
    signature: SignatureBytes

    @property
    def peer_id(self) -> PeerId:
        return identity.peer_id_from_public_key(self.body.public_key)

    @classmethod
    def create(
        cls,
        signer: identity.Identity,
        *,
        network_id: bytes,
        epoch: int,
        addresses: Sequence[str],
        weight: int,
        capacity: int,
    ) -> Candidacy:
        body = CandidacyBody(
            network_id, Epoch(epoch), signer.public_key.raw, tuple(addresses), weight, capacity
        )
        return cls(body, signer.sign(CANDIDACY_CONTEXT, signing_bytes(body)))

    def verify(self, network_id: bytes) -> None:
        _check_network(self.body.network_id, network_id, "candidacy")
        message = _signing_bytes(self.body)
        _owner_key(self.body.public_key).verify(CANDIDACY_CONTEXT, message, self.signature)

    def member(self) -> Member:
        """The committee member this candidacy would become."""
        return Member(
            peer_id=self.peer_id,
            public_key=self.body.public_key,
            weight=self.body.weight,
            addresses=self.body.addresses,
        )


def newer_candidacy(first: Candidacy, second: Candidacy) -> Candidacy:
    """The candidacy that wins for one peer: later epoch, then larger canonical bytes."""
    if first.body.public_key != second.body.public_key:
        raise ValueError("candidacies of different peers do not merge")
    key_first = (first.body.epoch, signing_bytes(first))
    key_second = (second.body.epoch, signing_bytes(second))
    return first if key_first >= key_second else second


def _signing_bytes(body: Message) -> bytes:
    """``wire.signing_bytes``, with a schema violation reported as a verification failure."""
    try:
        return signing_bytes(body)
    except WireError as error:
        raise VerificationError(f"malformed record: {error}") from error


# --------------------------------------------------------------------------------------------
# Epoch records


@record
@dataclass(frozen=True, slots=True)
class MemberEntry:
    """A committee member as carried in an epoch value."""

    peer_id: PeerIdText
    public_key: PublicKeyBytes
    weight: U64
    addresses: Addresses


MemberEntries = Annotated[
    tuple[MemberEntry, ...], ListSpec(record_spec(MemberEntry), MAX_SHARDS, min_length=1)
]


MAX_SETTLEMENT_SIZE = 96 * 1024
"""The encoded settlement an epoch value carries: all 256 members' votes and names twice, plus
the stake moves a proposer lists (at most ``MAX_SETTLEMENT_MOVES`` of
:mod:`walrus_p2p.core.settlements`), stay under this."""
SettlementBytes = Annotated[bytes, BytesSpec(min_length=1, max_length=MAX_SETTLEMENT_SIZE)]


@register(34)
@dataclass(frozen=True, slots=True)
class EpochValue(Message):
    """What the committee of epoch e agrees on: the committee of epoch e+1, its start time and,
    on a network with an economy, the settlement of epoch e.

    Members are sorted by peer id; ``shard_owners[s]`` is the index in ``members`` of the peer
    holding shard s. ``start_time`` is in unix seconds, chosen by the proposer from its clock;
    honest peers check it is plausible before they vote for it. ``settlement`` is the canonical
    encoding of the ``EpochSettlement`` of epoch e (docs/economics.md, "What is agreed where"),
    None on a network without an economy; it is carried as bytes so that this module does not
    depend on the economy's messages (:mod:`walrus_p2p.core.settlements` reads it). Build one with
    :meth:`from_committee`; :attr:`committee` checks and rebuilds the committee.
    """

    network_id: NetworkIdBytes
    epoch: EpochNumber
    start_time: U64
    members: MemberEntries
    shard_owners: ShardOwners
    settlement: SettlementBytes | None = None

    @classmethod
    def from_committee(
        cls,
        network_id: bytes,
        committee: Committee,
        start_time: int,
        settlement: bytes | None = None,
    ) -> EpochValue:
        index = {member.peer_id: position for position, member in enumerate(committee.members)}
        return cls(
            network_id=network_id,
            epoch=committee.epoch,
            start_time=start_time,
            members=tuple(
                MemberEntry(member.peer_id, member.public_key, member.weight, member.addresses)
                for member in committee.members
            ),
            shard_owners=tuple(index[peer_id] for peer_id in committee.shard_map),
            settlement=settlement,
        )

    @property
    def committee(self) -> Committee:
        """The committee this value describes; ``VerificationError`` if it is not a valid one."""
        return _committee_of(self)

    def value_id(self) -> bytes:
        """The 32-byte id that proposals and votes sign in place of the whole value."""
        return _value_id(self)


@functools.lru_cache(maxsize=64)
def _value_id(value: EpochValue) -> bytes:
    return keyed_hash(EPOCH_VALUE_KEY, _signing_bytes(value))


@functools.lru_cache(maxsize=64)
def _committee_of(value: EpochValue) -> Committee:
    peer_ids = [entry.peer_id for entry in value.members]
    if any(a >= b for a, b in itertools.pairwise(peer_ids)):
        raise VerificationError(f"epoch value {value.epoch}: members not sorted by peer id")
    if any(owner >= len(value.members) for owner in value.shard_owners):
        raise VerificationError(f"epoch value {value.epoch}: shard owner out of range")
    try:
        members = tuple(
            Member(entry.peer_id, entry.public_key, entry.weight, entry.addresses)
            for entry in value.members
        )
        return Committee(
            epoch=value.epoch,
            members=members,
            shard_map=tuple(peer_ids[owner] for owner in value.shard_owners),
        )
    except (ConfigError, ValueError) as error:
        raise VerificationError(f"epoch value {value.epoch}: {error}") from error


class VoteKind(enum.Enum):
    PREVOTE = 1
    PRECOMMIT = 2


@register(35)
@dataclass(frozen=True, slots=True)
class VoteBody(Message):
    """What a voter signs: a prevote or precommit in one round for a value id (None: nil).

    ``epoch`` is the epoch being decided (e+1). A certificate is precommits of one round for one
    value id, so the same signed bytes serve consensus and later verification of the record.
    """

    kind: VoteKind
    network_id: NetworkIdBytes
    epoch: EpochNumber
    round: Round
    value_id: Hash32 | None


@register(36)
@dataclass(frozen=True, slots=True)
class ProposalBody(Message):
    """What a proposer signs: value id proposed in ``round``, ``valid_round`` its polka or -1."""

    network_id: NetworkIdBytes
    epoch: EpochNumber
    round: Round
    value_id: Hash32
    valid_round: ValidRound


def vote_context(kind: VoteKind) -> str:
    return PREVOTE_CONTEXT if kind is VoteKind.PREVOTE else PRECOMMIT_CONTEXT


@record
@dataclass(frozen=True, slots=True)
class EpochCertificate:
    """Precommits of one consensus round for one value, from a quorum of the previous committee.

    Signatures are sorted by signer so that a certificate has one canonical encoding.
    """

    round: Round
    precommits: Signatures

    def __post_init__(self) -> None:
        object.__setattr__(self, "precommits", _sorted_signatures(self.precommits))


@register(37)
@dataclass(frozen=True, slots=True)
class EpochRecord(Message):
    """The committee of epoch e+1, certified by a quorum of epoch e's shard weight."""

    value: EpochValue
    certificate: EpochCertificate

    @property
    def epoch(self) -> Epoch:
        return self.value.epoch

    @property
    def committee(self) -> Committee:
        return self.value.committee

    def verify(self, previous: Committee, network_id: bytes) -> None:
        """Check this record follows ``previous``: next epoch, same n, a quorum of precommits."""
        what = f"epoch record {self.epoch}"
        _check_network(self.value.network_id, network_id, what)
        if self.epoch != previous.epoch + 1:
            raise VerificationError(f"{what} does not follow epoch {previous.epoch}")
        if self.committee.n_shards != previous.n_shards:
            raise VerificationError(f"{what} changes the number of shards")
        body = VoteBody(
            VoteKind.PRECOMMIT,
            network_id,
            self.epoch,
            self.certificate.round,
            self.value.value_id(),
        )
        message = _signing_bytes(body)
        verify_weighted_signatures(
            previous,
            self.certificate.precommits,
            PRECOMMIT_CONTEXT,
            lambda signer: message,
            need=is_quorum,
            what=what,
        )


def verify_epoch_chain(
    genesis: Committee,
    records: Sequence[EpochRecord],
    network_id: bytes,
    *,
    genesis_time: int | None = None,
) -> Committee:
    """Verify epoch records in order from the genesis committee; return the latest committee.

    Each record must be certified by a quorum of the committee before it, and start later than
    the record before it (and than ``genesis_time``, unix seconds, if given). Any forged,
    tampered or out-of-order record raises ``VerificationError``: the chain is all or nothing.
    """
    current = genesis
    last_start = genesis_time
    for record_ in records:
        record_.verify(current, network_id)
        if last_start is not None and record_.value.start_time <= last_start:
            raise VerificationError(f"epoch record {record_.epoch} does not start later")
        last_start = record_.value.start_time
        current = record_.committee
    return current


# --------------------------------------------------------------------------------------------
# Blob records signed by their owner


@register(38)
@dataclass(frozen=True, slots=True)
class BlobRegisterBody(Message):
    """An owner registers a blob for epochs ``start_epoch`` .. ``end_epoch`` - 1.

    One registration is named by (owner, start epoch); extends and deletes name it the same way.
    A permanent registration (``deletable`` false) cannot be deleted.
    """

    network_id: NetworkIdBytes
    blob_id: BlobIdBytes
    owner: PublicKeyBytes
    size: Size
    start_epoch: EpochNumber
    end_epoch: EpochNumber
    deletable: bool


@register(39)
@dataclass(frozen=True, slots=True)
class BlobRegister(Message):
    body: BlobRegisterBody
    signature: SignatureBytes

    @property
    def blob_id(self) -> BlobId:
        return self.body.blob_id

    def verify(self, network_id: bytes) -> None:
        _check_network(self.body.network_id, network_id, "blob register")
        if self.body.end_epoch <= self.body.start_epoch:
            raise VerificationError("blob register ends before it starts")
        message = _signing_bytes(self.body)
        _owner_key(self.body.owner).verify(BLOB_REGISTER_CONTEXT, message, self.signature)


@register(40)
@dataclass(frozen=True, slots=True)
class BlobExtendBody(Message):
    """The owner moves the end of registration (owner, start epoch) to ``end_epoch``."""

    network_id: NetworkIdBytes
    blob_id: BlobIdBytes
    owner: PublicKeyBytes
    start_epoch: EpochNumber
    end_epoch: EpochNumber


@register(41)
@dataclass(frozen=True, slots=True)
class BlobExtend(Message):
    body: BlobExtendBody
    signature: SignatureBytes

    @property
    def blob_id(self) -> BlobId:
        return self.body.blob_id

    def verify(self, network_id: bytes) -> None:
        _check_network(self.body.network_id, network_id, "blob extend")
        if self.body.end_epoch <= self.body.start_epoch:
            raise VerificationError("blob extend ends before it starts")
        message = _signing_bytes(self.body)
        _owner_key(self.body.owner).verify(BLOB_EXTEND_CONTEXT, message, self.signature)


@register(42)
@dataclass(frozen=True, slots=True)
class BlobDeleteBody(Message):
    """The owner deletes registration (owner, start epoch); no effect if it is permanent."""

    network_id: NetworkIdBytes
    blob_id: BlobIdBytes
    owner: PublicKeyBytes
    start_epoch: EpochNumber


@register(43)
@dataclass(frozen=True, slots=True)
class BlobDelete(Message):
    body: BlobDeleteBody
    signature: SignatureBytes

    @property
    def blob_id(self) -> BlobId:
        return self.body.blob_id

    def verify(self, network_id: bytes) -> None:
        _check_network(self.body.network_id, network_id, "blob delete")
        message = _signing_bytes(self.body)
        _owner_key(self.body.owner).verify(BLOB_DELETE_CONTEXT, message, self.signature)


# Blob attributes (docs/attributes.md): the owner of a registration signs its whole attribute
# set with a version; the highest version wins.

MAX_ATTRIBUTES = 32
"""Key/value pairs on one registration."""
MAX_ATTRIBUTE_KEY_LENGTH = 128
"""UTF-8 bytes of a key (an HTTP header name is far shorter)."""
MAX_ATTRIBUTE_VALUE_LENGTH = 1024
"""UTF-8 bytes of a value: a ``link`` header or a content disposition with a long file name fits;
a whole set is at most ~37 KiB, below a record's cap (``MAX_RECORD_SIZE``, 64 KiB)."""
_NO_CONTROL = r"[^\x00-\x1f\x7f]"
"""No control characters: a value may become an HTTP header (no CR/LF injection)."""


@record
@dataclass(frozen=True, slots=True, order=True)
class AttributePair:
    key: Annotated[str, TextSpec(MAX_ATTRIBUTE_KEY_LENGTH, _NO_CONTROL + "+")]
    value: Annotated[str, TextSpec(MAX_ATTRIBUTE_VALUE_LENGTH, _NO_CONTROL + "*")]


AttributePairs = Annotated[
    tuple[AttributePair, ...],
    ListSpec(record_spec(AttributePair), MAX_ATTRIBUTES, strictly_increasing=True),
]
"""Sorted by key; keys unique (checked by :meth:`BlobAttribute.verify`)."""


@register(53)
@dataclass(frozen=True, slots=True)
class BlobAttributeBody(Message):
    """The attributes of registration (owner, start epoch) from ``version`` on.

    The set is whole: setting a key, removing keys or removing the attribute each sign a new set
    with a higher version. An empty set is "no attribute". Several registrations of one blob
    each have their own set (as each Walrus blob object has its own attribute).
    """

    network_id: NetworkIdBytes
    blob_id: BlobIdBytes
    owner: PublicKeyBytes
    start_epoch: EpochNumber
    version: U64
    pairs: AttributePairs


@register(54)
@dataclass(frozen=True, slots=True)
class BlobAttribute(Message):
    body: BlobAttributeBody
    signature: SignatureBytes

    @property
    def blob_id(self) -> BlobId:
        return self.body.blob_id

    @property
    def attributes(self) -> dict[str, str]:
        return {pair.key: pair.value for pair in self.body.pairs}

    def verify(self, network_id: bytes) -> None:
        _check_network(self.body.network_id, network_id, "blob attribute")
        keys = [pair.key for pair in self.body.pairs]
        if len(set(keys)) != len(keys):
            raise VerificationError("blob attribute names a key twice")
        message = _signing_bytes(self.body)
        _owner_key(self.body.owner).verify(BLOB_ATTRIBUTE_CONTEXT, message, self.signature)


# --------------------------------------------------------------------------------------------
# Blob records signed by committee members


def confirmation_body(
    network_id: bytes, epoch: int, blob_id: bytes, permanent: bool, public_key: bytes
) -> StorageConfirmation:
    return StorageConfirmation(network_id, epoch, BlobId(blob_id), permanent, public_key)


@register(44)
@dataclass(frozen=True, slots=True)
class BlobCertificate(Message):
    """Storage confirmations for a blob from signers holding a quorum of shards in ``epoch``.

    Each signature is over ``wire.signing_bytes`` of the signer's
    :class:`~walrus_p2p.core.wire.StorageConfirmation` (with its own public key) under
    :data:`CONFIRMATION_CONTEXT`: exactly what :func:`sign_confirmation` makes.
    """

    network_id: NetworkIdBytes
    blob_id: BlobIdBytes
    epoch: EpochNumber
    permanent: bool
    confirmations: Signatures

    def __post_init__(self) -> None:
        object.__setattr__(self, "confirmations", _sorted_signatures(self.confirmations))

    def verify(self, network_id: bytes, committee: Committee) -> None:
        what = f"certificate of {short_id(self.blob_id)}"
        _check_network(self.network_id, network_id, what)
        if committee.epoch != self.epoch:
            raise VerificationError(f"{what} checked against the wrong committee")

        def message(signer: PeerId) -> bytes:
            public_key = committee.member(signer).public_key
            body = confirmation_body(
                network_id, self.epoch, self.blob_id, self.permanent, public_key
            )
            return _signing_bytes(body)

        verify_weighted_signatures(
            committee,
            self.confirmations,
            CONFIRMATION_CONTEXT,
            message,
            need=is_quorum,
            what=what,
        )


@register(45)
@dataclass(frozen=True, slots=True)
class InvalidBlobBody(Message):
    """What a storage peer signs after checking an inconsistency proof for ``blob_id``."""

    network_id: NetworkIdBytes
    epoch: EpochNumber
    blob_id: BlobIdBytes


@register(46)
@dataclass(frozen=True, slots=True)
class BlobInvalid(Message):
    """Attestations from at least f+1 shard weight (``3w >= n+1``) that a blob is inconsistent:
    at least one honest peer checked the proof."""

    network_id: NetworkIdBytes
    blob_id: BlobIdBytes
    epoch: EpochNumber
    attestations: Signatures

    def __post_init__(self) -> None:
        object.__setattr__(self, "attestations", _sorted_signatures(self.attestations))

    def verify(self, network_id: bytes, committee: Committee) -> None:
        what = f"invalid-blob record of {short_id(self.blob_id)}"
        _check_network(self.network_id, network_id, what)
        if committee.epoch != self.epoch:
            raise VerificationError(f"{what} checked against the wrong committee")
        message = _signing_bytes(InvalidBlobBody(network_id, self.epoch, self.blob_id))
        verify_weighted_signatures(
            committee,
            self.attestations,
            INVALID_BLOB_CONTEXT,
            lambda signer: message,
            need=is_validity,
            what=what,
        )


BlobRecord: TypeAlias = (
    BlobRegister | BlobExtend | BlobDelete | BlobCertificate | BlobInvalid | BlobAttribute
)
BLOB_RECORD_TYPES = (
    BlobRegister,
    BlobExtend,
    BlobDelete,
    BlobCertificate,
    BlobInvalid,
    BlobAttribute,
)
"""For ``wire.decode(data, BLOB_RECORD_TYPES)``."""
CommitteeLookup: TypeAlias = Callable[[Epoch], Committee | None]
"""The committee of an epoch, or None if this peer does not know that epoch (yet)."""


MAX_RECORD_EPOCH = (1 << 63) - 1
"""The latest epoch an owner's record may name. The wire allows any u64, but a peer keeps a
blob's epochs as signed 64-bit integers (``BlobStore.set_blob_state``): a self-signed register
record ending at epoch 2**64 - 1, merged and announced on gossip, made every peer that merged
it fail in its gossip reader and stop (found by the fuzzer, docs/testing.md, "Fuzzing"). At one
epoch a second the bound is 292 billion years away."""


def verify_blob_record(
    record: BlobRecord, network_id: bytes, committee_of: CommitteeLookup
) -> None:
    """Verify any blob record; certificates and invalid records need their epoch's committee.

    An unknown epoch raises ``VerificationError`` too: the caller may retry after catching up.
    """
    if isinstance(record, BlobCertificate | BlobInvalid):
        committee = committee_of(Epoch(record.epoch))
        if committee is None:
            raise VerificationError(f"no committee known for epoch {record.epoch}")
        record.verify(network_id, committee)
    else:
        for name in ("start_epoch", "end_epoch"):
            epoch = getattr(record.body, name, 0)
            if epoch > MAX_RECORD_EPOCH:
                raise VerificationError(f"{name} {epoch} is beyond epoch {MAX_RECORD_EPOCH}")
        record.verify(network_id)


# Signing helpers for owners and storage peers.


def sign_register(
    owner: identity.Identity,
    *,
    network_id: bytes,
    blob_id: bytes,
    size: int,
    start_epoch: int,
    end_epoch: int,
    deletable: bool,
) -> BlobRegister:
    body = BlobRegisterBody(
        network_id,
        BlobId(blob_id),
        owner.public_key.raw,
        size,
        Epoch(start_epoch),
        Epoch(end_epoch),
        deletable,
    )
    return BlobRegister(body, owner.sign(BLOB_REGISTER_CONTEXT, signing_bytes(body)))


def sign_extend(
    owner: identity.Identity, *, network_id: bytes, blob_id: bytes, start_epoch: int, end_epoch: int
) -> BlobExtend:
    body = BlobExtendBody(
        network_id, BlobId(blob_id), owner.public_key.raw, Epoch(start_epoch), Epoch(end_epoch)
    )
    return BlobExtend(body, owner.sign(BLOB_EXTEND_CONTEXT, signing_bytes(body)))


def sign_delete(
    owner: identity.Identity, *, network_id: bytes, blob_id: bytes, start_epoch: int
) -> BlobDelete:
    body = BlobDeleteBody(network_id, BlobId(blob_id), owner.public_key.raw, Epoch(start_epoch))
    return BlobDelete(body, owner.sign(BLOB_DELETE_CONTEXT, signing_bytes(body)))


def sign_attribute(
    owner: identity.Identity,
    *,
    network_id: bytes,
    blob_id: bytes,
    start_epoch: int,
    version: int,
    attributes: Mapping[str, str],
) -> BlobAttribute:
    """The whole attribute set of the owner's registration (owner, start epoch) at ``version``.

    Raises ``ValueError`` for a set the wire or :meth:`BlobAttribute.verify` would refuse (too
    many pairs, a key or value too long or with a control character)."""
    pairs = tuple(AttributePair(key, value) for key, value in sorted(attributes.items()))
    body = BlobAttributeBody(
        network_id, BlobId(blob_id), owner.public_key.raw, Epoch(start_epoch), version, pairs
    )
    try:
        encoded = signing_bytes(body)
    except WireError as error:
        raise ValueError(f"attributes not allowed: {error}") from error
    return BlobAttribute(body, owner.sign(BLOB_ATTRIBUTE_CONTEXT, encoded))


def sign_confirmation(
    signer: identity.Identity, *, network_id: bytes, epoch: int, blob_id: bytes, permanent: bool
) -> SignedStorageConfirmation:
    """A storage confirmation; sign it only after the slivers are durable on disk."""
    body = confirmation_body(network_id, epoch, blob_id, permanent, signer.public_key.raw)
    return SignedStorageConfirmation(body, signer.sign(CONFIRMATION_CONTEXT, signing_bytes(body)))


def confirmation_signature(signed: SignedStorageConfirmation) -> Signature:
    """The certificate entry of a confirmation (checked only when the certificate is verified)."""
    peer_id = identity.peer_id_from_public_key(signed.confirmation.public_key)
    return Signature(peer_id, signed.signature)


def sign_invalid_blob(
    signer: identity.Identity, *, network_id: bytes, epoch: int, blob_id: bytes
) -> Signature:
    """An attestation that ``blob_id`` is inconsistent; sign only after checking a proof."""
    body = InvalidBlobBody(network_id, Epoch(epoch), BlobId(blob_id))
    return Signature(signer.peer_id, signer.sign(INVALID_BLOB_CONTEXT, signing_bytes(body)))


# --------------------------------------------------------------------------------------------
# Blob state: the merge


@dataclass(frozen=True, slots=True)
class Registration:
    """The merged state of one registration (owner, start epoch) of a blob.

    Each field is its own semilattice, so the product is one: ``registered``, ``permanent`` and
    ``deleted`` are OR, ``end_epoch`` and ``size`` are max. One permanent register makes the
    registration undeletable; a delete of a permanent registration has no effect (it is still
    remembered, but :attr:`is_live` ignores it). The size kept is the largest one registered (a
    register whose size contradicts the metadata is refused by whoever checks the metadata).
    """

    registered: bool = False
    size: int = 0
    end_epoch: int = 0
    permanent: bool = False
    deleted: bool = False

    def join(self, other: Registration) -> Registration:
        return Registration(
            registered=self.registered or other.registered,
            size=max(self.size, other.size),
            end_epoch=max(self.end_epoch, other.end_epoch),
            permanent=self.permanent or other.permanent,
            deleted=self.deleted or other.deleted,
        )

    @property
    def is_live(self) -> bool:
        """Registered and not (effectively) deleted."""
        return self.registered and not (self.deleted and not self.permanent)


RegistrationKey: TypeAlias = tuple[bytes, int]
"""(owner public key, start epoch)."""


def _earliest(
    first: BlobCertificate | None, second: BlobCertificate | None
) -> BlobCertificate | None:
    if first is None or second is None:
        return first if second is None else second
    key_first = (first.epoch, signing_bytes(first))
    key_second = (second.epoch, signing_bytes(second))
    return first if key_first <= key_second else second


def _earliest_invalid(first: BlobInvalid | None, second: BlobInvalid | None) -> BlobInvalid | None:
    if first is None or second is None:
        return first if second is None else second
    key_first = (first.epoch, signing_bytes(first))
    key_second = (second.epoch, signing_bytes(second))
    return first if key_first <= key_second else second


def newer_attribute(first: BlobAttribute, second: BlobAttribute) -> BlobAttribute:
    """The attribute record that wins: higher version, then smaller encoding (deterministic)."""
    key_first = (-first.body.version, signing_bytes(first))
    key_second = (-second.body.version, signing_bytes(second))
    return first if key_first <= key_second else second


def _join_attributes(
    mine: Mapping[RegistrationKey, BlobAttribute], theirs: Mapping[RegistrationKey, BlobAttribute]
) -> Mapping[RegistrationKey, BlobAttribute]:
    if not theirs:
        return mine
    if not mine:
        return theirs
    joined = dict(mine)
    for key, attribute in theirs.items():
        current = joined.get(key)
        joined[key] = attribute if current is None else newer_attribute(current, attribute)
    return joined


@dataclass(frozen=True, slots=True)
class BlobState:
    """Everything known about one blob: the join of its verified records.

    - registrations: per (owner, start epoch), a :class:`Registration` joined field by field;
    - certificates: the earliest-epoch certificate of each permanence (ties: smaller encoding),
      so the kept certificate does not depend on which one arrived first;
    - invalid: absorbing; the earliest (then smallest) record is kept as the proof;
    - attributes: per (owner, start epoch), the attribute record of the highest version (ties:
      smaller encoding), kept whether or not that registration is known or live;
    - shared_ends: per owner, the latest end a settlement of the epoch chain gave the owner's
      shared blob (docs/economics.md, "Shared blobs"): a live registration of that owner lasts
      at least until then. Not a record: peers and clients take it from the verified chain.
    """

    blob_id: BlobId
    registrations: Mapping[RegistrationKey, Registration] = field(default_factory=dict)
    permanent_certificate: BlobCertificate | None = None
    deletable_certificate: BlobCertificate | None = None
    invalid: BlobInvalid | None = None
    attributes: Mapping[RegistrationKey, BlobAttribute] = field(default_factory=dict)
    shared_ends: Mapping[bytes, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, blob_id: bytes) -> BlobState:
        return cls(BlobId(blob_id))

    def join(self, other: BlobState) -> BlobState:
        """The least upper bound: commutative, associative and idempotent."""
        if other.blob_id != self.blob_id:
            raise ValueError("states of different blobs do not merge")
        registrations = dict(self.registrations)
        for key, registration in other.registrations.items():
            mine = registrations.get(key)
            registrations[key] = registration if mine is None else mine.join(registration)
        return BlobState(
            blob_id=self.blob_id,
            registrations=registrations,
            permanent_certificate=_earliest(
                self.permanent_certificate, other.permanent_certificate
            ),
            deletable_certificate=_earliest(
                self.deletable_certificate, other.deletable_certificate
            ),
            invalid=_earliest_invalid(self.invalid, other.invalid),
            attributes=_join_attributes(self.attributes, other.attributes),
            shared_ends=_join_ends(self.shared_ends, other.shared_ends),
        )

    def with_record(self, record: BlobRecord) -> BlobState:
        """Merge one record that the caller has already verified (see :meth:`with_verified`)."""
        if record.blob_id != self.blob_id:
            raise ValueError("record is for another blob")
        return self.join(_state_of(record))

    def with_shared_ends(self, ends: Mapping[bytes, int]) -> BlobState:
        """Join ends of this blob's shared blobs (owner -> end) taken from the epoch chain."""
        if not ends:
            return self
        return dataclasses.replace(self, shared_ends=_join_ends(self.shared_ends, ends))

    def with_verified(
        self, record: BlobRecord, network_id: bytes, committee_of: CommitteeLookup
    ) -> BlobState:
        """Verify a record received from anywhere, then merge it; ``VerificationError`` if bad."""
        verify_blob_record(record, network_id, committee_of)
        return self.with_record(record)

    # Derived status ------------------------------------------------------------------------

    @property
    def is_invalid(self) -> bool:
        return self.invalid is not None

    @property
    def live_registrations(self) -> dict[RegistrationKey, Registration]:
        return {key: reg for key, reg in self.registrations.items() if reg.is_live}

    @property
    def end_epoch(self) -> int | None:
        """The first epoch no live registration pays for; None if there is no live one."""
        ends = [
            max(reg.end_epoch, self.shared_ends.get(owner, 0))
            for (owner, _), reg in self.live_registrations.items()
        ]
        return max(ends) if ends else None

    @property
    def is_permanent(self) -> bool:
        """Some live registration cannot be deleted."""
        return any(reg.permanent for reg in self.live_registrations.values())

    @property
    def certificate(self) -> BlobCertificate | None:
        """The earliest certificate of either permanence."""
        return _earliest(self.permanent_certificate, self.deletable_certificate)

    @property
    def certified_epoch(self) -> int | None:
        certificate = self.certificate
        return None if certificate is None else certificate.epoch

    @property
    def is_deleted(self) -> bool:
        """Registered, and every registration was deleted (none of them was permanent)."""
        registered = any(reg.registered for reg in self.registrations.values())
        return registered and not self.live_registrations

    def status(self, current_epoch: int) -> str:
        """One word: invalid, deleted, expired, certified, registered or unknown."""
        if self.is_invalid:
            return "invalid"
        if self.is_deleted:
            return "deleted"
        end = self.end_epoch
        if end is None:
            return "unknown"
        if end <= current_epoch:
            return "expired"
        return "certified" if self.certificate is not None else "registered"

    def attributes_of(self, key: RegistrationKey) -> dict[str, str]:
        """The attributes of one registration (empty when it has none)."""
        current = self.attributes.get(key)
        return {} if current is None else current.attributes

    @property
    def effective_attributes(self) -> dict[str, str]:
        """What a reader of the blob id sees: each key from the first live registration that
        sets it, registrations taken by (start epoch, owner). So the first registrant's
        attributes win over later ones' (docs/attributes.md, "Several owners")."""
        merged: dict[str, str] = {}
        for key in sorted(self.live_registrations, key=lambda item: (item[1], item[0])):
            for name, value in self.attributes_of(key).items():
                merged.setdefault(name, value)
        return merged

    def is_stored_in(self, epoch: int) -> bool:
        """Whether storage peers must hold this blob's slivers in ``epoch``."""
        end = self.end_epoch
        return not self.is_invalid and end is not None and epoch < end


def _join_ends(mine: Mapping[bytes, int], theirs: Mapping[bytes, int]) -> Mapping[bytes, int]:
    if not theirs:
        return mine
    if not mine:
        return theirs
    joined = dict(mine)
    for owner, end in theirs.items():
        joined[owner] = max(end, joined.get(owner, 0))
    return joined


def _state_of(record: BlobRecord) -> BlobState:
    blob_id = record.blob_id
    if isinstance(record, BlobRegister):
        body = record.body
        registration = Registration(
            registered=True, size=body.size, end_epoch=body.end_epoch, permanent=not body.deletable
        )
        return BlobState(blob_id, {(body.owner, body.start_epoch): registration})
    if isinstance(record, BlobExtend):
        key = (record.body.owner, record.body.start_epoch)
        return BlobState(blob_id, {key: Registration(end_epoch=record.body.end_epoch)})
    if isinstance(record, BlobDelete):
        key = (record.body.owner, record.body.start_epoch)
        return BlobState(blob_id, {key: Registration(deleted=True)})
    if isinstance(record, BlobAttribute):
        key = (record.body.owner, record.body.start_epoch)
        return BlobState(blob_id, attributes={key: record})
    if isinstance(record, BlobCertificate):
        if record.permanent:
            return BlobState(blob_id, permanent_certificate=record)
        return BlobState(blob_id, deletable_certificate=record)
    return BlobState(blob_id, invalid=record)


def merge_records(blob_id: bytes, records: Iterable[BlobRecord]) -> BlobState:
    """The state of a blob from records already verified, in any order."""
    state = BlobState.empty(blob_id)
    for record_ in records:
        state = state.with_record(record_)
    return state
