"""Storage challenges on an in-process network (docs/challenges.md).

Four peers, eight shards, epochs of a few seconds; healing off, so a deleted sliver stays
deleted (a peer that rebuilds its slivers before the window holds them, and passes: that is
not what these tests are about). Blobs are stored in epoch 0; the round of epoch 1 challenges
them. Every wait has a deadline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from walrus_p2p.client.challenges import fetch_availability
from walrus_p2p.core import wire
from walrus_p2p.core.challenge_messages import (
    AvailabilityCertificate,
    ChallengeResponseRequest,
    ChallengeTicketRequest,
    GetAvailabilityCertificatesReply,
    GetAvailabilityCertificatesRequest,
    PostAvailabilityCertificatesReply,
    PostAvailabilityCertificatesRequest,
)
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import RemoteError, WalrusError
from walrus_p2p.net.framing import read_frame, write_frame
from walrus_p2p.net.rpc import decode_reply
from walrus_p2p.node.challenges import ChallengeOptions
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.faults import FORGET_SLIVERS
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.testing.epochs import FAST_TIMEOUTS
from walrus_p2p.testing.network import (
    NetworkOptions,
    TestNetwork,
    TestPeer,
    open_network,
    open_test_client,
    open_test_light_peer,
)
from walrus_p2p.types import Epoch, PeerId

EPOCH_SECONDS = 12
ROUND_TIMEOUT = 60.0
"""Upper bound for reaching an epoch and finishing its round on a loaded 2-core machine."""
STEP = 20.0


@asynccontextmanager
async def challenge_network(faults: dict[int, str] | None = None) -> AsyncIterator[TestNetwork]:
    options = NetworkOptions(
        n_shards=8,
        network="challenges-inproc",
        epochs=EpochOptions(timeouts=FAST_TIMEOUTS),
        epoch_seconds=EPOCH_SECONDS,
        start_in=1.0,
        healing=HealingOptions(enabled=False),
        inline_limit=0,  # slivers are files, which a test can remove behind the peer's back
        request_timeout=20.0,
        faults=faults or {},
        challenges=ChallengeOptions(window_seconds=5.0, request_timeout=5.0),
    )
    async with open_network(4, options) as network:
        yield network


async def store_blobs(network: TestNetwork, count: int = 3) -> None:
    async with open_test_client(network) as client:
        for index in range(count):
            data = bytes((index * 13 + i) % 256 for i in range(5000 + index))
            with trio.fail_after(STEP):
                await client.store(data, epochs=10, permanent=False)


async def finish_round(network: TestNetwork, epoch: int) -> None:
    await network.wait_epoch(epoch, timeout=ROUND_TIMEOUT)
    with trio.fail_after(ROUND_TIMEOUT):
        for peer in network.running():
            await peer.running.challenges.finished(epoch).wait()


async def certified(peer: TestPeer, epoch: int) -> set[str]:
    return set(await peer.running.challenges.certificates(epoch))


async def test_honest_peers_get_certificates_and_a_peer_that_lost_its_files_does_not() -> None:
    async with challenge_network() as network:
        await store_blobs(network)
        await finish_round(network, 1)
        everyone = {peer.peer_id for peer in network.peers}
        for peer in network.peers:
            assert await certified(peer, 1) == everyone, peer.name
            assert peer.running.challenges.last_certified_epoch == 1
            assert peer.running.challenges.last_pass is not None
            assert peer.running.challenges.last_pass.blobs == 3

        # Remove peer1's sliver files while it runs (identity, process and database kept).
        victim = network.peers[1]
        removed = [path for path in (victim.store_dir / "slivers").rglob("*") if path.is_file()]
        assert removed
        for path in removed:
            path.unlink()
        await finish_round(network, 2)
        for peer in network.peers:
            assert await certified(peer, 2) == everyone - {victim.peer_id}, peer.name
        assert victim.running.challenges.last_certified_epoch == 1
        failures = network.peers[0].running.challenges.metrics.failures
        assert failures.labels(member=victim.peer_id[:12])._value.get() >= 1

        async with open_test_light_peer(network) as light:
            with trio.fail_after(STEP):
                report = await fetch_availability(light, 2)
                latest = await fetch_availability(light, 1)
        assert set(report.certified) == everyone - {victim.peer_id}
        assert not next(m for m in report.members if m.peer_id == victim.peer_id).certified
        assert set(latest.certified) == everyone

        # The gateway's /status names the newest epoch whose challenge certified a quorum:
        # epoch 2 (three of four members, 6 of 8 shards).
        async with open_test_client(network) as client:
            with trio.fail_after(STEP):
                status = await client.network_status()
        assert status.challenge_epoch == 2


async def test_a_peer_that_confirms_slivers_it_never_stored_gets_no_certificate() -> None:
    async with challenge_network({3: FORGET_SLIVERS}) as network:
        await store_blobs(network, 2)
        forgetful = network.peers[3]
        assert not list((forgetful.store_dir / "slivers").rglob("*.*"))
        await finish_round(network, 1)
        honest = {peer.peer_id for peer in network.peers[:3]}
        for peer in network.peers:
            assert await certified(peer, 1) == honest, peer.name
        assert forgetful.running.challenges.last_certified_epoch is None


async def test_bad_challenge_input_is_refused_with_stable_reasons() -> None:
    async with challenge_network() as network:
        await store_blobs(network, 1)
        await finish_round(network, 1)
        alice, bob = network.peers[0], network.peers[1]
        kept = await alice.running.challenges.certificates(1)
        good = kept[bob.peer_id]
        async with open_test_light_peer(network) as light:

            async def refused(request: wire.Message, expected: type[wire.Message]) -> str:
                with pytest.raises(RemoteError) as caught, trio.fail_after(STEP):
                    await light.call(alice.peer_id, request, expected, timeout=STEP)
                return caught.value.reason

            # A forged PASS, a certificate for another epoch, one too short for a quorum.
            forged = dataclasses.replace(
                good,
                passes=tuple(
                    sorted(
                        [
                            *good.passes[:-1],
                            Signature(good.passes[-1].signer, b"\x01" * 64),
                        ]
                    )
                ),
            )
            wrong_epoch = dataclasses.replace(good, epoch=Epoch(7))
            short = dataclasses.replace(good, passes=good.passes[:1])
            for bad in (forged, wrong_epoch, short):
                post = PostAvailabilityCertificatesRequest((bad,))
                assert await refused(post, PostAvailabilityCertificatesReply) == (
                    "CERTIFICATE_INVALID"
                )
            # Tickets and responses: from a non-member, for a future epoch, for a past one.
            ticket = ChallengeTicketRequest(Epoch(99))
            assert await refused(ticket, wire.Message) == "CHALLENGE_NOT_STARTED"
            assert await refused(ChallengeTicketRequest(Epoch(0)), wire.Message) in (
                "CHALLENGE_CLOSED",
                "CHALLENGE_NOT_STARTED",
            )
            response = ChallengeResponseRequest(Epoch(1), b"\x00" * 32)
            assert await refused(response, wire.Message) == "CHALLENGE_CLOSED"

            # A malformed response (a 31-byte digest) on the raw stream.
            payload = bytearray(wire.encode(response))
            payload[-33] -= 1  # the byte string's length: 32 -> 31
            payload = payload[:-1]
            with trio.fail_after(STEP):
                stream = await light.host.open_stream(alice.peer_id, light.protocol)
                try:
                    await write_frame(stream, bytes(payload), max_size=len(payload))
                    await stream.close_write()
                    frame = await read_frame(stream, max_size=1 << 20, timeout=STEP)
                finally:
                    await stream.reset()
            with pytest.raises(RemoteError) as caught:
                decode_reply(frame)
            assert caught.value.reason == "WIRE_MALFORMED"

            # The peer kept serving, and kept only verified certificates.
            with trio.fail_after(STEP):
                reply = await light.call(
                    alice.peer_id,
                    GetAvailabilityCertificatesRequest(Epoch(1)),
                    GetAvailabilityCertificatesReply,
                    timeout=STEP,
                )
            assert {c.member for c in reply.certificates} == {p.peer_id for p in network.peers}
            assert all(isinstance(c, AvailabilityCertificate) for c in reply.certificates)
            assert await alice.running.challenges.certificates(7) == {}

        # Directly on the service, during no window: a non-member's ticket and response.
        service = alice.running.challenges
        with pytest.raises(WalrusError) as caught_direct:
            await service.response(
                ChallengeResponseRequest(Epoch(1), b"\x00" * 32), PeerId("12D3KooWstranger")
            )
        assert caught_direct.value.reason == "CHALLENGE_CLOSED"
