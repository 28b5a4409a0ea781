"""Fuzzing every handler of a running storage peer, short and reproducible (docs/testing.md,
"Fuzzing").

One in-process network of 4 peers (epochs on, one stored blob); peer 1's request handlers (each
request type of the storage protocol, the epochs protocol) and gossip validators get fuzzed
payloads from fuzzed remote ids (``walrus_p2p/testing/fuzz.py``, fixed seeds), called directly,
and a smaller sample goes over real streams from a stranger's host through ``serve_stream``. Any
crash, hang or INTERNAL reply fails. ``bench/fuzz.py`` runs the same with a million inputs per
handler.
"""

from __future__ import annotations

import random

import trio

from walrus_p2p.core import records, wire
from walrus_p2p.core.blob_messages import BlobRecordsBatch, PostBlobRecordsRequest
from walrus_p2p.core.economy_messages import CertificatesBatch
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import RemoteError
from walrus_p2p.testing import fuzz
from walrus_p2p.testing.network import open_test_host
from walrus_p2p.types import BlobId

INPUTS = 150
"""Per handler, called directly."""
STREAMED = 12
"""Per request/reply handler, over real streams."""


async def test_every_handler_survives_fuzzed_requests() -> None:
    async with fuzz.open_fuzz_network() as peer:
        service = peer.service
        names = {target.name for target in peer.targets}
        # Every handler the peer serves strangers is a target (handler_targets raises on a
        # protocol or topic it has no fuzz types for).
        assert {f"storage/{cls.__name__}" for cls in service.router.request_types} <= names
        assert {"epochs/EpochMessagesRequest", "gossip/blob-records", "gossip/epochs"} <= names
        failures: list[dict[str, str]] = []
        answered = 0
        for target in peer.targets:
            fuzzer = fuzz.Fuzzer(random.Random(target.name), peer.hints, service.limits)
            tally = fuzz.Tally(target.name)
            for number, (payload, remote) in enumerate(fuzz.inputs_for(target, fuzzer, INPUTS)):
                if target.rpc is not None:
                    outcome = await fuzz.run_rpc(target.rpc, payload, remote)
                else:
                    outcome = fuzz.run_validator(target, payload, remote, number)
                tally.add(outcome, payload, remote)
            answered += tally.kinds().get("ok", 0)
            failures += tally.failures
        async with open_test_host("fuzz-stranger") as stranger:
            stranger.host.add_addrs(service.peer_id, service.host.listen_addrs)
            for target in peer.targets:
                if target.rpc is None:
                    continue
                fuzzer = fuzz.Fuzzer(random.Random(target.name + "/streams"), peer.hints)
                for payload, _ in fuzz.inputs_for(target, fuzzer, STREAMED):
                    try:
                        reply = await stranger.host.request(
                            service.peer_id, target.protocol, payload, timeout=20.0
                        )
                    except RemoteError as error:
                        assert error.reason != "INTERNAL", (target.name, payload.hex())
                        continue
                    wire.decode(reply, fuzz.ALL_TYPES)
        assert failures == []
        assert answered > INPUTS * 3  # the inputs reach the handlers, not only the decoder
        peer.network.nursery.cancel_scope.cancel()


async def test_a_register_record_beyond_the_storable_epochs_is_refused() -> None:
    """Fuzzing regression: the record the fuzzer posted (self-signed, ending at epoch
    11707992513525541956) was merged and announced on gossip, and every peer that merged it
    stopped: its gossip reader failed on the store's refusal of the epoch."""
    async with fuzz.open_fuzz_network(stored_blobs=0) as peer:
        service = peer.service
        stranger = Identity.from_seed(bytes(range(32)))
        blob_id = BlobId(bytes(range(1, 33)))
        register = records.sign_register(
            stranger,
            network_id=service.genesis.network_id,
            blob_id=blob_id,
            size=1,
            start_epoch=0,
            end_epoch=11_707_992_513_525_541_956,
            deletable=True,
        )
        payload = wire.encode(PostBlobRecordsRequest(blob_id, (wire.encode(register),)))
        outcome = await fuzz.run_rpc(service.router.dispatch, payload, stranger.peer_id)
        assert (outcome.kind, outcome.reason) == ("refused", "RECORD_INVALID")
        await trio.sleep(1.0)  # a gossip announcement would have gone out by now
        assert all(member.running for member in peer.network.peers)
        peer.network.nursery.cancel_scope.cancel()


async def test_empty_gossip_batches_are_not_relayed() -> None:
    """Fuzzing regression: the certified-orders validator accepted 81,158 of a million fuzzed
    messages, empty batches among them (no certificate to check, so nothing failed), and would
    have relayed them over the whole network; blob-records did the same."""
    async with fuzz.open_fuzz_network(stored_blobs=0) as peer:
        by_name = {target.name: target for target in peer.targets}
        remote = Identity.from_seed(bytes(32)).peer_id
        for name, payload in [
            ("gossip/blob-records", wire.encode(BlobRecordsBatch(()))),
            ("gossip/certified-orders", wire.encode(CertificatesBatch(()))),
        ]:
            outcome = fuzz.run_validator(by_name[name], payload, remote, 1)
            assert (outcome.kind, outcome.reason) == ("refused", "REJECTED"), name
        peer.network.nursery.cancel_scope.cancel()
