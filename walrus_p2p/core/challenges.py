"""Storage challenges: which blobs are challenged, the response digest, PASS, certificates.

Owner: proofs of availability over time (docs/challenges.md). Every epoch e >= 1 each member i
of e's committee proves to every other member j that it still holds its slivers:

- **Challenged blobs** (:func:`is_challenged`): certified in an epoch before e (the certificate's
  own epoch, a signed fact: no clock is involved), still stored in e, not invalid. Only the
  shards a member held in both e-1 and e are challenged (:func:`stable_shards`): a shard that
  just moved is still being pulled.
- **Shared symbols** (:func:`shared_symbols`): for sliver pair p of i and pair q of j, the
  symbols ``E[p, n-1-q]`` (i's primary row meets j's secondary column) and ``E[q, n-1-p]`` (j's
  row meets i's column). Both hold both: i computes them from its own expanded slivers, j from
  its own, so no Merkle proof travels between two holders.
- **The digest** (:class:`ResponseHasher`): a BLAKE3 hash *keyed* by a key derived from j's
  nonce (:func:`response_key`), over every listed blob id and its shared symbols in one fixed
  order. The key covers every chunk, so no part of the hash can be computed before the nonce
  is known (an unkeyed hash of ``nonce || data`` would let a cheater keep BLAKE3's chunk
  chaining values of the data instead of the data).
- **PASS** (:func:`sign_pass`): j's signature over :class:`~walrus_p2p.core.challenge_messages.
  AvailabilityPassBody`; PASS from members holding a quorum of e's shards is an
  :class:`~walrus_p2p.core.challenge_messages.AvailabilityCertificate`
  (:func:`verify_availability_certificate`).
- **Sampling** (:func:`sample_blob_ids`) and its detection probability
  (:func:`miss_probability`, :func:`pass_probability`).

Pure: nonces and seeds come from the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import blake3
import numpy as np
import numpy.typing as npt

from walrus_p2p.core import identity
from walrus_p2p.core.challenge_messages import AvailabilityCertificate, AvailabilityPassBody
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.core.encoding import EncodingConfig, SliverType, expand_sliver, shard_to_pair
from walrus_p2p.core.merkle import derive_domain_key, keyed_hash
from walrus_p2p.core.records import Signature, verify_weighted_signatures
from walrus_p2p.core.wire import signing_bytes
from walrus_p2p.errors import VerificationError
from walrus_p2p.types import BlobId, Epoch, PeerId

PASS_CONTEXT = "walrus-p2p/availability-pass/v1"
"""What a member signs an :class:`AvailabilityPassBody` under."""
RESPONSE_KEY_KEY = derive_domain_key("challenge response key")
SAMPLE_KEY_KEY = derive_domain_key("challenge sample key")

ByteArray = npt.NDArray[np.uint8]


# --------------------------------------------------------------------------------------------
# What is challenged


def is_challenged(
    epoch: int, *, certified_epoch: int | None, end_epoch: int | None, invalid: bool
) -> bool:
    """Whether a blob is challenged in ``epoch``: certified in an earlier epoch, stored in
    ``epoch`` (a live registration ends later), not invalid."""
    return (
        certified_epoch is not None
        and certified_epoch < epoch
        and end_epoch is not None
        and epoch < end_epoch
        and not invalid
    )


def stable_shards(
    previous: Committee | None, current: Committee, member: PeerId
) -> tuple[int, ...]:
    """The shards ``member`` holds in ``current`` and held in ``previous`` (the committee of
    the epoch before): the ones it is challenged on. Without ``previous``, none."""
    if previous is None or member not in current or member not in previous:
        return ()
    before = set(previous.shards_of(member))
    return tuple(shard for shard in current.shards_of(member) if shard in before)


def challenged_pairs(blob_id: bytes, shards: Iterable[int], n_shards: int) -> tuple[int, ...]:
    """The sliver pairs of ``blob_id`` that ``shards`` store, sorted."""
    return tuple(sorted(shard_to_pair(blob_id, shard, n_shards) for shard in shards))


def sample_blob_ids(candidates: Iterable[bytes], limit: int, seed: bytes) -> tuple[bytes, ...]:
    """At most ``limit`` of ``candidates``, sorted: all of them if they fit, else the ``limit``
    with the smallest keyed hash under ``seed`` (a uniformly random subset when the seed is
    random and unknown to the challenged member)."""
    unique = sorted(set(candidates))
    if len(unique) <= limit:
        return tuple(unique)
    key = keyed_hash(SAMPLE_KEY_KEY, seed)
    ranked = sorted(unique, key=lambda blob_id: keyed_hash(key, blob_id))
    return tuple(sorted(ranked[:limit]))


# --------------------------------------------------------------------------------------------
# The held slivers and the shared symbols


@dataclass(frozen=True, slots=True)
class HeldBlob:
    """One blob's slivers as one member holds them, expanded to all n symbols.

    ``rows[p]`` is primary sliver p expanded (row p of the expanded matrix, shape ``(n, S)``),
    ``columns[p]`` the secondary sliver of pair p (column ``n-1-p``) expanded.
    """

    blob_id: BlobId
    n_shards: int
    rows: Mapping[int, ByteArray]
    columns: Mapping[int, ByteArray]


def expand_held(
    blob_id: BlobId,
    config: EncodingConfig,
    symbol_size: int,
    slivers: Mapping[int, tuple[bytes, bytes]],
) -> HeldBlob:
    """Expand the (primary, secondary) slivers of each pair (``EncodingError`` on a wrong
    length: the caller treats it like a missing sliver)."""
    rows: dict[int, ByteArray] = {}
    columns: dict[int, ByteArray] = {}
    for pair, (primary, secondary) in slivers.items():
        rows[pair] = expand_sliver(config, SliverType.PRIMARY, primary, symbol_size)
        columns[pair] = expand_sliver(config, SliverType.SECONDARY, secondary, symbol_size)
    return HeldBlob(blob_id, config.n, rows, columns)


def shared_symbols(
    challenged: Sequence[int],
    challenger: Sequence[int],
    held: HeldBlob,
    *,
    held_by_challenger: bool,
) -> Iterator[ByteArray]:
    """The symbols the challenged pairs share with the challenger pairs, in the one order both
    sides hash: for p in ``challenged``, q in ``challenger`` (both sorted): ``E[p, n-1-q]``,
    then ``E[q, n-1-p]``.

    ``held`` is the challenged member's (``held_by_challenger=False``: its rows and columns are
    pairs p) or the challenger's (pairs q). ``KeyError`` if a needed pair is not in ``held``.
    """
    n = held.n_shards
    for p in challenged:
        for q in challenger:
            if held_by_challenger:
                yield held.columns[q][p]
                yield held.rows[q][n - 1 - p]
            else:
                yield held.rows[p][n - 1 - q]
                yield held.columns[p][q]


def response_key(
    *,
    network_id: bytes,
    epoch: int,
    challenger: PeerId,
    challenged: PeerId,
    nonce: bytes,
    blob_ids: Sequence[bytes],
) -> bytes:
    """The BLAKE3 key of the response to one ticket: bound to the network, epoch, both
    members, the challenger's nonce and the list of blobs asked about."""
    listed = blake3.blake3(b"".join(blob_ids)).digest()
    parts = [network_id, epoch.to_bytes(8, "big")]
    for name in (challenger, challenged):
        raw = name.encode()
        parts += [len(raw).to_bytes(1, "big"), raw]
    parts += [nonce, len(blob_ids).to_bytes(4, "big"), listed]
    return keyed_hash(RESPONSE_KEY_KEY, b"".join(parts))


