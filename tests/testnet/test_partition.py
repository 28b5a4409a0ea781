"""A network partition of 20 peer processes (issue 7): an isolated group of f peers, healed.

Every storage peer is a `walrus-peer run` process in a network namespace of its own (``ip netns
exec``). This module makes every namespace it uses, all named ``wp-<pid>-…``, and creates no
interface, bridge or rule in the host's namespace; no packet leaves the namespaces::

    hub namespace:      br0 (main side)                       br1 (isolated side)
                         |     |    ...    |      |                  |
    veth pairs:         p00   p01   ...   p19   client            minority
                         |     |           |      |                  |
    own namespaces:     peer  peer  ...   peer  test's client     test's minority client

Peers listen on ``/ip4/<subnet>.<10 + i>/tcp/4001``, a private /24 that none of the host's
routes or addresses use (chosen at run time); the genesis lists those addresses. The test's
light peers run in the ``client`` namespace (on br0) or the ``minority`` one (on br1): the test
thread enters the namespace with ``setns(2)`` while it opens and uses a client, so every socket
the client makes lives there (see :func:`inside`).

Partition: the hub moves the veths of f peers from br0 to br1. The group still reaches itself
(and the minority client), not the 14 others nor the client; established TCP connections across
the cut are not reset, their packets are lost, as in a real partition. Heal: the veths go back.

The scenario (n = 20 shards, one per peer: f = 6, write quorum 14, kp = 8, ks = 14):

1. three blobs stored and certified by the whole network;
2. f random peers isolated; the cut is checked with TCP connects from both sides;
3. a client on the isolated side (f shards) cannot certify a blob: ``QuorumError``;
4. on the main side (14 shards, a quorum) two blobs certify and all five read back exactly;
5. healed: the group answers again, every blob reads back exactly (strict: re-encoded, blob id
   recomputed) and the minority's blob is still not certified;
6. (second test) the formerly isolated peers rebuild their slivers of the two blobs they missed
   (verified against the metadata) and every peer holds every blob: a peer that kept running
   through the partition notices that the committee is reachable again and catches up
   (docs/healing.md, "Catch-up").

Bounds: every await has a deadline, the module a pytest timeout; the fixture kills every peer
process and deletes every namespace it made (and leftovers of a crashed run of the same pid
prefix) whatever happened; the kernel kills the peers if pytest dies (``PR_SET_PDEATHSIG``).
Without root or a working ``ip netns`` the module skips, saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.service import WalrusClient, open_client
from walrus_p2p.client.store import StoreOptions
from walrus_p2p.core.encoding import EncodingConfig
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import blob_id_of
from walrus_p2p.errors import QuorumError
from walrus_p2p.testing import processes
from walrus_p2p.testing.processes import (
    ProcessNetwork,
    init_process_network,
    wait_until_answering,
)
from walrus_p2p.types import BlobId, PeerId, short_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PEERS = 20
SHARDS = 20
F = (SHARDS - 1) // 3
KIB = 1024
MIB = 1024 * KIB
PORT = 4001
"""Every peer has its own namespace and address, so they all listen on the same port."""

PREFIX = f"wp-{os.getpid()}-"
NETNS_DIR = Path("/var/run/netns")
IP_TIMEOUT = 20.0
START_TIMEOUT = 180.0
"""20 peer processes starting at once on a loaded 2-core machine."""
OPERATION_TIMEOUT = 120.0
"""One store or read; peers cut off cost a request timeout at worst."""
MINORITY_TIMEOUT = 90.0
"""The isolated side's store attempt: 10 s per request (``StoreOptions`` below), then gives up."""
ANSWER_TIMEOUT = 60.0
"""Formerly isolated peers answer a fresh light peer again after the heal."""
HEAL_TIMEOUT = 90.0
"""Formerly isolated peers: learn the certificates they missed, rebuild their slivers (a
catch-up round, 3 s of sync delay and a recovery take ~10-20 s here)."""
CALL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0


