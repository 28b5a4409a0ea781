"""A ``walrus-peer devnet`` run as a user runs it, from outside: the command in its own process
group, its peers found in ``/proc``, their CPU time, metrics and ``/status`` read over HTTP, peers
killed and restarted by signal. Used by ``bench/epochs.py`` and
``tests/testnet/test_epoch_churn.py``.

Everything here talks to 127.0.0.1 only; every HTTP call has a timeout, every wait a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from walrus_p2p.node.config import load_genesis


class DevnetError(RuntimeError):
    """The devnet did not start or exited."""


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)$")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load_text() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError):
        return 0, b""


def http_put(url: str, data: bytes, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError):
        return 0, b""


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value (labels kept as text)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC.match(line)
        if match:
            with contextlib.suppress(ValueError):
                values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PeerProc:
    index: int
    data_dir: Path
    metrics: str | None
    pid: int | None = None
    popen: subprocess.Popen[bytes] | None = None


@dataclass
class CpuMeter:
    """Sums CPU seconds of the peer processes across restarts (per pid, last value seen)."""

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


class Devnet:
    def __init__(
        self,
        directory: Path,
        *,
        peers: int,
        shards: int,
        epoch_duration: int,
        http_port: int = 0,
    ) -> None:
        self.directory = directory
        self.peer_count = peers
        self.shards = shards
        self.http = f"127.0.0.1:{http_port or free_port()}"
        self.process: subprocess.Popen[bytes] | None = None
        self.peers: dict[int, PeerProc] = {}
        self.genesis_time = 0
        self.epoch_duration = epoch_duration

    def start(self) -> None:
        log = open(self.directory / "devnet.log", "ab")  # noqa: SIM115
        command = [
            sys.executable,
            "-m",
            "walrus_p2p.cli",
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
        ]
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def wait_ready(self, timeout: float) -> float:
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
        self.genesis_time = load_genesis(net / "genesis.toml").genesis_time
        for data_dir in sorted(net.glob("peer-*")):
            index = int(data_dir.name.split("-")[1])
            config = (data_dir / "peer.toml").read_text()
            found = re.search(r'^metrics_address\s*=\s*"([^"]+)"', config, re.MULTILINE)
            self.peers[index] = PeerProc(index, data_dir, found.group(1) if found else None)
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
        results: dict[int, dict[str, float]] = {}

        def one(peer: PeerProc) -> None:
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
        peer = self.peers[index]
        if peer.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(peer.pid, signal.SIGKILL)
        peer.pid = None

    def restart(self, index: int) -> None:
        peer = self.peers[index]
        log = open(peer.data_dir / "peer.log", "ab")  # noqa: SIM115
        peer.popen = subprocess.Popen(
            [sys.executable, "-m", "walrus_p2p.cli", "run", "--data-dir", str(peer.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        peer.pid = peer.popen.pid

    def stop(self) -> None:
        processes = [self.process] + [p.popen for p in self.peers.values() if p.popen]
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
