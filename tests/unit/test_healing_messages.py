"""Wire forms of the healing messages: inconsistency evidence round trips exactly."""

from __future__ import annotations

import random

from walrus_p2p.core import wire
from walrus_p2p.core.blob_messages import (
    AttestInvalidBlobRequest,
    evidence_from_proof,
    proof_from_evidence,
)
from walrus_p2p.core.encoding import EncodingConfig, SliverType
from walrus_p2p.core.metadata import (
    InconsistencyProof,
    encode_blob,
    make_recovery_symbol,
    verify_recovery_symbol,
)


def test_inconsistency_evidence_round_trips_through_the_wire() -> None:
    config = EncodingConfig.for_shards(7)
    blob = random.Random(3).randbytes(5000)
    written = encode_blob(blob, config)
    target = 4
    symbols = tuple(
        make_recovery_symbol(
            written.metadata,
            SliverType.SECONDARY,
            column,
            written.encoded.sliver(SliverType.SECONDARY, column),
            target,
        )
        for column in range(config.ks)
    )
    proof = InconsistencyProof(SliverType.PRIMARY, target, symbols)
    request = AttestInvalidBlobRequest(
        blob_id=written.blob_id, epoch=0, evidence=evidence_from_proof(proof)
    )
    decoded = wire.decode(wire.encode(request), AttestInvalidBlobRequest)
    back = proof_from_evidence(decoded.evidence)
    assert back == proof
    for symbol in back.symbols:
        verify_recovery_symbol(written.metadata, symbol)
