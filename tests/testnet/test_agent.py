"""`walrus-peer agent` on a devnet of real processes (docs/cli.md, "The agent"): the client
commands a running agent answers give the same results as in-process runs, the agent survives
garbage on its socket, makes way for changed code, and stops cleanly."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from walrus_p2p.cli import agent_link
from walrus_p2p.testing.processes import CLIENT_CLI_TIMEOUT, Devnet, cli_command, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PEERS = 4
SHARDS = 10
READY_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("agent-devnet"), PEERS, SHARDS)
    try:
        net.prepare()
        for index in net.peers:
            net.start_peer(index)
        gateway = net.start_gateway("main")
        net.wait_all_reachable(gateway, READY_TIMEOUT)
        yield net
    finally:
        net.close()


class Cli:
    """CLI runs with the agent directory in the test's own folder."""

    def __init__(self, devnet: Devnet, runtime: Path) -> None:
        self.environment = devnet.environment(XDG_RUNTIME_DIR=str(runtime))
        self.genesis = str(devnet.genesis_path)

    def run(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            cli_command(*arguments),
            capture_output=True,
            env=self.environment,
            timeout=CLIENT_CLI_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check:
            assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        return result

    def socket_path(self) -> Path:
        old = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = self.environment["XDG_RUNTIME_DIR"]
        try:
            return agent_link.socket_path(self.genesis)
        finally:
            if old is None:
                del os.environ["XDG_RUNTIME_DIR"]
            else:
                os.environ["XDG_RUNTIME_DIR"] = old

    def agent_log(self) -> str:
        path = self.socket_path().with_suffix(".log")
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A short directory for the agent's socket (a Unix socket path holds at most 107 bytes;
    pytest's temporary directories are longer)."""
    path = Path(tempfile.mkdtemp(prefix="wagent-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def request(path: Path, kind: bytes, payload: bytes) -> bytes:
    """One raw frame to the agent; the first frame kind it answers with (b"" if it closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(agent_link.HEADER.pack(kind, len(payload)) + payload)
        answer = sock.recv(1)
        return answer


def test_agent_answers_client_commands_like_the_command_itself(
    devnet: Devnet, tmp_path: Path, runtime: Path
) -> None:
    cli = Cli(devnet, runtime)
    started = cli.run("agent", "start", "--idle-timeout", "300")
    path = cli.socket_path()
    assert str(path) in started.stdout.decode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    try:
        data = secrets.token_bytes(3000)
        source = tmp_path / "blob.bin"
        source.write_bytes(data)
        # A relative path: the agent works in the command's working directory.
        stored = json.loads(
            subprocess.run(
                cli_command("store", "blob.bin", "--epochs", "2", "--json"),
                capture_output=True,
                env=cli.environment,
                cwd=tmp_path,
                timeout=CLIENT_CLI_TIMEOUT,
                check=True,
            ).stdout
        )
        blob_id = stored[0]["newlyCreated"]["blobObject"]["blobId"]
        cli.run("read", blob_id, "-o", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == data
        # Binary output on stdout comes through unchanged.
        assert cli.run("read", blob_id, "-o", "-").stdout == data
        via_agent = json.loads(cli.run("status", blob_id, "--json").stdout)
        in_process = json.loads(cli.run("status", blob_id, "--json", "--no-agent").stdout)
        assert via_agent == in_process
        assert via_agent["state"] == "certified"
        info = json.loads(cli.run("info", "--json").stdout)
        assert info["verified"] is True and len(info["committee"]) == PEERS
        # An attribute set through the agent is what the command itself reads back.
        # (`--` first: a blob id may begin with `-`, which argparse would take for an option.)
        cli.run("set-blob-attribute", "--attr", "content-type", "image/png", "--", blob_id)
        attributes = json.loads(cli.run("get-blob-attribute", "--json", "--", blob_id).stdout)
        in_process_attributes = json.loads(
            cli.run("get-blob-attribute", "--json", "--no-agent", "--", blob_id).stdout
        )
        assert attributes == in_process_attributes
        assert attributes["attributes"] == {"content-type": "image/png"}
        # Errors keep their exit code and their one line.
        missing = cli.run("status", "A" * 43, check=False)
        assert missing.returncode == 3
        assert missing.stderr.decode().startswith("error:")
        # The agent answered them (and the --no-agent run did not go there).
        log = cli.agent_log()
        for command in ("store", "read", "status", "info", "set-blob-attribute"):
            assert f"agent answered command={command}" in log, log[-3000:]
        assert log.count("command=status") == 2

        # Garbage on the socket is dropped; the agent keeps answering.
        assert request(path, b"r", b"\xff not json") == b""
        assert request(path, b"z", b"{}") == b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(agent_link.HEADER.pack(b"r", 1 << 30))  # announces 1 GiB
            sock.settimeout(30)
            assert sock.recv(1) == b""
        assert json.loads(cli.run("status", blob_id, "--json").stdout) == via_agent
    finally:
        stopped = cli.run("agent", "stop")
        assert "agent stopped" in stopped.stdout.decode()
    assert not path.exists()
    # Without an agent the commands run in process, as before.
    assert json.loads(cli.run("status", blob_id, "--json").stdout)["state"] == "certified"


def test_agent_makes_way_for_changed_code(devnet: Devnet, tmp_path: Path, runtime: Path) -> None:
    """A command of other code (another fingerprint) is told to run itself, and the agent,
    which runs stale code, exits."""
    cli = Cli(devnet, runtime)
    cli.run("agent", "start", "--idle-timeout", "300")
    path = cli.socket_path()
    try:
        stale = {"argv": ["info"], "cwd": str(tmp_path), "env": {}, "fingerprint": "other"}
        assert request(path, b"r", json.dumps(stale).encode()) == b"n"
        poll_until(lambda: not path.exists() or None, timeout=30, what="the agent to exit")
        assert cli.run("agent", "status", check=False).returncode == 1
    finally:
        cli.run("agent", "stop")


def test_agent_exits_when_idle(devnet: Devnet, runtime: Path) -> None:
    cli = Cli(devnet, runtime)
    cli.run("agent", "start", "--idle-timeout", "2")
    path = cli.socket_path()
    try:
        started = time.monotonic()
        poll_until(lambda: not path.exists() or None, timeout=60, what="the idle agent to exit")
        assert time.monotonic() - started < 60
    finally:
        cli.run("agent", "stop")
