"""Storage challenge messages: tickets, responses, PASS signatures, availability certificates.

Owner: the wire form of proofs of availability over time (docs/challenges.md; docs/design.md
§5). Type ids 128-159 are the challenges': 128-131 the exchange between two members, 132-133
the PASS body and the availability certificate, 134-137 posting and listing certificates.

The exchange, for epoch e, between a *challenged* member i and a *challenger* j (both in the
committee of e), always started by i:

1. ``ChallengeTicketRequest(e)`` i -> j: "I am in the challenge window of e, challenge me".
   j answers only once it is in the window itself and has seen such requests from members
   holding a quorum of e's shards (docs/challenges.md, "The window").
2. ``ChallengeTicketReply(e, nonce, blob_ids)``: j's fresh nonce and the blobs it challenges i
   on (sorted, at most :data:`MAX_CHALLENGE_BLOBS`).
3. ``ChallengeResponseRequest(e, digest)`` i -> j: the response digest
   (:func:`walrus_p2p.core.challenges.response_digest`).
4. ``ChallengeResponseReply(signature)``: j's PASS for i (:class:`AvailabilityPassBody`), sent
   only when the digest matches what j computed from its own slivers; otherwise j refuses with
   ``CHALLENGE_FAILED``.

PASS signatures of members holding a quorum of e's shards make an
:class:`AvailabilityCertificate` for i in e (:func:`walrus_p2p.core.challenges.
verify_availability_certificate`).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from walrus_p2p.core.records import EpochNumber, PeerIdText, Signatures
from walrus_p2p.core.wire import (
    MAX_SHARDS,
    U16,
    BytesSpec,
    Hash32,
    ListSpec,
    Message,
    NetworkIdBytes,
    SignatureBytes,
    record_spec,
    register,
)

MAX_CHALLENGE_BLOBS = 4096
"""Blobs one challenger asks about in one epoch (128 KiB of ids). A challenger holding more
samples this many with its own randomness (docs/challenges.md, "Sampling")."""
MAX_CERTIFICATES_PER_REPLY = MAX_SHARDS
"""At most one certificate per member and epoch, and a committee has at most n members."""
NONCE_LENGTH = 32

BlobIdList = Annotated[
    tuple[bytes, ...],
    ListSpec(BytesSpec.exact(32), MAX_CHALLENGE_BLOBS, strictly_increasing=True),
]
"""Blob ids, sorted without repeats: one canonical order both sides hash in."""
Nonce = Annotated[bytes, BytesSpec.exact(NONCE_LENGTH)]


@register(128)
@dataclass(frozen=True, slots=True)
class ChallengeTicketRequest(Message):
    """The challenged member asks a challenger for its ticket of ``epoch``."""

    epoch: EpochNumber


@register(129)
@dataclass(frozen=True, slots=True)
class ChallengeTicketReply(Message):
    """A challenger's ticket: its nonce for this member and the blobs it asks about."""

    epoch: EpochNumber
    nonce: Nonce
    blob_ids: BlobIdList


@register(130)
@dataclass(frozen=True, slots=True)
class ChallengeResponseRequest(Message):
    """The challenged member's answer to the ticket the challenger gave it for ``epoch``."""

    epoch: EpochNumber
    digest: Hash32


@register(131)
@dataclass(frozen=True, slots=True)
class ChallengeResponseReply(Message):
    """The challenger's PASS: its signature over :class:`AvailabilityPassBody`."""

    signature: SignatureBytes


@register(132)
@dataclass(frozen=True, slots=True)
class AvailabilityPassBody(Message):
    """What a member signs when ``member`` answered its challenge of ``epoch`` correctly (or,
    for its own entry, what a member signs for itself: docs/challenges.md, "Certificates")."""

    network_id: NetworkIdBytes
    epoch: EpochNumber
    member: PeerIdText


@register(133)
@dataclass(frozen=True, slots=True)
class AvailabilityCertificate(Message):
    """PASS signatures for ``member`` in ``epoch`` from members holding a quorum of that
    epoch's shards (sorted by signer, no repeats)."""

    network_id: NetworkIdBytes
    epoch: EpochNumber
    member: PeerIdText
    passes: Signatures


Certificates = Annotated[
    tuple[AvailabilityCertificate, ...],
    ListSpec(record_spec(AvailabilityCertificate), MAX_CERTIFICATES_PER_REPLY),
]


@register(134)
@dataclass(frozen=True, slots=True)
class PostAvailabilityCertificatesRequest(Message):
    """Certificates pushed to a member (by the certified member, after its round)."""

    certificates: Certificates


@register(135)
@dataclass(frozen=True, slots=True)
class PostAvailabilityCertificatesReply(Message):
    accepted: U16


@register(136)
@dataclass(frozen=True, slots=True)
class GetAvailabilityCertificatesRequest(Message):
    """Every availability certificate of ``epoch`` the member keeps."""

    epoch: EpochNumber


@register(137)
@dataclass(frozen=True, slots=True)
class GetAvailabilityCertificatesReply(Message):
    epoch: EpochNumber
    certificates: Certificates


CHALLENGE_MESSAGE_TYPES = (
    ChallengeTicketRequest,
    ChallengeTicketReply,
    ChallengeResponseRequest,
    ChallengeResponseReply,
    AvailabilityPassBody,
    AvailabilityCertificate,
    PostAvailabilityCertificatesRequest,
    PostAvailabilityCertificatesReply,
    GetAvailabilityCertificatesRequest,
    GetAvailabilityCertificatesReply,
)
