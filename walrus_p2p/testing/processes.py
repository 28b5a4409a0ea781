"""A multi-process test network: peer directories made by the CLI, `walrus-peer run` children.

Owner: tests/testnet. :func:`init_process_network` does what an operator does: ``walrus-peer
init`` for each peer (a free 127.0.0.1 port each), then ``walrus-peer genesis create`` over
their directories. :class:`PeerProcess` runs one ``walrus-peer run`` in its own process group
(so a kill reaches everything it started), with its output in ``<data dir>/peer.log``.
:class:`ProcessNetwork` is a context manager that kills every child it started on exit,
whatever happened; :func:`wait_until_answering` polls a peer with a real storage request
through a light peer until it answers or a deadline passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.core import wire
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.config import load_genesis
from walrus_p2p.testing.network import EPOCH_DURATION_SECONDS, free_tcp_port, genesis_time_now
from walrus_p2p.types import BlobId, PeerId

CLI_TIMEOUT = 60.0
"""Upper bound for one offline CLI command (init, genesis create) on a loaded machine."""
STOP_GRACE = 10.0
LOG_NAME = "peer.log"


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
) -> NetworkFiles:
    """Initialise ``peers`` data directories and their genesis with the CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    genesis_path = directory / "genesis.toml"
    made: list[PeerDir] = []
    for index in range(peers):
        path = directory / f"peer-{index:02d}"
        address = f"/ip4/127.0.0.1/tcp/{free_tcp_port()}"
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


@dataclass(slots=True)
class PeerProcess:
    """One `walrus-peer run` child (restartable: ``start`` again after it exited)."""

    data_dir: Path
    extra_arguments: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
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
                cli_command("run", "--data-dir", str(self.data_dir), *self.extra_arguments),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
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
    """Peer processes of one network; :meth:`running` kills every child it started."""

    def __init__(self, files: NetworkFiles, extra_arguments: Sequence[str] = ()) -> None:
        self.files = files
        self.processes = [PeerProcess(peer.path, tuple(extra_arguments)) for peer in files.peers]

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


__all__ = [
    "NetworkFiles",
    "PeerDir",
    "PeerProcess",
    "ProcessNetwork",
    "cli_command",
    "init_process_network",
    "run_cli",
    "wait_until_answering",
]