# -- network namespaces -----------------------------------------------------------------------


class NamespaceError(Exception):
    """An ``ip`` command failed."""


def ip_command() -> str | None:
    return shutil.which("ip") or next(
        (path for path in ("/usr/sbin/ip", "/sbin/ip") if os.access(path, os.X_OK)), None
    )


def ip(*arguments: str, check: bool = True) -> str:
    command = ip_command()
    if command is None:
        raise NamespaceError("no `ip` command")
    result = subprocess.run(
        [command, *arguments],
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise NamespaceError(
            f"ip {' '.join(arguments)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def our_namespaces() -> list[str]:
    """Namespaces named with this process's prefix (ours, or a crashed run's of the same pid)."""
    names = (line.split()[0] for line in ip("netns", "list").splitlines() if line.strip())
    return sorted(name for name in names if name.startswith(PREFIX))


def delete_namespaces() -> list[str]:
    """Delete every namespace with our prefix (their veths go with them); returns what is left."""
    for name in our_namespaces():
        ip("netns", "delete", name, check=False)
    return our_namespaces()


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the module (None: it can): root, ``ip``, netns, veth, bridge."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if ip_command() is None:
        return "no `ip` command (iproute2)"
    probe = PREFIX + "probe"
    try:
        delete_namespaces()
        ip("netns", "add", probe)
        try:
            ip("-n", probe, "link", "add", "name", "br0", "type", "bridge")
            ip("-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb")
            ip("-n", probe, "link", "set", "va", "master", "br0")
            if not (NETNS_DIR / probe).exists():
                return f"ip netns keeps namespaces elsewhere than {NETNS_DIR}"
        finally:
            ip("netns", "delete", probe, check=False)
    except (NamespaceError, OSError, subprocess.TimeoutExpired) as error:
        return f"ip netns unusable here: {error}"
    return None


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(descriptor: int) -> None:
    if _libc.setns(descriptor, _CLONE_NEWNET) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"setns: {os.strerror(number)}")


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the calling thread in ``namespace`` until the block ends.

    A network namespace belongs to a thread: sockets made by this thread meanwhile (trio's, so
    the whole light peer's) live in ``namespace`` and keep living there. Trio runs every task on
    this thread, so a client opened and used inside the block is entirely in the namespace.
    Blocks must not interleave (nest them, or run them one after the other).
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / namespace, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def used_networks() -> list[ipaddress.IPv4Network]:
    """Destinations of the host's IPv4 routes (all tables) and its own addresses."""
    kinds = {"unicast", "local", "broadcast", "multicast", "anycast", "blackhole", "unreachable"}
    used = []
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        words = line.split()
        if words and words[0] in kinds:
            words = words[1:]
        if not words or words[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(words[0], strict=False))
    for line in ip("-4", "-o", "address", "show").splitlines():
        words = line.split()
        if "inet" in words:
            used.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    return used


def unused_subnet() -> ipaddress.IPv4Network:
    used = used_networks()
    for second in range(231, 255):
        candidate = ipaddress.IPv4Network(f"10.{second}.0.0/24")
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise NamespaceError(f"no free 10.231-254.0.0/24 subnet; host uses {used}")


@dataclass
class Lab:
    """The namespaces, bridges and veths of the module (all in namespaces named PREFIX…)."""

    subnet: ipaddress.IPv4Network
    peers: int
    hub: str = PREFIX + "hub"
    client: str = PREFIX + "client"
    minority: str = PREFIX + "minority"

    def peer_namespace(self, index: int) -> str:
        return f"{PREFIX}p{index:02d}"

    def peer_host(self, index: int) -> str:
        return str(self.subnet[10 + index])

    def build(self) -> None:
        ip("netns", "add", self.hub)
        for bridge in ("br0", "br1"):
            ip("-n", self.hub, "link", "add", "name", bridge, "type", "bridge")
            ip("-n", self.hub, "link", "set", bridge, "up")
        for index in range(self.peers):
            self._leaf(self.peer_namespace(index), f"p{index:02d}", self.peer_host(index), "br0")
        self._leaf(self.client, "client", str(self.subnet[2]), "br0")
        self._leaf(self.minority, "minority", str(self.subnet[3]), "br1")

    def _leaf(self, namespace: str, link: str, host: str, bridge: str) -> None:
        """A namespace with ``eth0`` (``host``), the far end of the veth ``link`` on ``bridge``."""
        ip("netns", "add", namespace)
        ip("-n", self.hub, "link", "add", link, "type", "veth", "peer", "name", "eth0")
        ip("-n", self.hub, "link", "set", "eth0", "netns", namespace)
        ip("-n", self.hub, "link", "set", link, "master", bridge, "up")
        ip("-n", namespace, "address", "add", f"{host}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")

    def move(self, indices: Sequence[int], bridge: str) -> None:
        for index in indices:
            ip("-n", self.hub, "link", "set", f"p{index:02d}", "master", bridge)

    def isolate(self, indices: Sequence[int]) -> None:
        self.move(indices, "br1")

    def heal(self, indices: Sequence[int]) -> None:
        self.move(indices, "br0")


async def reachable_peers(lab: Lab, namespace: str, indices: Sequence[int]) -> set[int]:
    """The peers a TCP connect from ``namespace`` reaches within CONNECT_TIMEOUT."""
    reached: set[int] = set()

    async def connect(index: int) -> None:
        with trio.move_on_after(CONNECT_TIMEOUT), contextlib.suppress(OSError):
            stream = await trio.open_tcp_stream(lab.peer_host(index), PORT)
            await stream.aclose()
            reached.add(index)

    with inside(namespace):
        async with trio.open_nursery() as nursery:
            for index in indices:
                nursery.start_soon(connect, index)
    return reached


async def wait_reachable(lab: Lab, namespace: str, indices: Sequence[int], timeout: float) -> float:
    """Until a TCP connect from ``namespace`` reaches every given peer; returns the seconds.

    Not at once after a heal: the other side's neighbour entries (ARP) of the peers that were
    away may be marked failed and are probed again first."""
    started = time.monotonic()
    reached: set[int] = set()
    while time.monotonic() - started < timeout:
        reached = await reachable_peers(lab, namespace, indices)
        if reached == set(indices):
            return time.monotonic() - started
        await trio.sleep(0.5)
    raise AssertionError(
        f"peers {sorted(set(indices) - reached)} unreachable from {namespace} after {timeout:g}s"
    )


# -- the module's network -----------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    group: list[int]
    """The isolated peers."""
    missed: list[BlobId]
    """Blobs certified while they were cut off."""
    healed: float
    """``time.monotonic()`` of the heal."""


@dataclass
class Network:
    lab: Lab
    processes: ProcessNetwork
    ledger: dict[BlobId, bytes] = field(default_factory=dict)
    """Every blob certified in this module, with its bytes."""
    partition: Partition | None = None

    @property
    def genesis(self) -> Genesis:
        return self.processes.genesis

    def peer_id(self, index: int) -> PeerId:
        return self.processes.peer_id(index)

    def shard_of(self, index: int) -> int:
        (shard,) = self.genesis.committee.shards_of(self.peer_id(index))
        return shard

    def log_tails(self, indices: Sequence[int], lines: int = 15) -> str:
        return "\n".join(
            f"== peer {index} ==\n{node_log_tail(self, index, lines)}" for index in indices
        )


def node_log_tail(net: Network, index: int, lines: int = 15) -> str:
    """The last lines the peer's own modules logged (libp2p's noise left out)."""
    text = net.processes.processes[index].log_text()
    ours = [line for line in text.splitlines() if "logger=walrus_p2p.node" in line]
    return "\n".join(ours[-lines:])


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)
    # Leftovers of a crashed run with this same pid (never another run's namespaces).
    left = delete_namespaces()
    assert not left, f"cannot delete leftover namespaces {left}"
    lab = Lab(unused_subnet(), PEERS)
    directory = tmp_path_factory.mktemp("partition")
    processes: ProcessNetwork | None = None
    try:
        lab.build()
        files = init_process_network(
            directory,
            PEERS,
            SHARDS,
            network="testnet-partition",
            listen_addresses=[f"/ip4/{lab.peer_host(i)}/tcp/{PORT}" for i in range(PEERS)],
        )
        command = ip_command()
        assert command is not None
        processes = ProcessNetwork(
            files,
            command_prefixes=[
                (command, "netns", "exec", lab.peer_namespace(i)) for i in range(PEERS)
            ],
            die_with_parent=True,
        )
        net = Network(lab, processes)
        assert sorted(net.shard_of(i) for i in range(PEERS)) == list(range(SHARDS))
        config = EncodingConfig.for_shards(SHARDS)
        assert (F, config.kp, config.ks) == (6, 8, 14)
        started = time.monotonic()
        for process in processes.processes:
            process.start()
        with inside(lab.client):
            trio.run(wait_all_answering, net, range(PEERS), START_TIMEOUT)
        print(
            f"\n{PEERS} peer processes in namespaces ({lab.subnet}) answering "
            f"{time.monotonic() - started:.1f}s after launch (load {os.getloadavg()[0]:.2f})"
        )
        yield net
    finally:
        if processes is not None:
            for process in processes.processes:
                if process.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.kill()
        left = delete_namespaces()
        for path in directory.glob("peer-*/store"):
            shutil.rmtree(path, ignore_errors=True)
        assert not left, f"namespaces left behind: {left}"


async def wait_all_answering(net: Network, indices: Sequence[int], timeout: float) -> None:
    async with open_light_peer(net.genesis, verify_chain=False) as light:
        with trio.fail_after(timeout + 10):
            async with trio.open_nursery() as nursery:
                for index in indices:
                    nursery.start_soon(answering, light, net, index, timeout)


async def answering(light: LightPeer, net: Network, index: int, timeout: float) -> None:
    await wait_until_answering(
        light, net.peer_id(index), timeout=timeout, process=net.processes.processes[index]
    )


# -- helpers ----------------------------------------------------------------------------------


async def store(client: WalrusClient, net: Network, data: bytes, *, ledger: bool = True) -> BlobId:
    with trio.fail_after(OPERATION_TIMEOUT):
        outcome = await client.store(data, epochs=2, permanent=False)
    if ledger:
        net.ledger[outcome.blob_id] = data
    return outcome.blob_id


async def read_all(client: WalrusClient, net: Network, *, strict: bool = False) -> None:
    for blob_id, data in net.ledger.items():
        with trio.fail_after(OPERATION_TIMEOUT):
            back = await client.read(blob_id, strict=strict)
        assert back == data, (
            f"blob {short_id(blob_id)} read back wrong ({len(back)} vs {len(data)} bytes)"
        )


async def wait_holding(
    net: Network, indices: Sequence[int], blob_ids: Sequence[BlobId], timeout: float
) -> float:
    """Until every given peer holds verified slivers of every given blob; returns seconds."""
    return await processes.wait_holding(
        net.genesis,
        {index: (net.peer_id(index), net.shard_of(index)) for index in indices},
        blob_ids,
        timeout=timeout,
        call_timeout=CALL_TIMEOUT,
        logs=net.log_tails,
    )


# -- the scenario -------------------------------------------------------------------------------


async def test_isolated_group_of_f_peers_cannot_certify_and_no_blob_is_lost(
    network: Network,
) -> None:
    """f peers are cut off from the rest (network namespaces, not signals: they keep running
    and talk among themselves). The isolated side cannot certify a blob; the main side (a
    quorum) stores two and reads every blob exactly. Healed, every peer answers again, every
    blob reads back exactly (strict) and the minority's blob stayed uncertified."""
    net = network
    lab = net.lab
    owner = Identity.from_seed(secrets.token_bytes(32))
    group = sorted(random.Random().sample(range(PEERS), F))
    rest = [index for index in range(PEERS) if index not in group]
    timings: dict[str, float] = {}

    started = time.monotonic()
    with inside(lab.client):
        async with open_client(net.genesis, owner) as client:
            for size in (200 * KIB, 1 * MIB, 3 * MIB):
                await store(client, net, random.randbytes(size))
    timings["3 stores, all connected"] = time.monotonic() - started

    print(f"\nisolating peers {group}")
    lab.isolate(group)
    try:
        # The cut is real: each side reaches its own peers only.
        assert await reachable_peers(lab, lab.client, range(PEERS)) == set(rest)
        assert await reachable_peers(lab, lab.minority, range(PEERS)) == set(group)

        # The isolated side alone (f shards) cannot certify anything.
        started = time.monotonic()
        orphan = random.randbytes(64 * KIB)
        orphan_id = blob_id_of(orphan, EncodingConfig.for_shards(SHARDS))
        with inside(lab.minority):
            async with open_client(
                net.genesis, owner, store_options=StoreOptions(request_timeout=10.0)
            ) as client:
                with pytest.raises(QuorumError), trio.fail_after(MINORITY_TIMEOUT):
                    await client.store(orphan, epochs=2, permanent=False)
        timings["minority store refused"] = time.monotonic() - started

        # The main side (14 shards: a write quorum) stores and reads everything.
        started = time.monotonic()
        with inside(lab.client):
            async with open_client(net.genesis, owner) as client:
                missed = [
                    await store(client, net, random.randbytes(size))
                    for size in (1 * MIB, 300 * KIB)
                ]
                timings["2 stores, partitioned"] = time.monotonic() - started
                started = time.monotonic()
                await read_all(client, net)
                timings["5 reads, partitioned"] = time.monotonic() - started
    finally:
        lab.heal(group)
    net.partition = Partition(group, missed, time.monotonic())

    started = time.monotonic()
    timings["group reachable again"] = await wait_reachable(lab, lab.client, group, ANSWER_TIMEOUT)
    with inside(lab.client):
        await wait_all_answering(net, group, ANSWER_TIMEOUT)
        timings["group answers again"] = time.monotonic() - started
        started = time.monotonic()
        async with open_client(net.genesis, owner) as client:
            await read_all(client, net, strict=True)
            timings["5 strict reads, healed"] = time.monotonic() - started
            with trio.fail_after(OPERATION_TIMEOUT):
                state = await client.records_state(orphan_id)
    assert state is None or state.certificate is None, (
        f"the minority's blob {short_id(orphan_id)} got certified"
    )
    print(
        f"load {os.getloadavg()[0]:.2f}\n"
        + "\n".join(f"  {what}: {seconds:.1f}s" for what, seconds in timings.items())
    )


async def test_formerly_isolated_peers_rebuild_the_blobs_they_missed(network: Network) -> None:
    """After the heal, each peer of the isolated group rebuilds its slivers of the two blobs
    certified while it was cut off (blob sync from recovery symbols, verified against the
    metadata) within HEAL_TIMEOUT; then every one of the 20 peers holds every blob.

    A peer that kept running through the partition notices it: most of its pings of committee
    members failed, then three in a row succeed, and it runs a catch-up round at once
    (``HealingService._catch_up_after_isolation``). Before that existed this test failed: the
    certificates of the missed blobs reached the group only if a gossip message got through
    after the heal, or at the periodic round 10 minutes later."""
    net = network
    if net.partition is None:
        pytest.skip("needs the partition of the previous test")
    group, missed = net.partition.group, net.partition.missed
    with inside(net.lab.client):
        seconds = await wait_holding(net, group, missed, HEAL_TIMEOUT)
        print(
            f"\nisolated peers {group} hold the {len(missed)} blobs they missed "
            f"{time.monotonic() - net.partition.healed:.1f}s after the heal"
        )
        await wait_holding(net, range(PEERS), list(net.ledger), max(30.0, HEAL_TIMEOUT - seconds))
