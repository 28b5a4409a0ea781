"""The storage protocol of real in-process peers (4 peers, n = 10), request by request.

Each test drives the peers the way a writer or reader would, over real libp2p streams, and
checks both what the peer answers and what it keeps: refused data is never stored, and a peer
that got garbage keeps serving (a following request succeeds).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TypeVar

import pytest
import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.service import WalrusClient
from walrus_p2p.core import memory, records, wire
from walrus_p2p.core.blob_messages import (
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    encode_records,
)
from walrus_p2p.core.encoding import EncodingConfig, SliverType
from walrus_p2p.core.identity import PublicKey
from walrus_p2p.core.merkle import MerkleProof
from walrus_p2p.core.metadata import (
    EncodedBlobWithMetadata,
    RecoverySymbol,
    encode_blob,
    verify_metadata,
    verify_recovery_symbol,
    verify_sliver,
)
from walrus_p2p.errors import RemoteError, VerificationError, WalrusError
from walrus_p2p.net.framing import encode_header, read_frame, write_frame
from walrus_p2p.net.rpc import decode_reply
from walrus_p2p.net.stream import Stream
from walrus_p2p.node import slivers as slivers_module
from walrus_p2p.testing.network import TestNetwork, TestPeer, open_test_light_peer
from walrus_p2p.types import BlobId, PeerId, SliverKind

pytestmark = pytest.mark.timeout(60)

STEP = 20.0
"""Deadline for one network step: generous for a loaded 2-core machine."""

M = TypeVar("M", bound=wire.Message)
KINDS = (SliverKind.PRIMARY, SliverKind.SECONDARY)


# -- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    data: bytes
    encoded: EncodedBlobWithMetadata

    @property
    def blob_id(self) -> bytes:
        return bytes(self.encoded.blob_id)

    def sliver(self, pair: int, kind: SliverKind) -> bytes:
        n = self.encoded.metadata.shards
        if kind is SliverKind.PRIMARY:
            return bytes(self.encoded.encoded.sliver(SliverType.PRIMARY, pair))
        return bytes(self.encoded.encoded.sliver(SliverType.SECONDARY, n - 1 - pair))


def make_blob(network: TestNetwork, size: int = 50_000) -> Blob:
    data = secrets.token_bytes(size)
    return Blob(data, encode_blob(data, EncodingConfig.for_shards(network.genesis.n_shards)))


def pairs_of(network: TestNetwork, peer: TestPeer, blob_id: bytes) -> list[int]:
    """docs/design.md §3, computed here independently: pair p lives on shard
    (p + int(blob id)) % n."""
    n = network.genesis.n_shards
    offset = int.from_bytes(blob_id, "big")
    committee = network.genesis.committee
    return [p for p in range(n) if committee.peer_of((p + offset) % n) == peer.peer_id]


async def call(light: LightPeer, peer_id: PeerId, request: wire.Message, expected: type[M]) -> M:
    with trio.fail_after(STEP):
        return await light.call(peer_id, request, expected, timeout=STEP)


async def refusal(
    light: LightPeer, peer_id: PeerId, request: wire.Message, expected: type[wire.Message]
) -> str:
    """The reason code of a request the peer must refuse."""
    with trio.fail_after(STEP), pytest.raises(RemoteError) as caught:
        await light.call(peer_id, request, expected, timeout=STEP)
    return caught.value.reason


async def register(network: TestNetwork, light: LightPeer, peer: TestPeer, blob: Blob) -> None:
    record = records.sign_register(
        network.owner,
        network_id=network.genesis.network_id,
        blob_id=blob.blob_id,
        size=len(blob.data),
        start_epoch=0,
        end_epoch=3,
        deletable=True,
    )
    request = PostBlobRecordsRequest(blob_id=blob.blob_id, records=encode_records([record]))
    await call(light, peer.peer_id, request, PostBlobRecordsReply)


async def store_metadata(light: LightPeer, peer: TestPeer, blob: Blob) -> None:
    request = wire.StoreMetadataRequest(blob_id=blob.blob_id, metadata=blob.encoded.metadata)
    await call(light, peer.peer_id, request, wire.StoreMetadataReply)


def store_request(blob: Blob, pair: int, kind: SliverKind) -> wire.StoreSliverRequest:
    return wire.StoreSliverRequest(
        blob_id=blob.blob_id, pair_index=pair, sliver_kind=kind, data=blob.sliver(pair, kind)
    )


async def store_sliver(
    light: LightPeer, peer: TestPeer, blob: Blob, pair: int, kind: SliverKind
) -> None:
    await call(light, peer.peer_id, store_request(blob, pair, kind), wire.StoreSliverReply)


async def store_everything(
    network: TestNetwork, light: LightPeer, peer: TestPeer, blob: Blob
) -> list[int]:
    """Register, metadata and every owned sliver at ``peer``; returns its pairs."""
    await register(network, light, peer, blob)
    await store_metadata(light, peer, blob)
    pairs = pairs_of(network, peer, blob.blob_id)
    for pair in pairs:
        for kind in KINDS:
            await store_sliver(light, peer, blob, pair, kind)
    return pairs


async def get_sliver(
    light: LightPeer, peer: TestPeer, blob: Blob, pair: int, kind: SliverKind
) -> bytes:
    request = wire.GetSliverRequest(blob_id=blob.blob_id, pair_index=pair, sliver_kind=kind)
    return (await call(light, peer.peer_id, request, wire.GetSliverReply)).data


async def not_stored(
    light: LightPeer, peer: TestPeer, blob: Blob, pair: int, kind: SliverKind
) -> None:
    request = wire.GetSliverRequest(blob_id=blob.blob_id, pair_index=pair, sliver_kind=kind)
    assert await refusal(light, peer.peer_id, request, wire.GetSliverReply) == "SLIVER_NOT_FOUND"


async def status(light: LightPeer, peer: TestPeer, blob: Blob) -> wire.BlobStatusReply:
    request = wire.BlobStatusRequest(blob_id=blob.blob_id)
    return await call(light, peer.peer_id, request, wire.BlobStatusReply)


def confirmation_request(blob: Blob) -> wire.GetConfirmationRequest:
    return wire.GetConfirmationRequest(blob_id=blob.blob_id, epoch=0, permanent=False)


# -- store and get ----------------------------------------------------------------------------


async def test_store_then_get_round_trip_on_every_peer(
    network: TestNetwork, light: LightPeer
) -> None:
    blob = make_blob(network)
    owned: dict[PeerId, list[int]] = {}
    for peer in network.peers:
        owned[peer.peer_id] = await store_everything(network, light, peer, blob)
    # Every pair has exactly one home, and every peer of this committee holds some.
    assert sorted(p for pairs in owned.values() for p in pairs) == list(range(10))
    metadata = blob.encoded.metadata
    for peer in network.peers:
        reply = await call(
            light,
            peer.peer_id,
            wire.GetMetadataRequest(blob_id=blob.blob_id),
            wire.GetMetadataReply,
        )
        assert reply.metadata == metadata
        verify_metadata(reply.metadata, blob.blob_id)
        for pair in owned[peer.peer_id]:
            for kind in KINDS:
                data = await get_sliver(light, peer, blob, pair, kind)
                assert data == blob.sliver(pair, kind)
        # A pair that lives elsewhere is not here.
        other = next(p for p in range(10) if p not in owned[peer.peer_id])
        await not_stored(light, peer, blob, other, SliverKind.PRIMARY)


async def test_client_store_then_read_gives_identical_bytes(
    network: TestNetwork, client: WalrusClient
) -> None:
    data = secrets.token_bytes(123_457)
    with trio.fail_after(45):
        outcome = await client.store(data, epochs=2, permanent=False)
    with trio.fail_after(30):
        assert await client.read(outcome.blob_id) == data
    with trio.fail_after(30):
        assert await client.read(outcome.blob_id, strict=True) == data


async def test_big_slivers_are_stored_from_views_of_the_received_frames(
    network: TestNetwork, client: WalrusClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slivers of 4 MiB and more arrive in frames received into a bytearray: a peer stores a
    view of the frame (no copy), and a reader decodes from views into a read-only view."""
    data = secrets.token_bytes(20 << 20)  # n = 10: primary slivers of 5 MiB
    assert len(data) // 4 >= memory.MIN_HUGE_BYTES
    checked: list[tuple[type, int]] = []
    real_verify = slivers_module.verify_sliver

    def recording_verify(metadata: object, kind: object, index: int, sliver: object) -> None:
        checked.append((type(sliver), len(sliver)))  # type: ignore[arg-type]
        real_verify(metadata, kind, index, sliver)  # type: ignore[arg-type]

    monkeypatch.setattr(slivers_module, "verify_sliver", recording_verify)
    with trio.fail_after(60):
        outcome = await client.store(data, epochs=2, permanent=False)
    with trio.fail_after(30):
        assert await client.read(outcome.blob_id) == data
    with trio.fail_after(30):
        read = await client.read(outcome.blob_id)
    assert type(read) is memoryview and read.readonly and read == data
    big = {kind for kind, size in checked if size >= memory.MIN_HUGE_BYTES}
    small = {kind for kind, size in checked if size < memory.MIN_HUGE_BYTES}
    assert big == {memoryview} and small == {bytes}
    with trio.fail_after(30):
        assert await client.read(outcome.blob_id, strict=True) == data