class ResponseHasher:
    """The response digest of one ticket, fed blob by blob in the ticket's order."""

    __slots__ = ("_hasher", "blobs")

    def __init__(self, key: bytes) -> None:
        self._hasher = blake3.blake3(key=key)
        self.blobs = 0

    def add_blob(self, blob_id: bytes, symbols: Iterable[ByteArray | bytes]) -> None:
        self._hasher.update(blob_id)
        for symbol in symbols:
            self._hasher.update(symbol if isinstance(symbol, bytes) else symbol.data)
        self.blobs += 1

    def add_missing(self, blob_id: bytes) -> None:
        """A listed blob this member cannot answer for: the digest will not match (hashing a
        marker keeps the digest well defined; no honest member ever needs it)."""
        self._hasher.update(blob_id + b"\x00missing")
        self.blobs += 1

    def digest(self) -> bytes:
        return bytes(self._hasher.digest())


# --------------------------------------------------------------------------------------------
# PASS and certificates


def pass_bytes(network_id: bytes, epoch: int, member: PeerId) -> bytes:
    return signing_bytes(AvailabilityPassBody(network_id, Epoch(epoch), member))


def sign_pass(signer: identity.Identity, network_id: bytes, epoch: int, member: PeerId) -> bytes:
    """``signer``'s PASS for ``member`` in ``epoch`` (sign only after checking its response,
    or for oneself)."""
    return signer.sign(PASS_CONTEXT, pass_bytes(network_id, epoch, member))


