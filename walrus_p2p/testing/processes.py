"""A multi-process test network: peer directories made by the CLI, `walrus-peer run` children.

Owner: tests/testnet. :func:`init_process_network` does what an operator does: ``walrus-peer
init`` for each peer (a free 127.0.0.1 port each, or the addresses the caller gives), then
``walrus-peer genesis create`` over their directories. :class:`PeerProcess` runs one
``walrus-peer run`` in its own process group (so a kill reaches everything it started), with its
output in ``<data dir>/peer.log``, optionally behind a command prefix (``ip netns exec NS``, so
that the peer runs in a network namespace). :class:`ProcessNetwork` is a context manager that
kills every child it started on exit, whatever happened; :func:`wait_until_answering` polls a
peer with a real storage request through a light peer until it answers or a deadline passes;
:func:`holds_verified_slivers` asks a peer for its slivers of a blob and checks them against the
blob's metadata.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.read import fetch_metadata
from walrus_p2p.core import wire
from walrus_p2p.core.encoding import SliverType, shard_to_pair
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.metadata import Metadata, verify_sliver
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.config import load_genesis
from walrus_p2p.testing.network import EPOCH_DURATION_SECONDS, free_tcp_port, genesis_time_now
from walrus_p2p.types import BlobId, PeerId, SliverKind, short_id

CLI_TIMEOUT = 60.0
"""Upper bound for one offline CLI command (init, genesis create) on a loaded machine."""
STOP_GRACE = 10.0
LOG_NAME = "peer.log"
_PR_SET_PDEATHSIG = 1


def cli_command(*arguments: str) -> list[str]:
    """The `walrus-peer` command line, run with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "walrus_p2p.cli", *arguments]


