"""``walrus-peer agent``: a warm light peer that answers the client commands of one network
(docs/cli.md, "The agent").

Every ``walrus-peer store/read/status/...`` process pays the interpreter, the import of
py-libp2p and of the codec, a new identity's host, the committee's verification and fresh
connections before it does anything (about 1.2 s on the 2-core development machine, most of it
imports). An agent keeps all of that: a light peer per owner key, connected and with its
verified epoch chain, which it extends as epochs pass. A command finds the agent of its network
by the genesis file (:mod:`.agent_link`, standard library only), hands over its arguments,
working directory and ``WALRUS_*`` variables, and prints what comes back. Nothing is trusted
differently: the agent runs the very same command code, verifying every sliver and certificate
as the command would; it is the user's own process, reached through a socket only the user can
open (mode 0600 in a 0700 directory).

Commands run one at a time, in order (each runs with its own working directory, environment
and standard streams, which are process-wide). Without commands for ``--idle-timeout`` seconds
the agent exits.

``walrus-peer agent start`` starts one in the background (log: next to its socket), ``stop``
ends it, ``status`` says whether it runs, ``run`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from walrus_p2p.cli import agent_link
from walrus_p2p.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_log_level,
    configure_logging,
    genesis_and_owner,
    genesis_path,
)

if TYPE_CHECKING:
    import trio

    from walrus_p2p.client.service import WalrusClient
    from walrus_p2p.core.genesis import Genesis
    from walrus_p2p.core.identity import Identity

logger = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 1800.0
START_TIMEOUT = 60.0
MAX_SOCKET_PATH = 107
"""Bytes of a Unix socket path Linux accepts (``sun_path`` holds 108, the last one a NUL)."""
MAX_CLIENTS = 4
"""Light peers (one per owner key) an agent keeps open; the least recently used goes first."""


class Agent:
    """The server: a Unix socket, one light peer per owner key, one command at a time."""

    def __init__(
        self, genesis_file: str, idle_timeout: float, cli_main: Callable[[list[str]], int]
    ) -> None:
        import trio

        self.cli_main = cli_main
        """``walrus_p2p.cli.main``, handed down (this module sits below the package's root)."""
        self.genesis_file = os.path.realpath(genesis_file)
        self.idle_timeout = idle_timeout
        self.fingerprint = agent_link.code_fingerprint()
        self.lock = trio.Lock()
        self.last_used = time.monotonic()
        self.clients: dict[tuple[bytes, bytes], tuple[WalrusClient, trio.CancelScope]] = {}
        self.order: list[tuple[bytes, bytes]] = []
        self.nursery: trio.Nursery | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.stopping = False

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        import trio

        from walrus_p2p.node.config import load_genesis

        self.genesis = load_genesis(self.genesis_file)
        path = agent_link.socket_path(self.genesis_file)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"the agent's socket path is too long for a Unix socket ({path}); set "
                "XDG_RUNTIME_DIR to a shorter directory"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        if _answers(path):
            raise UsageError(f"an agent for {self.genesis_file} already runs ({path})")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        self.token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._watch_idle)
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])
                logger.info("agent serving network=%s socket=%s", self.genesis.network, path)
                print(f"agent ready: {path}", flush=True)
                if started is not None:
                    started()
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _watch_idle(self) -> None:
        import trio

        while True:
            await trio.sleep(min(30.0, self.idle_timeout / 4))
            if self.lock.locked():
                continue
            if time.monotonic() - self.last_used > self.idle_timeout:
                logger.info("agent idle for %.0f s; exiting", self.idle_timeout)
                self.stop()
                return

    def stop(self) -> None:
        self.stopping = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        import trio

        async with stream:
            try:
                with trio.fail_after(10):
                    kind, payload = await _read_frame(stream)
                request = json.loads(payload)
                if kind != b"r" or not isinstance(request, dict):
                    return
            except (trio.TooSlowError, trio.BrokenResourceError, ValueError, ConnectionError):
                return
            if request.get("fingerprint") != self.fingerprint:
                # The code changed since this agent started: the command runs in its own
                # process, and this agent makes way for one running the new code.
                logger.info("agent code is stale; exiting")
                await _send(stream, b"n", b"")
                self.stop()
                return
            async with self.lock:
                started = time.monotonic()
                self.last_used = started
                code, out, err = await trio.to_thread.run_sync(self._run_command, request)
                self.last_used = time.monotonic()
            argv = request.get("argv") or ["?"]
            logger.info(
                "agent answered command=%s code=%s seconds=%.3f",
                str(argv[0])[:32],
                code,
                self.last_used - started,
            )
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                if out:
                    await _send(stream, b"o", out)
                if err:
                    await _send(stream, b"e", err)
                await _send(stream, b"x", json.dumps(code).encode())

    # -- running one command (in a worker thread; one at a time) ----------------------------

    def _run_command(self, request: dict[str, Any]) -> tuple[int, bytes, bytes]:
        from walrus_p2p.cli import _common

        argv = [str(item) for item in request.get("argv", [])]
        environment = {str(k): str(v) for k, v in dict(request.get("env", {})).items()}
        saved_cwd = os.getcwd()
        saved_env = {k: v for k, v in os.environ.items() if k.startswith("WALRUS_")}
        root = logging.getLogger()
        saved_logging = (
            root.handlers[:],
            root.level,
            {name: logging.getLogger(name).level for name in _LOGGERS},
        )
        out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
        out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
        err = io.TextIOWrapper(err_bytes, encoding="utf-8", write_through=True)
        code = EXIT_FAILED
        try:
            os.chdir(str(request.get("cwd", saved_cwd)))
            for key in saved_env:
                os.environ.pop(key, None)
            os.environ.update({k: v for k, v in environment.items() if k.startswith("WALRUS_")})
            _common.set_agent_runner(self._run_work)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = self.cli_main(argv)
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else EXIT_FAILED
                except BaseException:
                    traceback.print_exc()
                    code = EXIT_FAILED
        except OSError as error:
            err.write(f"error: the agent cannot run the command: {error}\n")
        finally:
            _common.set_agent_runner(None)
            os.chdir(saved_cwd)
            for key in [k for k in os.environ if k.startswith("WALRUS_")]:
                del os.environ[key]
            os.environ.update(saved_env)
            root.handlers[:] = saved_logging[0]
            root.setLevel(saved_logging[1])
            for name, level in saved_logging[2].items():
                logging.getLogger(name).setLevel(level)
        out.flush()
        err.flush()
        return code, out_bytes.getvalue(), err_bytes.getvalue()

    def _run_work(
        self, arguments: argparse.Namespace, work: Callable[[Any], Awaitable[Any]], mode: str
    ) -> Any:
        """:func:`walrus_p2p.cli._common.run_client`/``run_light`` inside the agent: ``work``
        runs on the agent's event loop with the warm client of the command's owner key."""
        import trio

        configure_logging(arguments.log_level)
        genesis, owner = genesis_and_owner(arguments, pays=mode == "pays")
        if genesis.network_id != self.genesis.network_id:
            raise UsageError(
                f"the genesis file changed since the agent started ({genesis_path(arguments)}); "
                "run `walrus-peer agent stop`"
            )

        async def on_loop() -> Any:
            client = await self._client_for(genesis, owner)
            await client.light.refresh_if_stale()
            return await work(client.light if mode == "light" else client)

        return trio.from_thread.run(on_loop, trio_token=self.token)

    async def _client_for(self, genesis: Genesis, owner: Identity) -> WalrusClient:
        key = (bytes(genesis.network_id), bytes(owner.public_key.raw))
        if key in self.clients:
            self.order.remove(key)
            self.order.append(key)
            return self.clients[key][0]
        if len(self.order) >= MAX_CLIENTS:
            oldest = self.order.pop(0)
            _, scope = self.clients.pop(oldest)
            scope.cancel()
        assert self.nursery is not None
        held: tuple[WalrusClient, trio.CancelScope] = await self.nursery.start(
            _hold_client, genesis, owner
        )
        client = held[0]
        self.clients[key] = held
        self.order.append(key)
        return client


