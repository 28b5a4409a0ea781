"""Faults on a 20-process network (issue 7): kills, hung peers, lying peers; no blob is lost.

One network for the module: 20 `walrus-peer run` processes on 127.0.0.1 holding n = 20 shards, one
shard each (f = 6, write quorum 14, a read needs kp = 8 primary or ks = 14 secondary slivers), laid
out as `walrus-peer devnet` lays it out (``walrus_p2p.testing.processes.Devnet``). The tests drive
it through an in-process light peer (:func:`walrus_p2p.client.service.open_client`) so that they
can kill peers at exact moments: while a read is in flight, between two acknowledged slivers of a
store. Every certified blob goes into one module-wide ledger; every test ends by reading the whole
ledger back, and the last test checks that every one of the 20 peers holds (and serves, verifiably)
its slivers of every ledger blob: nothing certified is lost or read back wrong.

Faults, at most f shards at a time, so a write quorum always remains:

- crash: SIGKILL of f peers while reads run and while a store streams slivers; restart; the
  restarted peers rebuild what they missed (blob sync from recovery symbols, node/healing.py);
- hang: SIGSTOP of f peers (sockets stay open, nothing answers), reads and a store go on;
  SIGCONT; the group catches up on the blob stored while it hung;
- lies: f peers restarted with ``WALRUS_FAULT_INJECTION=corrupt-slivers`` (node/faults.py) serve
  every sliver with a flipped byte; reads (whole, strict, ranges) stay exact.

Bounds: every await has a deadline (``trio.fail_after``), every wait a timeout; the fixture
kills every process group it started (SIGCONT first, so a hung peer cannot outlive it) and the
kernel kills them if pytest dies (``PR_SET_PDEATHSIG``). The deliberate duplicates of
test_devnet.py are avoided: that module stops f shards *before* reading and corrupts one peer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.read import ReadOptions
from walrus_p2p.client.service import WalrusClient, open_client
from walrus_p2p.core import wire
from walrus_p2p.core.committee import quorum_threshold
from walrus_p2p.core.encoding import EncodingConfig, pair_to_shard, shard_to_pair
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.config import ensure_identity, load_genesis
from walrus_p2p.testing.processes import Devnet, tail, wait_holding
from walrus_p2p.types import BlobId, PeerId, short_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PEERS = 20
SHARDS = 20
F = (SHARDS - 1) // 3
KIB = 1024
MIB = 1024 * KIB

START_TIMEOUT = 180.0
"""20 peer processes starting at once on a loaded 2-core machine: ~1 CPU-second each of
imports, then handshakes (measured: see the module report in the test output)."""
RESTART_TIMEOUT = 90.0
HEAL_TIMEOUT = 120.0
"""A restarted or resumed peer: catch-up round, then blob sync from recovery symbols."""
OPERATION_TIMEOUT = 120.0
"""One store or read; hung peers cost a request timeout (30 s reads, 60 s stores) at worst."""
CALL_TIMEOUT = 10.0
HANG_SECONDS = 20.0
"""How long the hung group stays stopped, at least: longer than a peer's stall detector
(``HealingOptions.stall_catch_up_seconds``, 10 s), as a suspended home machine would be."""


# -- the module's network and ledger ------------------------------------------------------------


@dataclass
class Ledger:
    """Every blob the network certified during this module, with its bytes."""

    blobs: dict[BlobId, bytes] = field(default_factory=dict)

    def add(self, blob_id: BlobId, data: bytes) -> None:
        self.blobs[blob_id] = data


@dataclass
class Network:
    devnet: Devnet
    genesis: Genesis
    ledger: Ledger
    by_shard: dict[int, int]
    """shard -> devnet peer index (one shard per peer)."""

    def peer_id(self, index: int) -> PeerId:
        return PeerId(self.devnet.peers[index].peer_id)

    def holder_of_pair(self, blob_id: BlobId, pair: int) -> int:
        return self.by_shard[pair_to_shard(blob_id, pair, SHARDS)]

    def pair_of(self, index: int, blob_id: BlobId) -> int:
        (shard,) = self.devnet.peers[index].shards
        return shard_to_pair(blob_id, shard, SHARDS)

    def kill(self, indices: Sequence[int]) -> None:
        for index in indices:
            self.devnet.stop_peer(index, kill=True)

    def start(self, indices: Sequence[int], **environment: str) -> None:
        for index in indices:
            self.devnet.start_peer(index, **environment)

    def signal_group(self, indices: Sequence[int], number: int) -> None:
        for index in indices:
            process = self.devnet.peers[index].process
            assert process is not None and process.poll() is None, f"peer {index} is not running"
            os.killpg(process.pid, number)


@pytest.fixture(scope="module")
def network(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Network]:
    devnet = Devnet(tmp_path_factory.mktemp("faults"), PEERS, SHARDS)
    failed_before = request.session.testsfailed
    try:
        devnet.prepare()
        by_shard = {}
        for index, peer in devnet.peers.items():
            assert len(peer.shards) == 1, f"peer {index} holds shards {peer.shards}"
            by_shard[peer.shards[0]] = index
        assert sorted(by_shard) == list(range(SHARDS))
        assert devnet.f == F and devnet.info["quorum"] == quorum_threshold(SHARDS) == 14
        config = EncodingConfig.for_shards(SHARDS)
        assert (config.kp, config.ks) == (8, 14)
        started = time.monotonic()
        for index in devnet.peers:
            devnet.start_peer(index)
        net = Network(devnet, load_genesis(devnet.genesis_path), Ledger(), by_shard)
        trio.run(wait_answering, net, list(devnet.peers), START_TIMEOUT)
        print(
            f"\n{PEERS} peer processes answering {time.monotonic() - started:.1f}s after launch "
            f"(load {os.getloadavg()[0]:.2f})"
        )
        yield net
    finally:
        for peer in devnet.peers.values():
            # A SIGSTOPped peer ignores TERM until it runs again: resume every group first.
            if peer.process is not None and peer.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(peer.process.pid, signal.SIGCONT)
        devnet.close()
        if request.session.testsfailed != failed_before:
            print(devnet.log_tails())


# -- helpers ----------------------------------------------------------------------------------


def owner_key(net: Network) -> Identity:
    identity, _ = ensure_identity(net.devnet.key_dir)
    return identity


async def wait_answering(net: Network, indices: Sequence[int], timeout: float) -> float:
    """Until every given peer answers a storage request from a fresh light peer."""
    started = time.monotonic()
    async with open_light_peer(net.genesis, verify_chain=False) as light:
        pending = set(indices)
        with trio.move_on_after(timeout):
            while pending:
                async with trio.open_nursery() as nursery:
                    for index in sorted(pending):
                        nursery.start_soon(_probe, net, light, index, pending)
                if pending:
                    await trio.sleep(0.5)
        if pending:
            tails = "\n".join(
                f"== peer {index} ==\n{tail(net.devnet.peers[index].log_path, 15)}"
                for index in sorted(pending)
            )
            raise AssertionError(
                f"peers {sorted(pending)} not answering after {timeout:g}s\n{tails}"
            )
    return time.monotonic() - started


async def _probe(net: Network, light: LightPeer, index: int, pending: set[int]) -> None:
    peer = net.devnet.peers[index]
    if not peer.running():
        raise AssertionError(f"peer {index} exited:\n{tail(peer.log_path)}")
    with contextlib.suppress(WalrusError):
        await light.call(
            net.peer_id(index),
            wire.BlobStatusRequest(blob_id=BlobId(bytes(32))),
            wire.BlobStatusReply,
            timeout=3.0,
        )
        pending.discard(index)


async def store(client: WalrusClient, net: Network, data: bytes, **kwargs: object) -> BlobId:
    with trio.fail_after(OPERATION_TIMEOUT):
        outcome = await client.store(data, epochs=2, permanent=False, **kwargs)  # type: ignore[arg-type]
    net.ledger.add(outcome.blob_id, data)
    return outcome.blob_id


async def read_exact(
    client: WalrusClient, blob_id: BlobId, data: bytes, *, strict: bool = False
) -> None:
    with trio.fail_after(OPERATION_TIMEOUT):
        back = await client.read(blob_id, strict=strict)
    assert back == data, (
        f"blob {short_id(blob_id)} read back wrong ({len(back)} vs {len(data)} bytes)"
    )


async def read_ledger(client: WalrusClient, net: Network, *, strict: bool = False) -> None:
    for blob_id, data in net.ledger.blobs.items():
        await read_exact(client, blob_id, data, strict=strict)


def payload(size: int) -> bytes:
    return random.randbytes(size)


async def wait_healed(
    net: Network, indices: Sequence[int], blob_ids: Sequence[BlobId], timeout: float
) -> float:
    """Until every given peer holds verified slivers of every given blob; returns seconds."""

    def logs(missing: list[int]) -> str:
        return "\n".join(f"== peer {index} ==\n{node_log_tail(net, index)}" for index in missing)

    return await wait_holding(
        net.genesis,
        {index: (net.peer_id(index), net.devnet.peers[index].shards[0]) for index in indices},
        blob_ids,
        timeout=timeout,
        call_timeout=CALL_TIMEOUT,
        logs=logs,
    )


def node_log_tail(net: Network, index: int, lines: int = 15) -> str:
    """The last lines the peer's own modules logged (libp2p's noise left out)."""
    text = net.devnet.peers[index].log_path.read_text(errors="replace")
    ours = [line for line in text.splitlines() if "logger=walrus_p2p.node" in line]
    return "\n".join(ours[-lines:])


class BadSliverCounter(logging.Handler):
    """Counts the client's "peer served a bad sliver" warnings, by peer id prefix."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.peers: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("peer served a bad sliver"):
            self.peers.append(record.getMessage().split("peer=")[1].split()[0])