def run_cli(*arguments: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion; the caller checks the result."""
    return subprocess.run(
        cli_command(*arguments),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _checked(*arguments: str) -> str:
    result = run_cli(*arguments)
    if result.returncode != 0:
        raise RuntimeError(
            f"walrus-peer {' '.join(arguments)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


@dataclass(frozen=True, slots=True)
class PeerDir:
    """One initialised peer data directory."""

    index: int
    path: Path
    peer_id: PeerId
    address: str


@dataclass(frozen=True, slots=True)
class NetworkFiles:
    """What :func:`init_process_network` wrote."""

    directory: Path
    genesis_path: Path
    genesis: Genesis
    peers: tuple[PeerDir, ...]


def init_process_network(
    directory: Path,
    peers: int,
    n_shards: int,
    *,
    network: str = "testnet-proc",
    listen_addresses: Sequence[str] | None = None,
) -> NetworkFiles:
    """Initialise ``peers`` data directories and their genesis with the CLI.

    ``listen_addresses``: one TCP multiaddr per peer (it listens there and the genesis lists it);
    by default a free 127.0.0.1 port each.
    """
    if listen_addresses is not None and len(listen_addresses) != peers:
        raise ValueError(f"{len(listen_addresses)} listen addresses for {peers} peers")
    directory.mkdir(parents=True, exist_ok=True)
    genesis_path = directory / "genesis.toml"
    made: list[PeerDir] = []
    for index in range(peers):
        path = directory / f"peer-{index:02d}"
        if listen_addresses is None:
            address = f"/ip4/127.0.0.1/tcp/{free_tcp_port()}"
        else:
            address = listen_addresses[index]
        output = _checked(
            "init",
            "--data-dir",
            str(path),
            "--genesis",
            str(genesis_path),
            "--listen",
            address,
            "--no-genesis-check",
            "--json",
        )
        summary = json.loads(output)
        made.append(PeerDir(index, path, PeerId(summary["peerId"]), address))
    members = [argument for peer in made for argument in ("--member", str(peer.path))]
    _checked(
        "genesis",
        "create",
        "--network",
        network,
        "--shards",
        str(n_shards),
        "--genesis-time",
        str(genesis_time_now()),
        "--epoch-duration",
        str(EPOCH_DURATION_SECONDS),
        *members,
        "--output",
        str(genesis_path),
    )
    return NetworkFiles(directory, genesis_path, load_genesis(genesis_path), tuple(made))


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it when the parent goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(slots=True)
class PeerProcess:
    """One `walrus-peer run` child (restartable: ``start`` again after it exited).

    ``command_prefix`` goes before the command (``ip netns exec NS`` runs the peer in that
    network namespace; it execs, so the child is still the peer itself). With
    ``die_with_parent`` the kernel SIGKILLs the child when this process dies
    (``PR_SET_PDEATHSIG``), so a crashed test run leaves no peer behind.
    """

    data_dir: Path
    extra_arguments: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    command_prefix: tuple[str, ...] = ()
    die_with_parent: bool = False
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / LOG_NAME

    def start(self, environment: Mapping[str, str] | None = None) -> None:
        if self.running:
            raise RuntimeError(f"peer in {self.data_dir} is already running")
        env = dict(os.environ)
        env.update(environment or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    *self.command_prefix,
                    *cli_command("run", "--data-dir", str(self.data_dir), *self.extra_arguments),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, number: int) -> None:
        """Send a signal to the process alone (SIGTERM: the peer's own shutdown path)."""
        if self.running and self.process is not None:
            self.process.send_signal(number)

    def kill(self) -> int:
        """SIGKILL the whole process group and reap it; returns the exit status."""
        if self.process is None:
            raise RuntimeError("not started")
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=STOP_GRACE)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if it is still running after ``timeout`` seconds."""
        if self.process is None:
            raise RuntimeError("not started")
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class ProcessNetwork:
    """Peer processes of one network; :meth:`running` kills every child it started.

    ``command_prefixes``: one command prefix per peer (see :class:`PeerProcess`), none by default.
    """

    def __init__(
        self,
        files: NetworkFiles,
        extra_arguments: Sequence[str] = (),
        *,
        command_prefixes: Sequence[Sequence[str]] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if command_prefixes is not None and len(command_prefixes) != len(files.peers):
            raise ValueError(f"{len(command_prefixes)} prefixes for {len(files.peers)} peers")
        self.files = files
        self.processes = [
            PeerProcess(
                peer.path,
                tuple(extra_arguments),
                command_prefix=tuple(command_prefixes[index]) if command_prefixes else (),
                die_with_parent=die_with_parent,
            )
            for index, peer in enumerate(files.peers)
        ]

    @property
    def genesis(self) -> Genesis:
        return self.files.genesis

    def peer_id(self, index: int) -> PeerId:
        return self.files.peers[index].peer_id

    def kill_all(self) -> None:
        for process in self.processes:
            if process.process is not None:
                process.kill()

    @contextmanager
    def running(self, indices: Sequence[int] | None = None) -> Iterator[ProcessNetwork]:
        """Start the given peers (all by default); kill every started child on exit."""
        try:
            for index in range(len(self.processes)) if indices is None else indices:
                self.processes[index].start()
            yield self
        finally:
            self.kill_all()


async def wait_until_answering(
    light: LightPeer,
    peer_id: PeerId,
    *,
    timeout: float,
    process: PeerProcess | None = None,
) -> float:
    """Poll ``peer_id`` with a storage request until it answers; returns the seconds it took.

    Raises ``TimeoutError`` (with the log tail when ``process`` is given) if it does not
    answer in time, or at once if the process exits meanwhile.
    """
    started = time.monotonic()
    request = wire.BlobStatusRequest(blob_id=BlobId(bytes(32)))
    last_error = "no attempt"
    with trio.move_on_after(timeout):
        while True:
            if process is not None and not process.running:
                raise TimeoutError(
                    f"peer process exited with {process.returncode} before answering:\n"
                    f"{process.log_tail()}"
                )
            try:
                await light.call(peer_id, request, wire.BlobStatusReply, timeout=3.0)
                return time.monotonic() - started
            except WalrusError as error:
                last_error = f"{error.reason}: {error}"
            await trio.sleep(0.2)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(
        f"peer={peer_id[:12]} did not answer within {timeout:g}s (last: {last_error})\n{tail}"
    )


async def holds_verified_slivers(
    light: LightPeer,
    peer_id: PeerId,
    shard: int,
    blob_id: BlobId,
    metadata: Metadata,
    *,
    timeout: float,
) -> bool:
    """Whether the peer holding ``shard`` has the blob's metadata and both slivers of that
    shard's pair, and serves slivers that verify against ``metadata`` (False on any error)."""
    n_shards = light.committee.n_shards
    pair = shard_to_pair(blob_id, shard, n_shards)
    try:
        status = await light.call(
            peer_id, wire.BlobStatusRequest(blob_id=blob_id), wire.BlobStatusReply, timeout=timeout
        )
        if not status.has_metadata or pair not in status.stored_pair_indices:
            return False
        for kind, sliver_type, sliver in (
            (SliverKind.PRIMARY, SliverType.PRIMARY, pair),
            (SliverKind.SECONDARY, SliverType.SECONDARY, n_shards - 1 - pair),
        ):
            reply = await light.call(
                peer_id,
                wire.GetSliverRequest(blob_id=blob_id, pair_index=pair, sliver_kind=kind),
                wire.GetSliverReply,
                timeout=timeout,
            )
            verify_sliver(metadata, sliver_type, sliver, reply.data)
    except WalrusError:
        return False
    return True


__all__ = [
    "NetworkFiles",
    "PeerDir",
    "PeerProcess",
    "ProcessNetwork",
    "cli_command",
    "holds_verified_slivers",
    "init_process_network",
    "run_cli",
    "wait_until_answering",
]


async def wait_holding(
    genesis: Genesis,
    holders: Mapping[int, tuple[PeerId, int]],
    blob_ids: Sequence[BlobId],
    *,
    timeout: float,
    call_timeout: float,
    logs: Callable[[list[int]], str] = lambda indices: "",
) -> float:
    """Until every peer of ``holders`` (index -> peer id and the shard it holds) serves verified
    slivers of every blob (:func:`holds_verified_slivers`, polled each second, 8 checks at a
    time); returns the seconds it took. ``AssertionError`` after ``timeout`` naming what is
    still missing, followed by ``logs`` of the peers concerned."""
    started = time.monotonic()
    missing = {(index, blob_id) for index in holders for blob_id in blob_ids}
    async with open_light_peer(genesis, verify_chain=False) as light:
        with trio.fail_after(call_timeout * 3):
            metadata = {
                blob_id: await fetch_metadata(light, blob_id, timeout=call_timeout)
                for blob_id in blob_ids
            }

        async def check(index: int, blob_id: BlobId, limiter: trio.CapacityLimiter) -> None:
            peer_id, shard = holders[index]
            async with limiter:
                if await holds_verified_slivers(
                    light, peer_id, shard, blob_id, metadata[blob_id], timeout=call_timeout
                ):
                    missing.discard((index, blob_id))

        with trio.move_on_after(timeout):
            while missing:
                limiter = trio.CapacityLimiter(8)
                async with trio.open_nursery() as nursery:
                    for index, blob_id in sorted(missing):
                        nursery.start_soon(check, index, blob_id, limiter)
                if missing:
                    await trio.sleep(1.0)
    assert not missing, (
        f"after {timeout:g}s these (peer, blob) still lack verified slivers: "
        + ", ".join(f"({index}, {short_id(blob_id)})" for index, blob_id in sorted(missing))
        + "\n"
        + logs(sorted({index for index, _ in missing}))
    )
    return time.monotonic() - started
