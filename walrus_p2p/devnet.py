"""`walrus-peer devnet`: a whole local network on this machine, one process per storage peer.

Creates (or reuses) ``DIR/genesis.toml``, ``DIR/peer-01`` … ``DIR/peer-NN`` and
``DIR/wallet.key`` (a WAL wallet the genesis funds with :data:`WALLET_FUNDS`, for ``walrus-peer
wallet`` and for the CLI's stores, which storage peers want paid: docs/economics.md, "Paid
storage"); the genesis funds the gateway's account too (the key of ``DIR/client``, which owns
and pays for the stores the gateway makes), so ``PUT /v1/blobs`` works out of the box. It starts
every peer as its own ``walrus-peer run`` process on 127.0.0.1, runs the HTTP
gateway in this process, and stops every process it started on Ctrl-C or SIGTERM. ``GET /status``
on the gateway answers 200 once the peers that answer hold a write quorum of shards.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from walrus_p2p.api import (
    DEFAULT_MAX_BYTES_IN_FLIGHT,
    DEFAULT_MAX_CONCURRENT_READS,
    DEFAULT_MAX_CONCURRENT_WRITES,
    GatewayLimits,
    serve_gateway,
)
from walrus_p2p.client.cache import CacheOptions
from walrus_p2p.client.service import WalrusClient, open_client
from walrus_p2p.client.wallet import FROST_PER_WAL, ensure_wallet, load_wallet
from walrus_p2p.core.economy import VoteSettings
from walrus_p2p.core.genesis import Allocation, EconomyGenesis, Genesis, create_genesis_toml
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import ConfigError, WalrusError
from walrus_p2p.node.config import (
    ensure_identity,
    genesis_member,
    init_peer,
    load_config,
    load_genesis,
    write_genesis,
    write_vote,
)
from walrus_p2p.types import blob_id_to_text

logger = logging.getLogger(__name__)

GENESIS_NAME = "genesis.toml"
CLIENT_KEY_DIR = "client"
WALLET_NAME = "wallet.key"
WALLET_FUNDS = 1_000_000 * FROST_PER_WAL
"""What the genesis of a new devnet gives the devnet's wallet (docs/economics.md, "Genesis")."""
STOP_GRACE_SECONDS = 5.0
AGENT_TIMEOUT = 90.0


@dataclass(frozen=True, slots=True)
class DevnetOptions:
    directory: Path
    peers: int = 20
    shards: int = 100
    epoch_duration: int = 3600
    http: str = "127.0.0.1:31415"
    capacity_bytes: int = 20 * 2**30
    ready_timeout: float = 180.0
    max_body: int = 1 << 30
    max_concurrent_writes: int = DEFAULT_MAX_CONCURRENT_WRITES
    max_concurrent_reads: int = DEFAULT_MAX_CONCURRENT_READS
    agent: bool = False
    """Start ``walrus-peer agent`` for the devnet once it is ready (and stop it on exit), so
    client commands answer from a warm light peer (docs/cli.md, "The agent")."""
    economy: bool = False
    """A WAL economy in the genesis (``--economy``): a funded wallet, and stores that pay
    (docs/economics.md, "Paid storage"). Off by default for now: paid stores are slower, and
    under short epochs with restarts they fail more often than free ones (the churn test at
    12 s epochs lost stores across epoch changes; docs/economics.md, "Not built yet")."""


def _gateway_limits(options: DevnetOptions) -> GatewayLimits:
    """The devnet's gateway: every client is local and shares 127.0.0.1, so the per-address
    limits are the gateway's own (docs/http-api.md, "Limits")."""
    return GatewayLimits(
        max_body=options.max_body,
        max_concurrent_writes=options.max_concurrent_writes,
        max_concurrent_reads=options.max_concurrent_reads,
        max_concurrent_writes_per_address=options.max_concurrent_writes,
        max_concurrent_reads_per_address=options.max_concurrent_reads,
        max_bytes_in_flight=max(DEFAULT_MAX_BYTES_IN_FLIGHT, options.max_body),
    )


