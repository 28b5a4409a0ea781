"""Golden vectors for the wire format: one or more fixed messages per registered type.

``tests/vectors/wire.json`` holds their canonical CBOR in hex; ``tests/unit/test_wire.py`` checks
that encoding the samples below still gives exactly those bytes, so any change to the format shows
up as a failing test. After an intended format change, regenerate the file with::

    .venv/bin/python -m walrus_p2p.testing.wire_vectors tests/vectors/wire.json

and say in the changelog why every peer has to upgrade.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from walrus_p2p.core import blob_messages, records, wire
from walrus_p2p.core.metadata import Metadata, SliverPairMetadata
from walrus_p2p.types import BlobId, SliverKind

FORMAT = "walrus-p2p wire vectors 1"


def _filled(length: int, start: int) -> bytes:
    """Recognisable, non-constant bytes: start, start+1, ... modulo 256."""
    return bytes((start + i) % 256 for i in range(length))


def sample_messages() -> dict[str, wire.Message]:
    """Fixed messages covering every registered type (and the optional/edge forms)."""
    blob_id = BlobId(_filled(32, 0xB0))
    network_id = _filled(32, 0x4E)
    metadata = Metadata(
        encoding_type=1,
        unencoded_length=1_000_000,
        hashes=tuple(
            SliverPairMetadata(primary_hash=_filled(32, 16 * i), secondary_hash=_filled(32, 7 * i))
            for i in range(4)
        ),
    )
    confirmation = wire.StorageConfirmation(
        network_id=network_id,
        epoch=7,
        blob_id=blob_id,
        permanent=True,
        public_key=_filled(32, 0xA0),
    )
    signed = wire.SignedStorageConfirmation(confirmation=confirmation, signature=_filled(64, 0x51))
    return {
        "ErrorReply": wire.ErrorReply(reason="SLIVER_NOT_FOUND", message="no sliver 3 of blob"),
        "StorageConfirmation": confirmation,
        "SignedStorageConfirmation": signed,
        "StoreMetadataRequest": wire.StoreMetadataRequest(blob_id=blob_id, metadata=metadata),
        "StoreMetadataReply": wire.StoreMetadataReply(),
        "StoreSliverRequest": wire.StoreSliverRequest(
            blob_id=blob_id, pair_index=3, sliver_kind=SliverKind.SECONDARY, data=_filled(40, 1)
        ),
        "StoreSliverReply": wire.StoreSliverReply(),
        "GetMetadataRequest": wire.GetMetadataRequest(blob_id=blob_id),
        "GetMetadataReply": wire.GetMetadataReply(metadata=metadata),
        "GetSliverRequest": wire.GetSliverRequest(
            blob_id=blob_id, pair_index=255, sliver_kind=SliverKind.PRIMARY
        ),
        "GetSliverReply": wire.GetSliverReply(data=_filled(300, 9)),
        "GetConfirmationRequest": wire.GetConfirmationRequest(
            blob_id=blob_id, epoch=2**40 + 1, permanent=True
        ),
        "GetConfirmationReply": wire.GetConfirmationReply(confirmation=signed),
        "GetRecoverySymbolRequest": wire.GetRecoverySymbolRequest(
            blob_id=blob_id, source_pair_index=17, source_kind=SliverKind.PRIMARY, target_index=200
        ),
        "GetRecoverySymbolReply": wire.GetRecoverySymbolReply(
            symbol=_filled(24, 0xEE), proof=(_filled(32, 1), _filled(32, 2), _filled(32, 3))
        ),
        "BlobStatusRequest": wire.BlobStatusRequest(blob_id=blob_id),
        "BlobStatusReply": wire.BlobStatusReply(
            known=True,
            invalid=False,
            has_metadata=True,
            stored_pair_indices=(0, 5, 24, 255),
            certified_epoch=3,
            end_epoch=2**32,
        ),
        "BlobStatusReply/unknown": wire.BlobStatusReply(
            known=False,
            invalid=False,
            has_metadata=False,
            stored_pair_indices=(),
            certified_epoch=None,
            end_epoch=None,
        ),
        "PostBlobRecordsRequest": blob_messages.PostBlobRecordsRequest(
            blob_id=blob_id, records=(_filled(50, 3), _filled(20, 4))
        ),
        "PostBlobRecordsReply": blob_messages.PostBlobRecordsReply(accepted=2),
        "GetBlobRecordsRequest": blob_messages.GetBlobRecordsRequest(blob_id=blob_id),
        "GetBlobRecordsReply": blob_messages.GetBlobRecordsReply(records=(_filled(70, 5),)),
        "ListBlobRecordsRequest": blob_messages.ListBlobRecordsRequest(after=blob_id, limit=64),
        "ListBlobRecordsRequest/start": blob_messages.ListBlobRecordsRequest(after=None, limit=1),
        "ListBlobRecordsReply": blob_messages.ListBlobRecordsReply(
            entries=(
                blob_messages.BlobRecordsEntry(blob_id=blob_id, records=(_filled(30, 6),)),
                blob_messages.BlobRecordsEntry(
                    blob_id=BlobId(_filled(32, 0xC0)), records=(_filled(10, 7), _filled(11, 8))
                ),
            ),
            next_after=BlobId(_filled(32, 0xC0)),
        ),
        "ListBlobRecordsReply/last": blob_messages.ListBlobRecordsReply(
            entries=(), next_after=None
        ),
        "AttestInvalidBlobRequest": blob_messages.AttestInvalidBlobRequest(
            blob_id=blob_id,
            epoch=4,
            evidence=blob_messages.InconsistencyEvidence(
                target_kind=SliverKind.PRIMARY,
                target_index=2,
                symbols=tuple(
                    blob_messages.ProofSymbol(
                        source_index=index,
                        symbol=_filled(6, 0x30 + index),
                        proof=(_filled(32, index), _filled(32, index + 40)),
                    )
                    for index in range(3)
                ),
            ),
        ),
        "AttestInvalidBlobReply": blob_messages.AttestInvalidBlobReply(
            attestation=records.Signature(
                signer="12D3KooWRBhwfeP2Y9CDkFRBAZ1pmxUadH36TKuk3KtKm5XXP8mA",
                signature=_filled(64, 0x61),
            )
        ),
    }


def build_vectors() -> dict[str, object]:
    """The JSON document of ``tests/vectors/wire.json``."""
    return {
        "format": FORMAT,
        "regenerate": "python -m walrus_p2p.testing.wire_vectors tests/vectors/wire.json",
        "vectors": [
            {
                "name": name,
                "type": type(message).__name__,
                "type_id": wire.message_type_id(message),
                "hex": wire.encode(message).hex(),
            }
            for name, message in sample_messages().items()
        ],
    }


def render() -> str:
    return json.dumps(build_vectors(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m walrus_p2p.testing.wire_vectors PATH", file=sys.stderr)
        return 2
    Path(arguments[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