@contextlib.contextmanager
def counting_bad_slivers() -> Iterator[BadSliverCounter]:
    logger = logging.getLogger("walrus_p2p.client.read")
    counter = BadSliverCounter()
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


# -- (a) crashes --------------------------------------------------------------------------------


async def test_reads_stay_exact_while_f_peers_are_killed_mid_read(network: Network) -> None:
    """Two readers read three blobs in a loop; meanwhile the peers holding the first f plain
    primary slivers of the largest blob (so readers lose slivers they were fetching) are
    SIGKILLed one by one. Every read, before, during and after, returns exactly the stored
    bytes; at least one read was in flight across a kill. Restarted, the peers answer again."""
    net = network
    async with open_client(net.genesis, owner_key(net)) as client:
        blobs = {}
        for size in (300 * KIB, 2 * MIB, 6 * MIB):
            data = payload(size)
            blobs[await store(client, net, data)] = data
        largest = max(blobs, key=lambda blob_id: len(blobs[blob_id]))
        victims = sorted({net.holder_of_pair(largest, pair) for pair in range(F)})
        assert len(victims) == F

        reads_done = 0
        overlapped = 0
        kills: list[float] = []
        stop = trio.Event()
        kills_done = trio.Event()

        async def reader(seed: int) -> None:
            nonlocal reads_done, overlapped
            order = list(blobs)
            rng = random.Random(seed)
            while not stop.is_set():
                blob_id = rng.choice(order)
                kills_before = len(kills)
                await read_exact(client, blob_id, blobs[blob_id])
                reads_done += 1
                if len(kills) > kills_before:
                    overlapped += 1

        async def killer() -> None:
            while reads_done < 2:
                await trio.sleep(0.05)
            for index in victims:
                net.kill([index])
                kills.append(time.monotonic())
                await trio.sleep(0.3)
            kills_done.set()

        with trio.fail_after(OPERATION_TIMEOUT * 2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, 1)
                nursery.start_soon(reader, 2)
                nursery.start_soon(killer)
                await kills_done.wait()
                after = reads_done
                while reads_done < after + 6:
                    await trio.sleep(0.1)
                stop.set()
        assert overlapped >= 1, "no read was in flight across a kill"
        print(f"\nreads: {reads_done} exact, {overlapped} across a kill; victims {victims}")
    net.start(victims)
    seconds = await wait_answering(net, victims, RESTART_TIMEOUT)
    print(f"restarted {len(victims)} peers answer after {seconds:.1f}s")