_LOGGERS = ("walrus_p2p", "walrus_p2p.net.libp2p")


async def _hold_client(genesis: Genesis, owner: Identity, task_status: Any) -> None:
    """Open a client and keep it open until its cancel scope is cancelled (a client's nurseries
    must be entered and left by one task)."""
    import trio

    from walrus_p2p.client.cache import CacheOptions
    from walrus_p2p.client.service import open_client

    with trio.CancelScope() as scope:
        async with open_client(genesis, owner, cache=CacheOptions()) as client:
            task_status.started((client, scope))
            await trio.sleep_forever()


async def _read_frame(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    buffer = bytearray()
    needed = agent_link.HEADER.size
    while len(buffer) < needed:
        chunk = await stream.receive_some(needed - len(buffer))
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    kind, size = agent_link.HEADER.unpack(bytes(buffer))
    if size > 1 << 20:
        raise ConnectionError("request too large")
    body = bytearray()
    while len(body) < size:
        chunk = await stream.receive_some(size - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return kind, bytes(body)


async def _send(stream: trio.SocketStream, kind: bytes, payload: bytes) -> None:
    await stream.send_all(agent_link.HEADER.pack(kind, len(payload)) + payload)


def _answers(path: Path) -> bool:
    """Whether an agent listens on ``path`` now."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _write_pid(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n")


def _pid_path(genesis: str) -> Path:
    return agent_link.agent_directory() / f"{agent_link.agent_name(genesis)}.pid"


def log_path(genesis: str) -> Path:
    return agent_link.agent_directory() / f"{agent_link.agent_name(genesis)}.log"


# -- commands ---------------------------------------------------------------------------------


def _command_run(arguments: argparse.Namespace) -> int:
    import trio

    configure_logging(arguments.log_level)
    genesis = genesis_path(arguments)
    agent = Agent(genesis, arguments.idle_timeout, arguments.cli_main)
    pid_file = _pid_path(genesis)

    async def main_task() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for _ in signals:
                        agent.stop()
                        return

                nursery.start_soon(on_signal)
                await agent.serve(lambda: _write_pid(pid_file))
                nursery.cancel_scope.cancel()

    try:
        trio.run(main_task)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
    return EXIT_OK


def start_agent(genesis: str, *, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> Path:
    """Start an agent for ``genesis`` in the background (its own session, output to its log)
    and wait until it answers; returns its socket path."""
    path = agent_link.socket_path(genesis)
    if _answers(path):
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = open(log_path(genesis), "ab")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "walrus_p2p.cli",
                "agent",
                "run",
                "--genesis",
                genesis,
                "--idle-timeout",
                str(idle_timeout),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != agent_link.AGENT_SWITCH},
        )
    finally:
        log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(path):
        if process.poll() is not None:
            raise UsageError(
                f"the agent exited with code {process.returncode}; see {log_path(genesis)}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise UsageError(f"the agent did not start within {START_TIMEOUT:g}s")
        time.sleep(0.05)
    return path


def stop_agent(genesis: str, *, timeout: float = 10.0) -> bool:
    """Stop the agent of ``genesis`` if one runs; whether one did."""
    pid_file = _pid_path(genesis)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _command_start(arguments: argparse.Namespace) -> int:
    genesis = genesis_path(arguments)
    path = start_agent(genesis, idle_timeout=arguments.idle_timeout)
    print(f"agent running for {os.path.realpath(genesis)}: {path} (log {log_path(genesis)})")
    return EXIT_OK


def _command_stop(arguments: argparse.Namespace) -> int:
    genesis = genesis_path(arguments)
    print("agent stopped" if stop_agent(genesis) else "no agent was running")
    return EXIT_OK


def _command_status(arguments: argparse.Namespace) -> int:
    genesis = genesis_path(arguments)
    path = agent_link.socket_path(genesis)
    if _answers(path):
        print(f"agent running: {path}")
        return EXIT_OK
    print("no agent running")
    return EXIT_FAILED


def add_commands(commands: Any, cli_main: Callable[[list[str]], int]) -> None:
    agent = commands.add_parser(
        "agent", help="a warm light peer that answers client commands at once"
    )
    actions = agent.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name, handler, text in (
        ("start", _command_start, "start an agent for the network in the background"),
        ("stop", _command_stop, "stop the network's agent"),
        ("status", _command_status, "whether an agent runs for the network"),
        ("run", _command_run, "run an agent in the foreground"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--genesis", metavar="FILE", help="network genesis (or WALRUS_GENESIS)")
        if name in ("start", "run"):
            action.add_argument(
                "--idle-timeout",
                type=float,
                default=DEFAULT_IDLE_TIMEOUT,
                metavar="SECONDS",
                help=f"exit after this long without commands (default {DEFAULT_IDLE_TIMEOUT:g})",
            )
        add_log_level(action, "info" if name == "run" else "warning")
        action.set_defaults(handler=handler, cli_main=cli_main)