# -- confirmations ----------------------------------------------------------------------------


async def test_confirmation_is_signed_only_after_every_owned_sliver_is_stored(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    await register(network, light, alice, blob)
    await store_metadata(light, alice, blob)
    pairs = pairs_of(network, alice, blob.blob_id)
    assert pairs, "alice holds shards in this committee"
    wanted = [(pair, kind) for pair in pairs for kind in KINDS]
    request = confirmation_request(blob)
    reply_type = wire.GetConfirmationReply
    assert await refusal(light, alice.peer_id, request, reply_type) == "SLIVERS_MISSING"
    for pair, kind in wanted[:-1]:
        await store_sliver(light, alice, blob, pair, kind)
        # One sliver short is still not enough.
        assert await refusal(light, alice.peer_id, request, reply_type) == "SLIVERS_MISSING"
    await store_sliver(light, alice, blob, *wanted[-1])
    signed = (await call(light, alice.peer_id, request, reply_type)).confirmation

    body = signed.confirmation
    member_key = network.genesis.committee.member(alice.peer_id).public_key
    assert body.blob_id == blob.blob_id
    assert body.epoch == 0
    assert body.network_id == network.genesis.network_id
    assert body.permanent is False
    assert body.public_key == member_key
    key = PublicKey(member_key)
    key.verify(records.CONFIRMATION_CONTEXT, wire.signing_bytes(body), signed.signature)
    forged = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    assert not key.is_valid_signature(
        records.CONFIRMATION_CONTEXT, wire.signing_bytes(body), forged
    )

    # A permanent confirmation needs a permanent registration; another epoch is refused.
    permanent = wire.GetConfirmationRequest(blob_id=blob.blob_id, epoch=0, permanent=True)
    assert await refusal(light, alice.peer_id, permanent, reply_type) == "NOT_PERMANENT"
    future = wire.GetConfirmationRequest(blob_id=blob.blob_id, epoch=1, permanent=False)
    assert await refusal(light, alice.peer_id, future, reply_type) == "WRONG_EPOCH"


# -- refusals ---------------------------------------------------------------------------------


async def test_sliver_for_a_shard_the_peer_does_not_own_is_refused(
    network: TestNetwork, light: LightPeer, alice: TestPeer, bob: TestPeer
) -> None:
    blob = make_blob(network)
    await register(network, light, alice, blob)
    await store_metadata(light, alice, blob)
    foreign = pairs_of(network, bob, blob.blob_id)[0]
    assert foreign not in pairs_of(network, alice, blob.blob_id)
    for kind in KINDS:
        # A perfectly valid sliver, but bob's to keep.
        reason = await refusal(
            light, alice.peer_id, store_request(blob, foreign, kind), wire.StoreSliverReply
        )
        assert reason == "SHARD_NOT_OWNED"
        await not_stored(light, alice, blob, foreign, kind)
    # An index that is no pair at all is rejected too (schema or ownership, never stored).
    with trio.fail_after(STEP), pytest.raises(RemoteError):
        bad = wire.StoreSliverRequest(
            blob_id=blob.blob_id,
            pair_index=200,
            sliver_kind=SliverKind.PRIMARY,
            data=blob.sliver(0, SliverKind.PRIMARY),
        )
        await light.call(alice.peer_id, bad, wire.StoreSliverReply, timeout=STEP)
    assert (await status(light, alice, blob)).stored_pair_indices == ()


async def test_sliver_that_does_not_match_the_metadata_is_refused(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    await register(network, light, alice, blob)
    await store_metadata(light, alice, blob)
    mine = pairs_of(network, alice, blob.blob_id)
    pair = mine[0]
    other_pair = (pair + 1) % 10
    good = blob.sliver(pair, SliverKind.PRIMARY)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    other_blob = make_blob(network)
    candidates = {
        "one bit flipped": bytes(flipped),
        "another pair's sliver": blob.sliver(other_pair, SliverKind.PRIMARY),
        "the same pair of another blob": other_blob.sliver(pair, SliverKind.PRIMARY),
        "truncated": good[:-2],
        "secondary sent as primary": blob.sliver(pair, SliverKind.SECONDARY),
    }
    for what, data in candidates.items():
        request = wire.StoreSliverRequest(
            blob_id=blob.blob_id, pair_index=pair, sliver_kind=SliverKind.PRIMARY, data=data
        )
        reason = await refusal(light, alice.peer_id, request, wire.StoreSliverReply)
        assert reason == "SLIVER_MISMATCH", what
        await not_stored(light, alice, blob, pair, SliverKind.PRIMARY)
    # The genuine sliver is still accepted afterwards, and it is what is served.
    await store_sliver(light, alice, blob, pair, SliverKind.PRIMARY)
    assert await get_sliver(light, alice, blob, pair, SliverKind.PRIMARY) == good


async def test_sliver_before_metadata_is_refused(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    await register(network, light, alice, blob)
    pair = pairs_of(network, alice, blob.blob_id)[0]
    reason = await refusal(
        light, alice.peer_id, store_request(blob, pair, SliverKind.PRIMARY), wire.StoreSliverReply
    )
    assert reason == "METADATA_MISSING"
    await not_stored(light, alice, blob, pair, SliverKind.PRIMARY)


async def test_metadata_without_register_record_is_refused(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    request = wire.StoreMetadataRequest(blob_id=blob.blob_id, metadata=blob.encoded.metadata)
    assert (
        await refusal(light, alice.peer_id, request, wire.StoreMetadataReply)
        == "BLOB_NOT_REGISTERED"
    )
    get = wire.GetMetadataRequest(blob_id=blob.blob_id)
    assert await refusal(light, alice.peer_id, get, wire.GetMetadataReply) == "BLOB_UNKNOWN"
    assert not (await status(light, alice, blob)).has_metadata
    # Metadata that does not hash to the blob id is refused even once registered.
    await register(network, light, alice, blob)
    other = make_blob(network)
    wrong = wire.StoreMetadataRequest(blob_id=blob.blob_id, metadata=other.encoded.metadata)
    assert (
        await refusal(light, alice.peer_id, wrong, wire.StoreMetadataReply) == "METADATA_MISMATCH"
    )
    # The genuine metadata, after the register record, is accepted.
    await store_metadata(light, alice, blob)
    assert (await call(light, alice.peer_id, get, wire.GetMetadataReply)).metadata == (
        blob.encoded.metadata
    )


async def test_register_record_with_a_bad_signature_is_refused(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    record = records.sign_register(
        network.owner,
        network_id=network.genesis.network_id,
        blob_id=blob.blob_id,
        size=len(blob.data),
        start_epoch=0,
        end_epoch=3,
        deletable=True,
    )
    forged = records.BlobRegister(record.body, bytes(64))
    request = PostBlobRecordsRequest(blob_id=blob.blob_id, records=encode_records([forged]))
    assert await refusal(light, alice.peer_id, request, PostBlobRecordsReply) == "RECORD_INVALID"
    metadata = wire.StoreMetadataRequest(blob_id=blob.blob_id, metadata=blob.encoded.metadata)
    assert (
        await refusal(light, alice.peer_id, metadata, wire.StoreMetadataReply)
        == "BLOB_NOT_REGISTERED"
    )


# -- malformed traffic on the raw stream --------------------------------------------------------


async def open_raw(light: LightPeer, peer: TestPeer) -> Stream:
    # A successful request first: it dials, so the raw stream needs no addresses of its own.
    await call(light, peer.peer_id, wire.BlobStatusRequest(blob_id=bytes(32)), wire.BlobStatusReply)
    with trio.fail_after(STEP):
        return await light.host.open_stream(peer.peer_id, light.protocol)


async def reply_reason(stream: Stream) -> str:
    """Read the peer's reply frame; it must be an error reply: return its reason."""
    frame = await read_frame(stream, max_size=1 << 20, timeout=STEP)
    with pytest.raises(RemoteError) as caught:
        decode_reply(frame)
    return caught.value.reason


async def assert_still_serving(network: TestNetwork, light: LightPeer, peer: TestPeer) -> None:
    """A following full request (register record) succeeds: the peer survived."""
    blob = make_blob(network, size=1000)
    await register(network, light, peer, blob)
    assert (await status(light, peer, blob)).known


async def test_oversized_frame_gets_an_error_and_the_peer_keeps_serving(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    stream = await open_raw(light, alice)
    try:
        with trio.fail_after(STEP):
            await stream.write(encode_header(2**32 - 1))
            assert await reply_reason(stream) == "WIRE_MALFORMED"
            assert await stream.read(1) == b""  # and the peer closed the stream
    finally:
        await stream.reset()
    await assert_still_serving(network, light, alice)


async def test_garbage_bytes_get_an_error_and_the_peer_keeps_serving(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    valid_reply = wire.encode(wire.StoreSliverReply())  # a reply is not a request
    unknown_type = bytes([0x82, 0x18, 0xFE, 0xA0])  # CBOR [254, {}]: no such message type
    for payload in (secrets.token_bytes(300), b"\xff" * 64, valid_reply, unknown_type, b""):
        stream = await open_raw(light, alice)
        try:
            with trio.fail_after(STEP):
                await write_frame(stream, payload, max_size=len(payload))
                await stream.close_write()
                assert await reply_reason(stream) == "WIRE_MALFORMED", payload[:16]
        finally:
            await stream.reset()
    await assert_still_serving(network, light, alice)


async def test_stream_cut_mid_frame_is_not_taken_as_a_request(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    await register(network, light, alice, blob)
    await store_metadata(light, alice, blob)
    pair = pairs_of(network, alice, blob.blob_id)[0]
    whole = wire.encode(store_request(blob, pair, SliverKind.PRIMARY))
    # Half a valid StoreSliver frame, then a clean end of stream (FIN): the peer must see a
    # truncated frame, answer with an error and store nothing.
    stream = await open_raw(light, alice)
    try:
        with trio.fail_after(STEP):
            await stream.write(encode_header(len(whole)) + whole[: len(whole) // 2])
            await stream.close_write()
            assert await reply_reason(stream) == "WIRE_MALFORMED"
    finally:
        await stream.reset()
    # The same, but the stream is reset mid-frame: nothing to answer, nothing stored.
    stream = await open_raw(light, alice)
    try:
        with trio.fail_after(STEP):
            await stream.write(encode_header(len(whole)) + whole[:1000])
    finally:
        await stream.reset()
    await not_stored(light, alice, blob, pair, SliverKind.PRIMARY)
    assert (await status(light, alice, blob)).stored_pair_indices == ()
    # The peer still serves, and takes the whole sliver when it arrives whole.
    await store_sliver(light, alice, blob, pair, SliverKind.PRIMARY)
    assert await get_sliver(light, alice, blob, pair, SliverKind.PRIMARY) == blob.sliver(
        pair, SliverKind.PRIMARY
    )


# -- recovery symbols and status --------------------------------------------------------------


async def test_recovery_symbol_verifies_against_the_metadata(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    pairs = await store_everything(network, light, alice, blob)
    metadata = blob.encoded.metadata
    n = metadata.shards
    pair = pairs[0]
    for kind, source_type, source_index in (
        (SliverKind.PRIMARY, SliverType.PRIMARY, pair),
        (SliverKind.SECONDARY, SliverType.SECONDARY, n - 1 - pair),
    ):
        for target in (0, n // 2, n - 1):
            request = wire.GetRecoverySymbolRequest(
                blob_id=blob.blob_id,
                source_pair_index=pair,
                source_kind=kind,
                target_index=target,
            )
            reply = await call(light, alice.peer_id, request, wire.GetRecoverySymbolReply)
            symbol = RecoverySymbol(
                target_type=source_type.other,
                target_index=target,
                source_index=source_index,
                symbol=reply.symbol,
                proof=MerkleProof(tuple(reply.proof)),
            )
            verify_recovery_symbol(metadata, symbol)
            # The check has teeth: a changed symbol, or the proof for another target, fails.
            changed = bytes([reply.symbol[0] ^ 1]) + reply.symbol[1:]
            with pytest.raises(VerificationError):
                verify_recovery_symbol(
                    metadata,
                    RecoverySymbol(source_type.other, target, source_index, changed, symbol.proof),
                )
            with pytest.raises(VerificationError):
                verify_recovery_symbol(
                    metadata,
                    RecoverySymbol(
                        source_type.other,
                        (target + 1) % n,
                        source_index,
                        reply.symbol,
                        symbol.proof,
                    ),
                )
    # The symbols are the real matrix cells: a primary sliver's own first symbols come back
    # (row ``pair`` of the expanded matrix starts with the primary sliver's symbols).
    size = metadata.symbol_size
    primary = blob.sliver(pair, SliverKind.PRIMARY)
    request = wire.GetRecoverySymbolRequest(
        blob_id=blob.blob_id, source_pair_index=pair, source_kind=SliverKind.PRIMARY, target_index=1
    )
    reply = await call(light, alice.peer_id, request, wire.GetRecoverySymbolReply)
    assert reply.symbol == primary[size : 2 * size]
    # A sliver the peer does not hold gives no symbol.
    missing = next(p for p in range(n) if p not in pairs)
    request = wire.GetRecoverySymbolRequest(
        blob_id=blob.blob_id,
        source_pair_index=missing,
        source_kind=SliverKind.PRIMARY,
        target_index=0,
    )
    reason = await refusal(light, alice.peer_id, request, wire.GetRecoverySymbolReply)
    assert reason == "SLIVER_NOT_FOUND"
    # A target beyond the n symbols of a sliver is a bad request, not a crash.
    request = wire.GetRecoverySymbolRequest(
        blob_id=blob.blob_id,
        source_pair_index=pair,
        source_kind=SliverKind.PRIMARY,
        target_index=n,
    )
    reason = await refusal(light, alice.peer_id, request, wire.GetRecoverySymbolReply)
    assert reason == "BAD_REQUEST"


async def test_recovery_symbols_in_one_request_verify_and_leave_out_what_is_not_held(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    pairs = await store_everything(network, light, alice, blob)
    metadata = blob.encoded.metadata
    n = metadata.shards
    missing = next(p for p in range(n) if p not in pairs)
    asked = tuple(sorted([*pairs, missing]))
    for kind, source_type in (
        (SliverKind.PRIMARY, SliverType.PRIMARY),
        (SliverKind.SECONDARY, SliverType.SECONDARY),
    ):
        request = wire.GetRecoverySymbolsRequest(
            blob_id=blob.blob_id, source_kind=kind, source_pair_indices=asked, target_index=1
        )
        reply = await call(light, alice.peer_id, request, wire.GetRecoverySymbolsReply)
        # Every held pair, in the order asked; the pair not held is left out.
        assert [item.source_pair_index for item in reply.symbols] == sorted(pairs)
        for item in reply.symbols:
            pair = item.source_pair_index
            index = pair if kind is SliverKind.PRIMARY else n - 1 - pair
            symbol = RecoverySymbol(
                source_type.other, 1, index, item.symbol, MerkleProof(tuple(item.proof))
            )
            verify_recovery_symbol(metadata, symbol)
            # The same bytes as the one-symbol request gives.
            single = wire.GetRecoverySymbolRequest(
                blob_id=blob.blob_id, source_pair_index=pair, source_kind=kind, target_index=1
            )
            one = await call(light, alice.peer_id, single, wire.GetRecoverySymbolReply)
            assert (one.symbol, one.proof) == (item.symbol, item.proof)
    # Nothing held of what was asked: refused as not found; a target or pair beyond n: bad.
    only_missing = wire.GetRecoverySymbolsRequest(
        blob_id=blob.blob_id,
        source_kind=SliverKind.PRIMARY,
        source_pair_indices=(missing,),
        target_index=0,
    )
    reason = await refusal(light, alice.peer_id, only_missing, wire.GetRecoverySymbolsReply)
    assert reason == "SLIVER_NOT_FOUND"
    beyond = tuple(sorted({pairs[0], n}))
    for pairs_asked, target in (((pairs[0],), n), (beyond, 0)):
        bad = wire.GetRecoverySymbolsRequest(
            blob_id=blob.blob_id,
            source_kind=SliverKind.PRIMARY,
            source_pair_indices=pairs_asked,
            target_index=target,
        )
        reason = await refusal(light, alice.peer_id, bad, wire.GetRecoverySymbolsReply)
        assert reason == "BAD_REQUEST"


async def test_blob_status_reflects_the_stored_pairs(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    fresh = await status(light, alice, blob)
    assert (fresh.known, fresh.has_metadata, fresh.stored_pair_indices) == (False, False, ())
    await register(network, light, alice, blob)
    registered = await status(light, alice, blob)
    assert (registered.known, registered.has_metadata) == (True, False)
    assert registered.end_epoch == 3 and registered.certified_epoch is None
    await store_metadata(light, alice, blob)
    assert (await status(light, alice, blob)).has_metadata
    pairs = pairs_of(network, alice, blob.blob_id)
    assert len(pairs) >= 2
    expected: list[int] = []
    for pair in pairs:
        await store_sliver(light, alice, blob, pair, SliverKind.PRIMARY)
        # Half a pair is not a stored pair.
        assert list((await status(light, alice, blob)).stored_pair_indices) == expected
        await store_sliver(light, alice, blob, pair, SliverKind.SECONDARY)
        expected = sorted([*expected, pair])
        assert list((await status(light, alice, blob)).stored_pair_indices) == expected
    assert expected == sorted(pairs)
    for pair in pairs:
        for kind in KINDS:
            index = pair if kind is SliverKind.PRIMARY else 9 - pair
            sliver_type = SliverType.PRIMARY if kind is SliverKind.PRIMARY else SliverType.SECONDARY
            data = await get_sliver(light, alice, blob, pair, kind)
            verify_sliver(blob.encoded.metadata, sliver_type, index, data)


# -- concurrency and stalled clients ----------------------------------------------------------


async def test_the_same_metadata_and_sliver_stored_concurrently_is_idempotent(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    blob = make_blob(network)
    await register(network, light, alice, blob)
    pair = pairs_of(network, alice, blob.blob_id)[0]
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(store_metadata, light, alice, blob)
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                for kind in KINDS:
                    nursery.start_soon(store_sliver, light, alice, blob, pair, kind)
    for kind in KINDS:
        assert await get_sliver(light, alice, blob, pair, kind) == blob.sliver(pair, kind)
    assert list((await status(light, alice, blob)).stored_pair_indices) == [pair]


async def test_stalled_streams_do_not_block_other_clients(
    network: TestNetwork, light: LightPeer, alice: TestPeer
) -> None:
    """Forty streams that send half a frame and then nothing: the peer still answers others."""
    streams: list[Stream] = []
    try:
        first = await open_raw(light, alice)
        streams.append(first)
        for _ in range(39):
            with trio.fail_after(STEP):
                streams.append(await light.host.open_stream(alice.peer_id, light.protocol))
        with trio.fail_after(STEP):
            for stream in streams:
                await stream.write(encode_header(1000) + b"x" * 10)
        async with open_test_light_peer(network, "other") as other:
            await assert_still_serving(network, other, alice)
        # The stalled client's own connection still works for new requests too.
        await assert_still_serving(network, light, alice)
    finally:
        for stream in streams:
            await stream.reset()


async def test_read_after_a_peer_stops_gives_identical_bytes(
    network: TestNetwork, client: WalrusClient
) -> None:
    data = secrets.token_bytes(200_001)
    with trio.fail_after(45):
        outcome = await client.store(data, epochs=2, permanent=False)
    committee = network.genesis.committee
    largest = max(network.peers, key=lambda peer: len(committee.shards_of(peer.peer_id)))
    assert 10 - len(committee.shards_of(largest.peer_id)) >= 4  # kp = 4 primaries remain
    largest.stop()
    # It is really gone: a request to it fails.
    ping = wire.BlobStatusRequest(blob_id=outcome.blob_id)
    with trio.fail_after(STEP), pytest.raises(WalrusError):
        await client.light.call(largest.peer_id, ping, wire.BlobStatusReply, timeout=2.0)
    with trio.fail_after(45):
        assert await client.read(outcome.blob_id) == data


async def test_a_client_with_a_cache_reads_known_blobs_without_asking_again(
    network: TestNetwork,
) -> None:
    """A long-running client (gateway, agent) keeps verified metadata, so a second read asks
    no peer for it, and small blobs for a while, so a third read asks nothing at all; its own
    delete drops them (client/cache.py)."""
    from walrus_p2p.client.cache import CacheOptions
    from walrus_p2p.net.traffic import TRAFFIC
    from walrus_p2p.testing.network import open_test_client

    data = secrets.token_bytes(5000)
    async with (
        open_test_client(network, cache=CacheOptions(blob_bytes=0)) as metadata_only,
        open_test_client(network, cache=CacheOptions()) as caching,
    ):
        with trio.fail_after(60):
            stored = await metadata_only.store(data, epochs=3, permanent=False)
            blob = stored.blob_id
            assert bytes(await metadata_only.read(blob)) == data
            before = TRAFFIC.messages.copy()
            assert bytes(await metadata_only.read(blob)) == data
            sent = TRAFFIC.messages - before
            assert sent["GetMetadataRequest"] == 0
            assert sent["GetSliverRequest"] + sent["GetSliversRequest"] > 0

            assert bytes(await caching.read(blob)) == data
            before = TRAFFIC.messages.copy()
            assert bytes(await caching.read(blob)) == data
            assert bytes(await caching.read_range(blob, 10, 20)) == data[10:30]
            sent = TRAFFIC.messages - before
            assert sum(sent.values()) == 0, sent
            assert caching.cache is not None and caching.cache.hits["blob"] == 2
            # A certified status is kept too (the gateway asks for it before every read).
            assert (await caching.blob_status(blob)).state == "certified"
            before = TRAFFIC.messages.copy()
            assert (await caching.blob_status(blob)).state == "certified"
            assert sum((TRAFFIC.messages - before).values()) == 0
            # A strict read decodes again (it re-encodes to check the blob id).
            assert bytes(await caching.read(blob, strict=True)) == data

            await metadata_only.delete(blob)
            assert metadata_only.cache is not None
            assert metadata_only.cache.metadata(blob) is None


async def test_a_small_blob_is_read_with_one_request_per_peer(
    network: TestNetwork, client: WalrusClient
) -> None:
    """docs/protocol.md, "Reading a small blob": the first kp slivers come in one
    GetSliversRequest per peer holding two or more of them; a peer refuses it for a blob with
    large slivers before reading any; a bad sliver in a batch is caught and routed around."""
    from walrus_p2p.client.read import ReadOptions, fetch_metadata, fetch_slivers_in_batches
    from walrus_p2p.core.blob_messages import GetSliversReply, GetSliversRequest
    from walrus_p2p.net.traffic import TRAFFIC
    from walrus_p2p.node.protocol import owned_pairs

    data = secrets.token_bytes(2000)
    with trio.fail_after(60):
        blob = (await client.store(data, epochs=2, permanent=False, wait_all=True)).blob_id
        metadata = await fetch_metadata(client.light, blob, timeout=10)
    # Every primary sliver one peer holds: one request brings them all, each verified.
    committee = network.genesis.committee
    holder = max(network.peers, key=lambda peer: len(committee.shards_of(peer.peer_id)))
    wanted = owned_pairs(committee, holder.peer_id, blob)
    assert len(wanted) >= 2
    got: dict[int, bytes] = {}
    before = TRAFFIC.messages.copy()
    with trio.fail_after(30):
        await fetch_slivers_in_batches(
            client.light, blob, metadata, SliverType.PRIMARY, wanted, got, ReadOptions(), set()
        )
    sent = TRAFFIC.messages - before
    assert sorted(got) == wanted
    assert sent["GetSliversRequest"] == 1 and sent["GetSliverRequest"] == 0, sent
    with trio.fail_after(60):
        assert bytes(await client.read(blob)) == data

    large = secrets.token_bytes(1_500_000)  # slivers above 64 KiB at n = 10
    with trio.fail_after(60):
        big = (await client.store(large, epochs=2, permanent=False)).blob_id
    with pytest.raises(RemoteError) as refused:
        with trio.fail_after(30):
            await client.light.call(
                holder.peer_id,
                GetSliversRequest(blob_id=big, sliver_kind=SliverKind.PRIMARY, pair_indices=(0, 1)),
                GetSliversReply,
                timeout=10,
            )
    assert refused.value.reason == "SLIVERS_TOO_LARGE"

    # One peer corrupts every sliver it serves: the batched read catches it and reads on.
    from walrus_p2p.node.faults import flip_one_byte

    honest = holder.service.router.handler(wire.GetSliverRequest)

    async def corrupt(request: wire.GetSliverRequest, remote: str) -> wire.GetSliverReply:
        reply: wire.GetSliverReply = await honest(request, remote)
        return wire.GetSliverReply(data=flip_one_byte(reply.data))

    holder.service.router.replace(wire.GetSliverRequest, corrupt)
    with trio.fail_after(60):
        assert bytes(await client.read(blob)) == data


async def test_questions_about_unknown_blob_ids_leave_no_state_behind(
    network: TestNetwork, client: WalrusClient
) -> None:
    """Anyone may name any blob id; the record book keeps no state for ids without records
    (the fuzzing campaign found ~40 MiB per million such requests; docs/security.md)."""
    peer = network.peers[0]
    book = peer.service.records
    before = len(book._states)
    with trio.fail_after(30):
        for _ in range(50):
            unknown = BlobId(secrets.token_bytes(32))
            state = await book.blob_state(unknown)
            assert not state.registrations
    assert len(book._states) == before
    data = secrets.token_bytes(500)
    with trio.fail_after(60):
        stored = await client.store(data, epochs=2, permanent=False, wait_all=True)
    assert stored.blob_id in book._states