async def test_store_certifies_while_f_peers_are_killed_mid_upload(network: Network) -> None:
    """A store of 4 MiB starts with all 20 peers; once the first slivers are acknowledged, f
    peers are SIGKILLed. The store still certifies (14 shards confirm: a quorum) and two more
    stores with them down certify too; every blob reads back exactly. The killed peers restart
    and rebuild their slivers of the three blobs they missed, which then verify against the
    metadata (blob sync from recovery symbols); the whole ledger still reads back exactly."""
    net = network
    rng = random.Random()
    victims = sorted(rng.sample(sorted(net.devnet.peers), F))
    async with open_client(net.genesis, owner_key(net)) as client:
        acknowledged = 0

        def progress(size: int) -> None:
            nonlocal acknowledged
            acknowledged += 1
            if acknowledged == 3:
                net.kill(victims)

        first = payload(4 * MIB)
        missed = [await store(client, net, first, progress=progress)]
        assert acknowledged >= 3 and not any(net.devnet.peers[i].running() for i in victims)
        for size in (1 * MIB, 100 * KIB):
            missed.append(await store(client, net, payload(size)))
        for blob_id in missed:
            await read_exact(client, blob_id, net.ledger.blobs[blob_id])
    net.start(victims)
    await wait_answering(net, victims, RESTART_TIMEOUT)
    seconds = await wait_healed(net, victims, missed, HEAL_TIMEOUT)
    print(f"\nvictims {victims} rebuilt 3 missed blobs {seconds:.1f}s after answering again")
    async with open_client(net.genesis, owner_key(net)) as client:
        await read_ledger(client, net)


# -- (b) a hung group -----------------------------------------------------------------------------


