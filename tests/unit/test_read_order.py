"""Which slivers a read asks for first (``client.read.fetch_slivers``), against stub peers."""

from __future__ import annotations

import random
from typing import Any

import trio

from walrus_p2p.client.read import ReadOptions, fetch_slivers
from walrus_p2p.core import wire
from walrus_p2p.core.encoding import EncodingConfig, SliverType, pair_to_shard
from walrus_p2p.core.metadata import encode_blob
from walrus_p2p.types import PeerId, SliverKind

N_SHARDS = 20


class StubLight:
    """Just enough of a LightPeer: one peer per shard, answers from the encoded blob."""

    def __init__(self, encoded: Any, lying: set[int]) -> None:
        self.encoded = encoded
        self.lying = lying
        self.asked: list[int] = []

        class Committee:
            n_shards = N_SHARDS

        self.committee = Committee()

    async def refresh_in_place(self) -> None:
        return None

    def holders_of(self, shard: int) -> list[PeerId]:
        return [PeerId(f"peer-{shard}")]

    async def call(
        self,
        peer_id: PeerId,
        request: Any,
        expected: Any,
        *,
        timeout: float,
        view_tail: bool = False,
    ) -> Any:
        assert isinstance(request, wire.GetSliverRequest)
        assert request.sliver_kind is SliverKind.PRIMARY
        index = request.pair_index
        self.asked.append(index)
        await trio.sleep(0.001 * random.random())
        data = bytes(self.encoded.encoded.sliver(SliverType.PRIMARY, index))
        if index in self.lying:
            data = bytes([data[0] ^ 1]) + data[1:]
        # Through the wire as a real peer's reply: with ``view_tail`` the sliver is a view.
        return wire.decode(
            wire.encode(wire.GetSliverReply(data=data)), wire.GetSliverReply, view_tail=view_tail
        )


async def test_reads_ask_for_systematic_slivers_first_and_skip_liars() -> None:
    config = EncodingConfig.for_shards(N_SHARDS)
    encoded = encode_blob(random.Random(5).randbytes(1_000_000), config)  # slivers > 64 KiB
    kp = config.kp
    light = StubLight(encoded, lying=set())
    got = await fetch_slivers(
        light,  # type: ignore[arg-type]
        encoded.blob_id,
        encoded.metadata,
        SliverType.PRIMARY,
        needed=kp,
        options=ReadOptions(extra_parallel=0),
        bad_peers=set(),
    )
    # The first kp requests are the systematic slivers (a worker that finishes early may go on
    # to a parity sliver while the others are still in flight).
    assert sorted(light.asked[:kp]) == list(range(kp))
    assert set(range(kp)) <= set(got)

    # A peer that lies about systematic sliver 3: it is caught, and a parity sliver replaces it.
    liar = StubLight(encoded, lying={3})
    bad: set[PeerId] = set()
    got = await fetch_slivers(
        liar,  # type: ignore[arg-type]
        encoded.blob_id,
        encoded.metadata,
        SliverType.PRIMARY,
        needed=kp,
        options=ReadOptions(extra_parallel=0),
        bad_peers=bad,
    )
    assert sorted(liar.asked[:kp]) == list(range(kp))
    assert len(got) >= kp and 3 not in got
    assert any(index >= kp for index in got)
    assert bad == {PeerId(f"peer-{pair_to_shard(encoded.blob_id, 3, N_SHARDS)}")}
