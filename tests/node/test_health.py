"""`walrus-peer health` over a running in-process network: every member answers with its
version, epoch and shards; a stopped one shows as unreachable within the deadline, and the
reachable shards count only the members that answered (walrus_p2p/client/health.py)."""

from __future__ import annotations

import trio

from walrus_p2p import __version__
from walrus_p2p.client.health import fetch_health
from walrus_p2p.core import wire
from walrus_p2p.core.health import PeerHealthRequest
from walrus_p2p.testing import fuzz
from walrus_p2p.testing.network import open_network, open_test_light_peer
from walrus_p2p.types import Epoch, PeerId

STEP = 30


async def test_every_member_answers_and_a_stopped_one_is_unreachable() -> None:
    async with open_network(4) as network, open_test_light_peer(network) as light:
        with trio.fail_after(STEP):
            report = await fetch_health(light, timeout=3.0)
        committee = light.committee
        assert [member.peer_id for member in report.members] == sorted(committee.peer_ids)
        for member in report.members:
            assert member.reachable and member.state(report.epoch) == "ok"
            assert member.reply is not None and member.seconds is not None
            assert member.reply.version == __version__
            assert member.reply.epoch == report.epoch
            own = sorted(committee.shards_of(member.peer_id))
            assert list(member.reply.shards_in_place) == own
            assert member.reply.shards_arriving == ()
            assert member.reply.peers_connected >= 1
        assert report.reachable_shards == network.genesis.n_shards

        victim = network.peers[3]
        await network.stop(victim)
        with trio.fail_after(STEP):
            after = await fetch_health(light, timeout=2.0)
        down = next(member for member in after.members if member.peer_id == victim.peer_id)
        assert not down.reachable and down.state(after.epoch) == "unreachable"
        assert down.error is not None
        assert after.reachable_shards == network.genesis.n_shards - down.shards
        assert sum(member.reachable for member in after.members) == 3
        network.nursery.cancel_scope.cancel()


async def test_the_reply_is_rate_limited_per_remote() -> None:
    """The control-plane rate of PeerHealthRequest (2/s, burst 10) holds for a stranger."""
    async with open_network(2) as network:
        service = network.peers[0].running
        handler = service.router.dispatch
        payload = wire.encode(PeerHealthRequest(Epoch(0)))
        outcomes = [await fuzz.run_rpc(handler, payload, PeerId("stranger")) for _ in range(20)]
        answered = [o for o in outcomes if (o.kind, o.reason) == ("ok", "PeerHealthReply")]
        refused = [o for o in outcomes if o.kind == "refused"]
        assert 10 <= len(answered) <= 12
        assert len(answered) + len(refused) == 20
        assert {o.reason for o in refused} == {"RATE_LIMITED"}
        network.nursery.cancel_scope.cancel()