def peer_dir(directory: Path, index: int) -> Path:
    return directory / f"peer-{index:02d}"


_EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_LISTEN_PORT = 10000
_HIGHEST_LISTEN_PORT = 29999
"""Picked ports stay below 30000, clear of fixed defaults such as the gateway's 31415."""
_handed_out: set[int] = set()


def free_tcp_port() -> int:
    """A loopback TCP port that is free now and that no outgoing connection will take first.

    Binding port 0 hands out a port of the kernel's ephemeral range, the range every outgoing
    connection takes its source port from: while 20 peers dialled each other, one of them took
    the port picked for a peer that had not bound it yet (seen in ``bench/network.py``). So the
    port is picked at random below that range, where only explicit binds land, and never twice
    in one process (ports are often handed out long before their process binds them).
    """
    try:
        lowest_ephemeral = int(_EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lowest_ephemeral = 0
    highest = min(lowest_ephemeral - 1, _HIGHEST_LISTEN_PORT)
    if highest > _LOWEST_LISTEN_PORT + 1000:
        generator = random.SystemRandom()
        for _attempt in range(200):
            port = generator.randint(_LOWEST_LISTEN_PORT, highest)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        chosen: int = probe.getsockname()[1]
        return chosen


def prepare(options: DevnetOptions) -> Genesis:
    """Create keys, configs and the genesis on first use; reuse them afterwards."""
    directory = options.directory
    genesis_path = directory / GENESIS_NAME
    if genesis_path.exists():
        genesis = load_genesis(genesis_path)
        if len(genesis.members) != options.peers or genesis.n_shards != options.shards:
            raise ConfigError(
                f"holds a devnet of {len(genesis.members)} peers and {genesis.n_shards} shards; "
                "remove the directory or use the same --peers and --shards",
                path=str(directory),
            )
        return genesis
    directory.mkdir(parents=True, exist_ok=True)
    members = []
    for index in range(1, options.peers + 1):
        data_dir = peer_dir(directory, index)
        if not (data_dir / "peer.toml").exists():
            init_peer(
                data_dir,
                genesis_path,
                [f"/ip4/127.0.0.1/tcp/{free_tcp_port()}"],
                capacity_bytes=options.capacity_bytes,
                metrics_address=f"127.0.0.1:{free_tcp_port()}",
                check_genesis=False,
            )
        members.append(genesis_member(data_dir, 1))
    economy = None
    if options.economy:
        wallet, _ = ensure_wallet(directory / WALLET_NAME)
        gateway, _ = ensure_identity(directory / CLIENT_KEY_DIR)
        economy = EconomyGenesis(
            allocations=(
                Allocation(wallet.public_key.raw, WALLET_FUNDS),
                Allocation(gateway.public_key.raw, WALLET_FUNDS),
            )
        )
        # Every devnet peer votes the genesis prices (docs/economics.md, "Votes"): the
        # settlements carry their signed votes, and `walrus-peer vote` changes one.
        for index in range(1, options.peers + 1):
            data_dir = peer_dir(directory, index)
            if load_config(data_dir).vote is None:
                write_vote(
                    data_dir,
                    VoteSettings(
                        storage_price=economy.storage_price,
                        write_price=economy.write_price,
                        capacity=options.capacity_bytes,
                    ),
                )
    text = create_genesis_toml(
        network="devnet",
        n_shards=options.shards,
        members=members,
        genesis_time=int(time.time()),
        epoch_duration_seconds=options.epoch_duration,
        economy=economy,
    )
    return write_genesis(genesis_path, text)


class PeerProcesses:
    """The `walrus-peer run` children; stopped (TERM, then KILL) on exit, whatever happens."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, index: int) -> None:
        data_dir = peer_dir(self.directory, index)
        log = open(data_dir / "peer.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
        try:
            self.processes[index] = subprocess.Popen(
                [sys.executable, "-m", "walrus_p2p.cli", "run", "--data-dir", str(data_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def start_all(self) -> None:
        for index in range(1, self.count + 1):
            self.start(index)

    def exited(self) -> dict[int, int]:
        return {
            index: code
            for index, process in self.processes.items()
            if (code := process.poll()) is not None
        }

    def stop(self, index: int, *, kill: bool = False) -> None:
        process = self.processes.get(index)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def wait_until_listening(directory: Path, processes: PeerProcesses, timeout: float) -> float:
    """Wait until every peer process serves its health endpoint (its libp2p host listens by
    then: the endpoint starts right after it), so the gateway's first dials find every peer.
    Raises if a peer exits or the deadline passes; returns the seconds it took."""
    started = time.monotonic()
    pending: dict[int, tuple[str, int]] = {}
    for index in range(1, processes.count + 1):
        address = load_config(peer_dir(directory, index)).metrics_address
        if address is not None:
            host, _, port_text = address.rpartition(":")
            pending[index] = (host, int(port_text))
    with trio.move_on_after(timeout):
        while pending:
            exited = processes.exited()
            if exited:
                index, code = sorted(exited.items())[0]
                raise WalrusError(
                    f"peer {index:02d} exited with code {code} while starting; see "
                    f"{peer_dir(directory, index) / 'peer.log'}",
                    reason="INTERNAL",
                )
            for index, (address, port) in list(pending.items()):
                with trio.move_on_after(1.0):
                    try:
                        stream = await trio.open_tcp_stream(address, port)
                    except OSError:
                        continue
                    await stream.aclose()
                    del pending[index]
            if pending:
                await trio.sleep(0.25)
    if pending:
        names = ", ".join(f"{index:02d}" for index in sorted(pending))
        raise WalrusError(
            f"peers {names} did not start listening within {timeout:g}s; see their peer.log",
            reason="NOT_ENOUGH_PEERS",
        )
    return time.monotonic() - started


async def wait_until_writable(client: WalrusClient, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while True:
            status = await client.network_status()
            if status.writable:
                return
            await trio.sleep(1.0)
    raise WalrusError(
        f"the devnet did not reach a write quorum within {timeout:g}s; see the peer logs",
        reason="NOT_ENOUGH_PEERS",
    )


async def demo_round_trip(client: WalrusClient, files: list[Path]) -> None:
    """Store each file through the client and read it back byte for byte."""
    for path in files:
        data = path.read_bytes()
        started = time.monotonic()
        outcome = await client.store(data, epochs=1, permanent=False)
        stored = time.monotonic() - started
        started = time.monotonic()
        back = await client.read(outcome.blob_id)
        read = time.monotonic() - started
        verdict = "identical" if back == data else "DIFFERENT"
        print(
            f"demo: {path.name}: {len(data)} bytes, blob id {blob_id_to_text(outcome.blob_id)}, "
            f"stored in {stored:.2f}s, read back in {read:.2f}s: {verdict}",
            flush=True,
        )
        if back != data:
            raise WalrusError("the blob read back differs from the one stored", reason="INTERNAL")


def _instructions(options: DevnetOptions) -> str:
    genesis = options.directory / GENESIS_NAME
    wallet = options.directory / WALLET_NAME
    url = f"http://{options.http}"
    address = ensure_wallet(wallet)[0].public_key.hex() if wallet.exists() else None
    wallet_lines = (
        []
        if address is None
        else [
            f"  export WALRUS_WALLET={wallet}",
            f"  {'walrus-peer wallet balance':<41}# account {address}",
            f"  {'walrus-peer wallet send ADDRESS 1.5':<41}# WAL, certified by the committee",
            f"  {'walrus-peer price FILE --epochs 5':<41}# what a store costs; stores pay "
            "from the wallet",
        ]
    )
    return "\n".join(
        [
            f"devnet ready: {options.peers} peers, {options.shards} shards, gateway {url}",
            f"  export WALRUS_GENESIS={genesis}",
            "  walrus-peer store FILE --epochs 5          # prints the blob id",
            "  walrus-peer read BLOB_ID -o OUT",
            *wallet_lines,
            f"  curl -X PUT --data-binary @FILE '{url}/v1/blobs?epochs=5'",
            f"  curl {url}/v1/blobs/BLOB_ID -o OUT",
            f"  peer logs: {options.directory}/peer-NN/peer.log   (Ctrl-C stops everything)",
        ]
    )


def gateway_owner(directory: Path, genesis: Genesis) -> Identity:
    """The key the devnet's gateway stores (and pays) with: ``DIR/client``'s, which the genesis
    funds; a devnet made before the gateway was funded pays from ``DIR/wallet.key``."""
    owner, _ = ensure_identity(directory / CLIENT_KEY_DIR)
    if genesis.economy is None:
        return owner
    funded = {item.account for item in genesis.economy.allocations}
    if owner.public_key.raw in funded or not (directory / WALLET_NAME).exists():
        return owner
    return load_wallet(directory / WALLET_NAME)


async def run_devnet(
    options: DevnetOptions, *, demo_files: list[Path], exit_after_demo: bool
) -> None:
    genesis = prepare(options)
    owner = gateway_owner(options.directory, genesis)
    processes = PeerProcesses(options.directory, len(genesis.members))
    print(
        f"starting {len(genesis.members)} peers ({genesis.n_shards} shards) "
        f"network={genesis.network_id_text} dir={options.directory}",
        flush=True,
    )
    check_bind_free(options.http)
    genesis_file = options.directory / GENESIS_NAME
    agent_started = False
    began = time.monotonic()
    processes.start_all()
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await wait_until_listening(options.directory, processes, options.ready_timeout)
            step(f"peers listening: {processes.count} of {processes.count}", began)
            async with (
                open_client(genesis, owner, cache=CacheOptions()) as client,
                trio.open_nursery() as nursery,
            ):
                committee = client.light.committee
                step(
                    f"committee known: epoch {int(committee.epoch)}, "
                    f"{len(committee.members)} members",
                    began,
                )
                await nursery.start(
                    functools.partial(serve_gateway, client, options.http, _gateway_limits(options))
                )
                step(f"gateway up: http://{options.http}", began)
                await wait_until_writable(client, options.ready_timeout)
                step("write quorum reached", began)
                if options.agent:
                    agent_started = True
                    await trio.to_thread.run_sync(agent_command, "start", genesis_file)
                    step("agent ready: client commands answer from a warm light peer", began)
                print(_instructions(options), flush=True)
                if demo_files:
                    await demo_round_trip(client, demo_files)
                    if exit_after_demo:
                        nursery.cancel_scope.cancel()
                        return
                nursery.start_soon(_watch_children, processes)
                async for _ in signals:
                    print("stopping the devnet", flush=True)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        if agent_started:
            agent_command("stop", genesis_file)
        processes.stop_all()


def agent_command(action: str, genesis_file: Path) -> None:
    """``walrus-peer agent start|stop`` for the devnet's network (as its own process: the agent
    belongs to the command line, above this module)."""
    result = subprocess.run(
        [sys.executable, "-m", "walrus_p2p.cli", "agent", action, "--genesis", str(genesis_file)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=AGENT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise WalrusError(
            f"walrus-peer agent {action} failed: {result.stderr.strip()[-500:]}", reason="INTERNAL"
        )


def check_bind_free(bind: str) -> None:
    """Refuse a gateway address another process already listens on, before any peer starts."""
    host, _, port = bind.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host.strip("[]"), int(port)))
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"--http {bind}: cannot listen there ({reason})") from error
    finally:
        probe.close()


def step(text: str, began: float) -> None:
    """One progress line of the devnet's start (docs/testnet.md, "Process devnet")."""
    print(f"  {text} ({time.monotonic() - began:.1f} s)", flush=True)


async def _watch_children(processes: PeerProcesses) -> None:
    reported: set[int] = set()
    while True:
        for index, code in processes.exited().items():
            if index not in reported:
                reported.add(index)
                logger.warning("peer process exited peer=%02d code=%d", index, code)
        await trio.sleep(2.0)
