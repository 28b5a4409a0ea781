"""Marking an inconsistently encoded blob invalid (docs/design.md §4).

When recovery rebuilds a sliver from verified symbols and it contradicts its hash, the error
carries an :class:`~walrus_p2p.core.metadata.InconsistencyProof`. This peer verifies the proof
itself, signs an attestation, and asks every other committee member for theirs with an
:class:`~walrus_p2p.core.blob_messages.AttestInvalidBlobRequest` carrying the proof. Each
member checks the proof against the blob's metadata (its own copy, or one fetched and verified
against the blob id) before it signs, so an attestation always means "I checked". Once the
signers hold validity weight (f+1 shards: at least one honest checker) the attestations form a
:class:`~walrus_p2p.core.records.BlobInvalid` record, which is merged here and pushed to every
peer; peers then drop the blob's slivers and refuse to serve them (``BLOB_INVALID``).
"""

from __future__ import annotations

import logging

import trio

from walrus_p2p.core import identity, records, wire
from walrus_p2p.core.blob_messages import (
    AttestInvalidBlobReply,
    AttestInvalidBlobRequest,
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    encode_records,
    evidence_from_proof,
    proof_from_evidence,
)
from walrus_p2p.core.committee import is_validity
from walrus_p2p.core.metadata import (
    InconsistencyProof,
    InconsistentSliverError,
    Metadata,
    verify_inconsistency_proof,
)
from walrus_p2p.errors import EncodingError, QuorumError, VerificationError, WalrusError
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.healing_metrics import HealingMetrics
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.node.protocol import ProtocolRefusal
from walrus_p2p.node.recovery import Recovery
from walrus_p2p.types import BlobId, Epoch, PeerId, short_id

logger = logging.getLogger(__name__)


class InvalidBlobs:
    def __init__(
        self,
        ctx: PeerContext,
        caller: PeerCaller,
        recovery: Recovery,
        options: HealingOptions,
        metrics: HealingMetrics,
    ) -> None:
        self.ctx = ctx
        self.caller = caller
        self.recovery = recovery
        self.options = options
        self.metrics = metrics

    def _body_bytes(self, blob_id: BlobId, epoch: int) -> bytes:
        body = records.InvalidBlobBody(self.ctx.genesis.network_id, Epoch(epoch), blob_id)
        return wire.signing_bytes(body)

    async def _check_proof(
        self, blob_id: BlobId, metadata: Metadata, proof: InconsistencyProof
    ) -> None:
        try:
            await trio.to_thread.run_sync(verify_inconsistency_proof, blob_id, metadata, proof)
        except EncodingError as error:
            raise VerificationError(f"inconsistency proof does not decode: {error}") from error

    async def handle_attest(
        self, request: AttestInvalidBlobRequest, remote: PeerId
    ) -> AttestInvalidBlobReply:
        """Sign an attestation only after checking the proof against verified metadata."""

        blob_id = BlobId(request.blob_id)
        if request.epoch != self.ctx.epoch:
            raise ProtocolRefusal("WRONG_EPOCH", f"attestations are for epoch {self.ctx.epoch}")
        try:
            metadata = await self.recovery.ensure_metadata(blob_id, keep=False)
        except WalrusError as error:
            raise ProtocolRefusal("BLOB_UNKNOWN", f"no metadata for this blob: {error}") from error
        proof = proof_from_evidence(request.evidence)
        try:
            await self._check_proof(blob_id, metadata, proof)
        except VerificationError as error:
            raise ProtocolRefusal("PROOF_INVALID", str(error)) from error
        logger.warning(
            "inconsistency proof checked, attesting blob=%s asker=%s",
            short_id(blob_id),
            remote[:12],
        )
        attestation = records.sign_invalid_blob(
            self.ctx.identity,
            network_id=self.ctx.genesis.network_id,
            epoch=self.ctx.epoch,
            blob_id=blob_id,
        )
        return AttestInvalidBlobReply(attestation=attestation)

    def _attestation_is_valid(
        self, signer: PeerId, attestation: records.Signature, message: bytes
    ) -> bool:
        committee = self.ctx.committee
        if attestation.signer != signer or signer not in committee:
            return False
        key = identity.PublicKey(committee.member(signer).public_key)
        return key.is_valid_signature(records.INVALID_BLOB_CONTEXT, message, attestation.signature)

    async def mark_invalid(
        self, blob_id: BlobId, metadata: Metadata, error: InconsistentSliverError
    ) -> records.BlobInvalid:
        """Verify the proof, gather attestations of validity weight, merge and push the record.

        Raises ``QuorumError`` when too few peers attested (the blob sync retries later).
        """
        proof = error.proof
        await self._check_proof(blob_id, metadata, proof)
        peer = self.ctx
        committee = peer.committee
        epoch = peer.epoch
        message = self._body_bytes(blob_id, epoch)
        signatures: dict[PeerId, records.Signature] = {
            peer.peer_id: records.sign_invalid_blob(
                peer.identity, network_id=peer.genesis.network_id, epoch=epoch, blob_id=blob_id
            )
        }
        request = AttestInvalidBlobRequest(
            blob_id=blob_id, epoch=epoch, evidence=evidence_from_proof(proof)
        )

        def enough() -> bool:
            return is_validity(committee.shard_weight(signatures), committee.n_shards)

        async def ask(signer: PeerId, nursery: trio.Nursery) -> None:
            try:
                reply = await self.caller.call(
                    signer,
                    request,
                    AttestInvalidBlobReply,
                    timeout=self.options.attestation_timeout,
                )
            except WalrusError as failure:
                logger.info("attestation refused peer=%s reason=%s", signer[:12], failure.reason)
                return
            if not self._attestation_is_valid(signer, reply.attestation, message):
                logger.warning("peer sent a bad attestation peer=%s", signer[:12])
                return
            signatures[signer] = reply.attestation
            if enough():
                nursery.cancel_scope.cancel()

        if not enough():
            async with trio.open_nursery() as nursery:
                for signer in committee.peer_ids:
                    if signer != peer.peer_id:
                        nursery.start_soon(ask, signer, nursery)
        if not enough():
            raise QuorumError(
                f"only {committee.shard_weight(signatures)} shards attested that blob "
                f"{short_id(blob_id)} is invalid"
            )
        invalid = records.BlobInvalid(
            network_id=peer.genesis.network_id,
            blob_id=blob_id,
            epoch=Epoch(epoch),
            attestations=tuple(signatures.values()),
        )
        invalid.verify(peer.genesis.network_id, committee)
        await peer.records.merge(blob_id, [invalid])
        self.metrics.blobs_invalidated.inc()
        delivered = await self.push(blob_id, [invalid])
        logger.warning(
            "blob marked invalid blob=%s attesters=%d delivered=%d",
            short_id(blob_id),
            len(signatures),
            delivered,
        )
        return invalid

    async def push(self, blob_id: BlobId, items: list[records.BlobRecord]) -> int:
        """Send records to every other committee member at once; returns how many took them."""
        encoded = encode_records(items)
        delivered = 0

        async def send(target: PeerId) -> None:
            nonlocal delivered
            try:
                await self.caller.call(
                    target,
                    PostBlobRecordsRequest(blob_id=blob_id, records=encoded),
                    PostBlobRecordsReply,
                    timeout=self.options.request_timeout,
                )
                delivered += 1
            except WalrusError as error:
                logger.info("record push failed peer=%s reason=%s", target[:12], error.reason)

        async with trio.open_nursery() as nursery:
            for target in self.ctx.committee.peer_ids:
                if target != self.ctx.peer_id:
                    nursery.start_soon(send, target)
        return delivered