async def test_hung_group_of_f_peers_then_resumed_catches_up(network: Network) -> None:
    """f peers are SIGSTOPped (their sockets stay open and accept, nothing answers: the worst
    case for timeouts). Every ledger blob still reads back exactly and a new blob certifies
    (the other 14 shards are a quorum). After SIGCONT the group answers again and rebuilds its
    slivers of the blob it slept through, verified against the metadata."""
    net = network
    group = sorted(random.Random().sample(sorted(net.devnet.peers), F))
    net.signal_group(group, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        async with open_client(net.genesis, owner_key(net)) as client:
            started = time.monotonic()
            await read_ledger(client, net)
            read_seconds = time.monotonic() - started
            started = time.monotonic()
            fresh = await store(client, net, payload(2 * MIB))
            store_seconds = time.monotonic() - started
            await read_exact(client, fresh, net.ledger.blobs[fresh])
        # The fault lasts at least HANG_SECONDS (the operations above usually take longer).
        await trio.sleep(max(0.0, HANG_SECONDS - (time.monotonic() - stopped)))
    finally:
        net.signal_group(group, signal.SIGCONT)
    print(
        f"\nhung {group}: ledger of {len(net.ledger.blobs)} read in {read_seconds:.1f}s, "
        f"2 MiB stored in {store_seconds:.1f}s"
    )
    await wait_answering(net, group, RESTART_TIMEOUT)
    seconds = await wait_healed(net, group, [fresh], HEAL_TIMEOUT)
    print(f"resumed group caught up on the missed blob in {seconds:.1f}s")


# -- (c) lying peers ------------------------------------------------------------------------------


async def test_reads_stay_exact_with_f_peers_serving_corrupted_slivers(network: Network) -> None:
    """f peers restart with ``WALRUS_FAULT_INJECTION=corrupt-slivers``: every sliver they
    serve has a flipped byte. Every ledger blob reads back exactly (default and strict), a range
    read of each blob's first row (its plain primary sliver 0, held by a liar for some blob)
    is exact, a new blob stores and reads back, and the client did meet and reject the liars."""
    net = network
    ledger = list(net.ledger.blobs)
    # Liars: the holders of primary sliver 0 of as many ledger blobs as possible, then random.
    liars: list[int] = []
    for blob_id in ledger:
        holder = net.holder_of_pair(blob_id, 0)
        if holder not in liars and len(liars) < F:
            liars.append(holder)
    others = [index for index in net.devnet.peers if index not in liars]
    liars += random.Random().sample(others, F - len(liars))
    liars.sort()
    liar_ids = {net.peer_id(index)[:12] for index in liars}
    net.kill(liars)
    net.start(liars, WALRUS_FAULT_INJECTION="corrupt-slivers")
    try:
        await wait_answering(net, liars, RESTART_TIMEOUT)
        for index in liars:
            assert "fault injection active fault=corrupt-slivers" in net.devnet.peers[
                index
            ].log_path.read_text(errors="replace")
        with counting_bad_slivers() as counter:
            async with open_client(
                net.genesis, owner_key(net), read_options=ReadOptions(extra_parallel=2)
            ) as client:
                for _ in range(2):
                    await read_ledger(client, net)
                await read_ledger(client, net, strict=True)
                for blob_id, data in net.ledger.blobs.items():
                    with trio.fail_after(OPERATION_TIMEOUT):
                        head = await client.read_range(blob_id, 0, 1000)
                    assert head == data[:1000]
                fresh = await store(client, net, payload(MIB))
                await read_exact(client, fresh, net.ledger.blobs[fresh])
        met = set(counter.peers)
        assert met, "no read met a corrupting peer"
        assert met <= liar_ids, f"honest peers blamed: {met - liar_ids}"
        served = [
            net.devnet.metrics(index).get(
                'walrus_requests_total{outcome="ok",type="GetSliverRequest"}', 0.0
            )
            for index in liars
        ]
        print(f"\nliars {liars}: {len(counter.peers)} bad slivers rejected, served {served}")
    finally:
        net.kill(liars)
        net.start(liars)
    await wait_answering(net, liars, RESTART_TIMEOUT)


# -- the ledger ---------------------------------------------------------------------------------


async def test_every_certified_blob_is_held_by_every_peer_and_reads_back_exactly(
    network: Network,
) -> None:
    """After all the faults above, with every peer back: each of the 20 peers holds verified
    slivers of its shard for every blob certified in this module (healing completed
    everywhere), and every blob reads back exactly with the strict check (re-encoded, blob id
    recomputed)."""
    net = network
    async with open_client(net.genesis, owner_key(net)) as client:
        await store(client, net, payload(500 * KIB))  # something to check when run alone
    seconds = await wait_healed(net, sorted(net.devnet.peers), list(net.ledger.blobs), HEAL_TIMEOUT)
    print(f"\nall {PEERS} peers hold all {len(net.ledger.blobs)} blobs ({seconds:.1f}s)")
    async with open_client(net.genesis, owner_key(net)) as client:
        await read_ledger(client, net, strict=True)