def is_valid_pass(
    committee: Committee,
    signer: PeerId,
    signature: bytes,
    *,
    network_id: bytes,
    member: PeerId,
) -> bool:
    """Whether ``signature`` is ``signer``'s PASS for ``member`` in the committee's epoch."""
    if signer not in committee:
        return False
    key = identity.PublicKey(committee.member(signer).public_key)
    message = pass_bytes(network_id, int(committee.epoch), member)
    return key.is_valid_signature(PASS_CONTEXT, message, signature)


def make_certificate(
    network_id: bytes, epoch: int, member: PeerId, passes: Mapping[PeerId, bytes]
) -> AvailabilityCertificate:
    """A certificate from collected PASS signatures (sorted by signer)."""
    items = tuple(sorted(Signature(signer, signature) for signer, signature in passes.items()))
    return AvailabilityCertificate(network_id, Epoch(epoch), member, items)


def verify_availability_certificate(
    certificate: AvailabilityCertificate,
    network_id: bytes,
    committee_of: Callable[[Epoch], Committee | None],
) -> int:
    """Check a certificate against the committee of its epoch: right network, the member is in
    the committee, every PASS verifies, the signers hold a quorum of shards. Returns their
    weight; ``VerificationError`` otherwise (an unknown epoch too: retry after catching up)."""
    what = f"availability certificate of {certificate.member[:12]} in {certificate.epoch}"
    if certificate.network_id != network_id:
        raise VerificationError(f"{what} is for another network")
    committee = committee_of(Epoch(certificate.epoch))
    if committee is None:
        raise VerificationError(f"{what}: no committee known for that epoch")
    if certificate.member not in committee:
        raise VerificationError(f"{what}: not a member of that committee")
    message = pass_bytes(network_id, certificate.epoch, certificate.member)
    return verify_weighted_signatures(
        committee,
        certificate.passes,
        PASS_CONTEXT,
        lambda signer: message,
        need=is_quorum,
        what=what,
    )


# --------------------------------------------------------------------------------------------
# Detection probability of sampling (docs/challenges.md, "Sampling")


def miss_probability(blobs: int, dropped: int, sample: int) -> float:
    """The chance that one challenger sampling ``sample`` of ``blobs`` blobs (uniformly,
    without replacement) asks about none of the ``dropped`` ones: C(B-d, s) / C(B, s)."""
    if not 0 <= dropped <= blobs or sample < 0:
        raise ValueError("need 0 <= dropped <= blobs and sample >= 0")
    sample = min(sample, blobs)
    if sample > blobs - dropped:
        return 0.0
    return math.comb(blobs - dropped, sample) / math.comb(blobs, sample)


def pass_probability(miss: float, honest: int, needed: int) -> float:
    """The chance that at least ``needed`` of ``honest`` challengers, each sampling
    independently and missing with probability ``miss``, all miss: what a cheater needs to
    collect a quorum of PASS (binomial tail)."""
    if not 0.0 <= miss <= 1.0 or needed < 0 or honest < 0:
        raise ValueError("need 0 <= miss <= 1 and non-negative counts")
    return sum(
        math.comb(honest, k) * miss**k * (1.0 - miss) ** (honest - k)
        for k in range(needed, honest + 1)
    )
