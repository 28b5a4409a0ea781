"""A devnet of real `walrus-peer` processes on 127.0.0.1, driven from a test.

The layout is the one `walrus-peer devnet` makes (``DIR/genesis.toml``, ``DIR/peer-NN``; built
with :func:`walrus_p2p.devnet.prepare`), but the processes are started here, one by one, so that a
test can stop, kill and restart single peers (with a fault injected, or a metrics port) and run
gateways with the limits it needs. Every process:

- is a real ``walrus-peer run`` / ``walrus-peer serve`` child with its output in a log file;
- gets SIGKILL from the kernel if this test process dies (``PR_SET_PDEATHSIG``), and runs in its
  own session, so a Ctrl-C of pytest reaches only pytest;
- is stopped by :meth:`Devnet.close` (TERM, then KILL of its process group after a grace period),
  which the fixture calls in ``finally``.

Every wait here has a deadline; nothing waits on a fixed sleep where a condition can be polled.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from walrus_p2p.devnet import GENESIS_NAME, DevnetOptions, peer_dir, prepare
from walrus_p2p.node.config import load_identity

T = TypeVar("T")

STOP_GRACE_SECONDS = 10.0
CLI_TIMEOUT_SECONDS = 120.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli_command() -> list[str]:
    """The installed `walrus-peer` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("walrus-peer")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "walrus_p2p.cli"]


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it when this test process goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    arguments: Sequence[str], *, log_path: Path, environment: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(arguments),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(environment),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop_process(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """SIGKILL, or SIGTERM then SIGKILL (whole group) after the grace period; waits for exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE_SECONDS)
    # A child of the peer (none today) must not outlive it either.
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


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{"name{labels}": value}`` (comments dropped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line.strip())
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


@dataclass
class Peer:
    index: int
    data_dir: Path
    peer_id: str
    shards: tuple[int, ...]
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "peer.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Gateway:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Devnet:
    directory: Path
    peer_count: int
    shard_count: int
    peers: dict[int, Peer] = field(default_factory=dict)
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
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("WALRUS_") and key != "PYTHONWARNINGS"
        }
        environment["WALRUS_GENESIS"] = str(self.genesis_path)
        environment["WALRUS_KEY_DIR"] = str(self.key_dir)
        environment.update(extra)
        return environment

    def prepare(self) -> None:
        prepare(
            DevnetOptions(
                directory=self.directory,
                peers=self.peer_count,
                shards=self.shard_count,
                capacity_bytes=4 << 30,
            )
        )
        info = self.cli_json("info", timeout=60)
        self.info = info
        shards_by_peer = {entry["peerId"]: tuple(entry["shards"]) for entry in info["committee"]}
        for index in range(1, self.peer_count + 1):
            data_dir = peer_dir(self.directory, index)
            peer_id = str(load_identity(data_dir).peer_id)
            self.peers[index] = Peer(
                index=index,
                data_dir=data_dir,
                peer_id=peer_id,
                shards=shards_by_peer[peer_id],
                metrics_port=free_port(),
            )

    @property
    def f(self) -> int:
        return int(self.info["f"])

    # -- storage peers ------------------------------------------------------------------

    def start_peer(self, index: int, **environment: str) -> None:
        peer = self.peers[index]
        assert not peer.running(), f"peer {index} is already running"
        with open(peer.log_path, "ab") as log:
            log.write(f"--- test harness: starting peer {index} env={environment}\n".encode())
        peer.process = spawn(
            [
                *cli_command(),
                "run",
                "--data-dir",
                str(peer.data_dir),
                "--metrics",
                f"127.0.0.1:{peer.metrics_port}",
            ],
            log_path=peer.log_path,
            environment=self.environment(**environment),
        )

    def stop_peer(self, index: int, *, kill: bool = False) -> None:
        peer = self.peers[index]
        if peer.process is not None:
            stop_process(peer.process, kill=kill)

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
        port = free_port()
        log_path = self.directory / f"gateway-{name}.log"
        process = spawn(
            [
                *cli_command(),
                "serve",
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                log_level,
                *options,
            ],
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
        self, *arguments: str, timeout: float = CLI_TIMEOUT_SECONDS, check: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [*cli_command(), *arguments],
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

    def cli_json(self, *arguments: str, timeout: float = CLI_TIMEOUT_SECONDS) -> Any:
        result = self.cli(*arguments, "--json", timeout=timeout, check=True)
        return json.loads(result.stdout)

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
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            stop_process(process, kill=True)
        # The sliver stores are large (several 64 MiB blobs, ~4x encoded); keep only the logs.
        for peer in self.peers.values():
            shutil.rmtree(peer.data_dir / "store", ignore_errors=True)


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
