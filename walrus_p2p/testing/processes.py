"""The one process harness: real `walrus-peer` processes on 127.0.0.1, driven from tests, benches.

Who uses it: every multi-process test (``tests/testnet``: ``test_devnet``, ``test_process_faults``,
``test_durability``, ``test_partition``, ``test_epoch_churn``) and the benches that start peers
(``bench/network.py``, ``bench/epochs.py``; ``bench/idle_hosts.py`` for its CPU meter and child
processes). In-process networks are :mod:`walrus_p2p.testing.network`.

- :func:`spawn` starts any child in its own session (so a Ctrl-C of pytest reaches only pytest)
  with its output appended to a log file and, optionally, SIGKILL from the kernel when the
  thread that started it dies (``PR_SET_PDEATHSIG``); :func:`stop_process` stops one (TERM, then
  KILL of its process group after a grace period); :func:`tail` reads the end of a log.
- :class:`PeerProcess` is one restartable ``walrus-peer run`` child (``start`` again after it
  exited, ``kill`` for churn), optionally behind a command prefix (``ip netns exec NS``).
- Three ways to lay out a network: :func:`init_process_network` + :class:`ProcessNetwork` (what an
  operator does: ``walrus-peer init`` per peer, ``walrus-peer genesis create``);
  :class:`Devnet` (the layout ``walrus-peer devnet`` makes, peers and gateways started one by one
  with metrics ports and faults); :class:`DevnetCommand` (the ``walrus-peer devnet`` command
  itself, as a user runs it, its peers found in ``/proc``, killed and restarted by signal).
- Readiness: :func:`wait_until_answering` (a storage request through a light peer),
  :meth:`Devnet.wait_peer_metrics`, :meth:`Devnet.wait_all_reachable`,
  :meth:`DevnetCommand.wait_ready` (HTTP), :func:`wait_holding` (verified slivers).

Everything talks to 127.0.0.1 only; every HTTP call and every wait has a deadline, every poll
loop a limit; the context managers and ``close``/``stop`` methods kill every child started.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.read import fetch_metadata
from walrus_p2p.core import wire
from walrus_p2p.core.encoding import SliverType, shard_to_pair
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.metadata import Metadata, verify_sliver
from walrus_p2p.devnet import GENESIS_NAME, WALLET_NAME, DevnetOptions, peer_dir, prepare
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.config import load_genesis, load_identity
from walrus_p2p.testing.network import EPOCH_DURATION_SECONDS, free_tcp_port, genesis_time_now
from walrus_p2p.types import BlobId, PeerId, SliverKind, short_id

T = TypeVar("T")

CLI_TIMEOUT = 60.0
"""Upper bound for one offline CLI command (init, genesis create) on a loaded machine."""
CLIENT_CLI_TIMEOUT = 120.0
"""Upper bound for one client CLI command that talks to the network (store, read, info)."""
STOP_GRACE = 10.0
"""Seconds a process gets between SIGTERM and SIGKILL."""
LOG_NAME = "peer.log"
_PR_SET_PDEATHSIG = 1


# -- processes ---------------------------------------------------------------------------------


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


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it when the parent goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    arguments: Sequence[str],
    *,
    log_path: Path,
    environment: Mapping[str, str] | None = None,
    die_with_parent: bool = True,
    header: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session, stdout and stderr appended to ``log_path``.

    ``environment``: the child's whole environment (this process's by default).
    ``die_with_parent``: SIGKILL from the kernel when the *thread* that started it exits, so
    start long-lived children from the main thread only.
    """
    with open(log_path, "ab") as log:
        if header is not None:
            log.write(header.encode())
            log.flush()
        return subprocess.Popen(
            list(arguments),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if environment is None else dict(environment),
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def stop_process(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """SIGKILL, or SIGTERM then SIGKILL (whole group) after the grace period; waits for exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE)
    # A child of the process (none today) must not outlive it either.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def poll_until(
    condition: Callable[[], T | None], *, timeout: float, interval: float = 0.5, what: str
) -> T:
    """Call ``condition`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value is not None:
                return value
        except (httpx.HTTPError, OSError) as error:
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} ({last_error})")
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def processes_mentioning(text: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in command_line:
            found.append(int(entry.name))
    return found


# -- HTTP, metrics, CPU ------------------------------------------------------------------------

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)$")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """``(status, body)``; status 0 if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError):
        return 0, b""


def http_put(url: str, data: bytes, timeout: float) -> tuple[int, bytes]:
    """``(status, body)``; status 0 if nothing answered."""
    request = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError):
        return 0, b""


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{"name{labels}": value}`` (comments dropped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line.strip())
        if match:
            with contextlib.suppress(ValueError):
                values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load_text() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass
class CpuMeter:
    """Sums CPU seconds of processes across restarts (per pid, last value seen)."""

    last: dict[int, float] = field(default_factory=dict)
    total: float = 0.0

    def sample(self, pids: list[int]) -> float:
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            before = self.last.get(pid, 0.0)
            if seconds >= before:
                self.total += seconds - before
                self.last[pid] = seconds
        return self.total


# -- one peer process --------------------------------------------------------------------------


@dataclass(slots=True)
class PeerProcess:
    """One `walrus-peer run` child (restartable: ``start`` again after it exited).

    ``command_prefix`` goes before the command (``ip netns exec NS`` runs the peer in that
    network namespace; it execs, so the child is still the peer itself). With
    ``die_with_parent`` the kernel SIGKILLs the child when this process dies
    (``PR_SET_PDEATHSIG``), so a crashed test run leaves no peer behind. Its output goes to
    ``<data dir>/peer.log``, after a ``--- start N ---`` line per start.
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

    def start(
        self,
        environment: Mapping[str, str] | None = None,
        *,
        replace_environment: bool = False,
        note: str = "",
    ) -> None:
        """Start it; ``environment`` is added to this process's (or, with
        ``replace_environment``, is the whole environment)."""
        if self.running:
            raise RuntimeError(f"peer in {self.data_dir} is already running")
        env = {} if replace_environment else dict(os.environ)
        env.update(environment or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.starts += 1
        self.process = spawn(
            [
                *self.command_prefix,
                *cli_command("run", "--data-dir", str(self.data_dir), *self.extra_arguments),
            ],
            log_path=self.log_path,
            environment=env,
            die_with_parent=self.die_with_parent,
            header=f"--- start {self.starts}{': ' + note if note else ''} ---\n",
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

    def stop(self, *, kill: bool = False) -> None:
        """:func:`stop_process`: SIGKILL, or SIGTERM then SIGKILL after the grace period."""
        if self.process is not None:
            stop_process(self.process, kill=kill)

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


# -- a network initialised with the CLI (walrus-peer init, genesis create) ---------------------


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


# -- the devnet layout, peers and gateways started one by one ----------------------------------


@dataclass
class DevnetPeer:
    """One peer of a :class:`Devnet`: its data directory, shards, metrics port and process."""

    index: int
    data_dir: Path
    peer_id: str
    shards: tuple[int, ...]
    metrics_port: int
    child: PeerProcess

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.process

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def running(self) -> bool:
        return self.child.running


@dataclass
class Gateway:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Devnet:
    """A devnet of real `walrus-peer` processes on 127.0.0.1, started one by one.

    The layout is the one `walrus-peer devnet` makes (``DIR/genesis.toml``, ``DIR/peer-NN``;
    built with :func:`walrus_p2p.devnet.prepare`), but the processes are started here, so that a
    test can stop, kill and restart single peers (with a fault injected, or a metrics port) and
    run gateways with the limits it needs. Every child gets SIGKILL from the kernel if this
    process dies; :meth:`close` (call it in ``finally``) stops them all.
    """

    directory: Path
    peer_count: int
    shard_count: int
    economy: bool = False
    """A WAL economy in the genesis (``walrus-peer devnet --economy``)."""
    epoch_duration: int = 3600
    peers: dict[int, DevnetPeer] = field(default_factory=dict)
    gateways: list[Gateway] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    # -- set-up -------------------------------------------------------------------------

    @property
    def genesis_path(self) -> Path:
        return self.directory / GENESIS_NAME

    @property
    def key_dir(self) -> Path:
        return self.directory / "client"

    def environment(self, **extra: str) -> dict[str, str]:
        """The environment of this devnet's children: no ``WALRUS_*`` of the caller, the
        devnet's genesis, client key directory and wallet."""
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("WALRUS_") and key != "PYTHONWARNINGS"
        }
        environment["WALRUS_GENESIS"] = str(self.genesis_path)
        environment["WALRUS_KEY_DIR"] = str(self.key_dir)
        if self.economy:
            # The devnet's funded wallet pays for the CLI's stores (docs/economics.md, "Paid
            # storage").
            environment["WALRUS_WALLET"] = str(self.directory / WALLET_NAME)
        environment.update(extra)
        return environment

    def prepare(self) -> None:
        prepare(
            DevnetOptions(
                directory=self.directory,
                peers=self.peer_count,
                shards=self.shard_count,
                capacity_bytes=4 << 30,
                economy=self.economy,
                epoch_duration=self.epoch_duration,
            )
        )
        info = self.cli_json("info", timeout=60)
        self.info = info
        shards_by_peer = {entry["peerId"]: tuple(entry["shards"]) for entry in info["committee"]}
        for index in range(1, self.peer_count + 1):
            data_dir = peer_dir(self.directory, index)
            peer_id = str(load_identity(data_dir).peer_id)
            metrics_port = free_tcp_port()
            self.peers[index] = DevnetPeer(
                index=index,
                data_dir=data_dir,
                peer_id=peer_id,
                shards=shards_by_peer[peer_id],
                metrics_port=metrics_port,
                child=PeerProcess(
                    data_dir, ("--metrics", f"127.0.0.1:{metrics_port}"), die_with_parent=True
                ),
            )

    @property
    def f(self) -> int:
        return int(self.info["f"])

    # -- storage peers ------------------------------------------------------------------

    def start_peer(self, index: int, **environment: str) -> None:
        peer = self.peers[index]
        assert not peer.running(), f"peer {index} is already running"
        peer.child.start(
            self.environment(**environment),
            replace_environment=True,
            note=f"test harness: starting peer {index} env={environment}",
        )

    def stop_peer(self, index: int, *, kill: bool = False) -> None:
        self.peers[index].child.stop(kill=kill)

    def wait_peer_metrics(self, index: int, timeout: float = 60.0) -> None:
        peer = self.peers[index]

        def answered() -> bool | None:
            if not peer.running():
                raise AssertionError(
                    f"peer {index} exited with {peer.process and peer.process.returncode}:\n"
                    + tail(peer.log_path)
                )
            reply = httpx.get(peer.metrics_url, timeout=5.0)
            return True if reply.status_code == 200 else None

        poll_until(answered, timeout=timeout, what=f"the metrics of peer {index}")

    def metrics(self, index: int) -> dict[str, float]:
        reply = httpx.get(self.peers[index].metrics_url, timeout=10.0)
        reply.raise_for_status()
        return parse_metrics(reply.text)

    # -- gateways -----------------------------------------------------------------------

    def start_gateway(self, name: str, *options: str, log_level: str = "info") -> Gateway:
        port = free_tcp_port()
        log_path = self.directory / f"gateway-{name}.log"
        process = spawn(
            cli_command("serve", "--bind", f"127.0.0.1:{port}", "--log-level", log_level, *options),
            log_path=log_path,
            environment=self.environment(),
        )
        gateway = Gateway(name, f"http://127.0.0.1:{port}", process, log_path)
        self.gateways.append(gateway)
        return gateway

    def gateway(self, name: str) -> Gateway:
        (gateway,) = (gateway for gateway in self.gateways if gateway.name == name)
        return gateway

    def wait_all_reachable(self, gateway: Gateway, timeout: float) -> dict[str, Any]:
        """Wait until the gateway's light peer reaches every shard (GET /status == 200)."""

        def ready() -> dict[str, Any] | None:
            if gateway.process.poll() is not None:
                raise AssertionError(f"gateway {gateway.name} exited:\n" + tail(gateway.log_path))
            reply = httpx.get(f"{gateway.url}/status", timeout=10.0)
            body: dict[str, Any] = reply.json()
            if reply.status_code == 200 and body["reachableShards"] == self.shard_count:
                return body
            return None

        return poll_until(ready, timeout=timeout, interval=1.0, what="every shard reachable")

    # -- client commands ----------------------------------------------------------------

    def cli(
        self, *arguments: str, timeout: float = CLIENT_CLI_TIMEOUT, check: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            cli_command(*arguments),
            capture_output=True,
            env=self.environment(),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"walrus-peer {' '.join(arguments)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )
        return result

    def cli_json(self, *arguments: str, timeout: float = CLIENT_CLI_TIMEOUT) -> Any:
        result = self.cli(*arguments, "--json", timeout=timeout, check=True)
        return json.loads(result.stdout)

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll ``check`` every 2 s until it returns something true (returned) or ``timeout``
        passes (``AssertionError`` with the peers' log tails)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(2.0)
        raise AssertionError(f"not within {timeout} s: {what}\n{self.log_tails(15)}")

    # -- tear-down ----------------------------------------------------------------------

    def log_tails(self, lines: int = 25) -> str:
        paths = [gateway.log_path for gateway in self.gateways]
        paths += [peer.log_path for peer in self.peers.values()]
        return "\n".join(f"==== {path} ====\n{tail(path, lines)}" for path in paths)

    def processes(self) -> Iterator[subprocess.Popen[bytes]]:
        for gateway in self.gateways:
            yield gateway.process
        for peer in self.peers.values():
            if peer.process is not None:
                yield peer.process

    def close(self) -> None:
        """Stop every process this devnet started (TERM all, then KILL what is left)."""
        processes = list(self.processes())
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            stop_process(process, kill=True)
        # The sliver stores are large (several 64 MiB blobs, ~4x encoded); keep only the logs.
        for peer in self.peers.values():
            shutil.rmtree(peer.data_dir / "store", ignore_errors=True)


@contextmanager
def running_devnet(
    prefix: str,
    peers: int,
    shards: int,
    *,
    ready_timeout: float,
    economy: bool = False,
    epoch_duration: int = 3600,
    directory: Path | None = None,
) -> Iterator[Devnet]:
    """A :class:`Devnet` in ``directory`` (default: a fresh temporary one named ``prefix``...)
    with every peer started and answering on its metrics port; every process is stopped on the
    way out (the set-up of the benches and of the module-wide devnets of the CLI tests)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix)) if directory is None else directory
    devnet = Devnet(directory, peers, shards, economy=economy, epoch_duration=epoch_duration)
    try:
        devnet.prepare()
        for index in devnet.peers:
            devnet.start_peer(index)
        for index in devnet.peers:
            devnet.wait_peer_metrics(index, timeout=ready_timeout)
        yield devnet
    finally:
        devnet.close()


def bench_header(name: str) -> str:
    """The first line a bench prints: what, when, on which CPU, at which load."""
    return (
        f"{name} {time.strftime('%Y-%m-%d %H:%M:%S %Z')} cpu={cpu_model()!r} "
        f"cores={os.cpu_count()} load={load_text()}"
    )


def peers_holding_at_most(devnet: Devnet, weight: int) -> list[int]:
    """The largest set of peers (by shard weight, then by count) holding at most ``weight``."""
    best: tuple[int, int, list[int]] = (0, 0, [])
    indices = sorted(devnet.peers)
    for mask in range(1, 1 << len(indices)):
        chosen = [index for bit, index in enumerate(indices) if mask >> bit & 1]
        total = sum(len(devnet.peers[index].shards) for index in chosen)
        if total <= weight and (total, len(chosen)) > best[:2]:
            best = (total, len(chosen), chosen)
    return best[2]


# -- the `walrus-peer devnet` command, run as a user runs it -----------------------------------


class DevnetError(RuntimeError):
    """The devnet did not start or exited."""


@dataclass
class DevnetCommandPeer:
    """A peer process of a :class:`DevnetCommand` (a child of the command, found in ``/proc``;
    after :meth:`DevnetCommand.restart`, a child of this process)."""

    index: int
    data_dir: Path
    metrics: str | None
    pid: int | None = None
    child: PeerProcess | None = None


class DevnetCommand:
    """``walrus-peer devnet`` in its own process group, from outside: its peers found in
    ``/proc``, their CPU time, metrics and ``/status`` read over HTTP, peers killed and
    restarted by signal. Used by ``bench/epochs.py`` and ``tests/testnet/test_epoch_churn.py``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        peers: int,
        shards: int,
        epoch_duration: int,
        http_port: int = 0,
        economy: bool = False,
    ) -> None:
        self.directory = directory
        self.peer_count = peers
        self.shards = shards
        self.economy = economy
        """``walrus-peer devnet --economy``: every epoch value carries a settlement."""
        self.http = f"127.0.0.1:{http_port or free_tcp_port()}"
        self.process: subprocess.Popen[bytes] | None = None
        self.peers: dict[int, DevnetCommandPeer] = {}
        self.genesis_time = 0
        self.epoch_duration = epoch_duration

    def start(self) -> None:
        self.process = spawn(
            cli_command(
                "devnet",
                "--dir",
                str(self.directory / "net"),
                "--peers",
                str(self.peer_count),
                "--shards",
                str(self.shards),
                "--epoch-duration",
                str(self.epoch_duration),
                "--http",
                self.http,
                *(["--economy"] if self.economy else []),
            ),
            log_path=self.directory / "devnet.log",
            die_with_parent=False,
        )

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def wait_ready(self, timeout: float) -> float:
        """Until the gateway's ``GET /status`` answers 200; the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise DevnetError(f"devnet exited early; see {self.directory}/devnet.log")
            status, _ = http_get(self.url("/status"), 3.0)
            if status == 200:
                return time.monotonic() - started
            time.sleep(1.0)
        raise DevnetError(f"devnet not writable within {timeout:g}s")

    def discover(self) -> None:
        """Peer pids (from /proc) and metrics addresses (from peer.toml); the genesis clock."""
        net = self.directory / "net"
        self.genesis_time = load_genesis(net / GENESIS_NAME).genesis_time
        for data_dir in sorted(net.glob("peer-*")):
            index = int(data_dir.name.split("-")[1])
            config = (data_dir / "peer.toml").read_text()
            found = re.search(r'^metrics_address\s*=\s*"([^"]+)"', config, re.MULTILINE)
            self.peers[index] = DevnetCommandPeer(
                index, data_dir, found.group(1) if found else None
            )
        self.refresh_pids()

    def refresh_pids(self) -> None:
        by_dir = {str(peer.data_dir): peer for peer in self.peers.values()}
        for peer in self.peers.values():
            peer.pid = None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parts = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--data-dir" in parts:
                where = parts.index(b"--data-dir") + 1
                if where < len(parts):
                    found = by_dir.get(parts[where].decode(errors="replace"))
                    if found is not None and b"run" in parts:
                        found.pid = int(entry.name)

    def pids(self) -> list[int]:
        return [peer.pid for peer in self.peers.values() if peer.pid is not None]

    def epoch_start(self, epoch: int) -> float:
        return float(self.genesis_time + epoch * self.epoch_duration)

    def scrape(self) -> dict[int, dict[str, float]]:
        """Every peer's metrics, concurrently (5 s per request, 10 s per thread at most)."""
        results: dict[int, dict[str, float]] = {}

        def one(peer: DevnetCommandPeer) -> None:
            if peer.metrics is None:
                return
            status, body = http_get(f"http://{peer.metrics}/metrics", 5.0)
            if status == 200:
                results[peer.index] = parse_metrics(body.decode(errors="replace"))

        threads = [threading.Thread(target=one, args=(peer,)) for peer in self.peers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        return results

    def kill(self, index: int) -> None:
        """SIGKILL the peer's process."""
        peer = self.peers[index]
        if peer.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(peer.pid, signal.SIGKILL)
        peer.pid = None

    def restart(self, index: int) -> None:
        """Start the peer again (``walrus-peer run`` on its data directory, a child of this
        process; it does not die with the thread that calls this)."""
        peer = self.peers[index]
        if peer.child is None:
            peer.child = PeerProcess(peer.data_dir)
        if peer.child.running:
            peer.child.kill()
        peer.child.start()
        peer.pid = peer.child.pid

    def stop(self) -> None:
        """TERM the command's and every restarted peer's process group, KILL what is left."""
        processes = [self.process] + [
            peer.child.process for peer in self.peers.values() if peer.child is not None
        ]
        for process in processes:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in processes:
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- readiness and holdings over libp2p --------------------------------------------------------


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


__all__ = [
    "CLIENT_CLI_TIMEOUT",
    "CLI_TIMEOUT",
    "CpuMeter",
    "Devnet",
    "DevnetCommand",
    "DevnetCommandPeer",
    "DevnetError",
    "DevnetPeer",
    "Gateway",
    "NetworkFiles",
    "PeerDir",
    "PeerProcess",
    "ProcessNetwork",
    "cli_command",
    "cpu_model",
    "free_tcp_port",
    "holds_verified_slivers",
    "http_get",
    "http_put",
    "init_process_network",
    "load_text",
    "parse_metrics",
    "peers_holding_at_most",
    "poll_until",
    "processes_mentioning",
    "run_cli",
    "spawn",
    "stop_process",
    "tail",
    "wait_holding",
    "wait_until_answering",
]
