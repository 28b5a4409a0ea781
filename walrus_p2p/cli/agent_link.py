"""The command line's side of ``walrus-peer agent`` (docs/cli.md, "The agent"): standard library
only, so that a command answered by a running agent never imports trio, libp2p or the codec.

A light-client command (:data:`AGENT_COMMANDS`) first looks for an agent of its network: a Unix
socket named after the genesis file's real path, in :func:`agent_directory`. If one answers, the
command line, working directory and ``WALRUS_*`` variables go to it, and its output and exit
code come back; if none runs (or it runs other code, or fails to answer), the command runs in
this process as before. Frames on the socket: one kind byte, a 4-byte big-endian length, the
payload; the request is JSON (``r``), the answer is stdout bytes (``o``), stderr bytes (``e``)
and the exit code (``x``, JSON), or ``n`` (no: run it yourself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

AGENT_COMMANDS = frozenset(
    {
        "store",
        "read",
        "status",
        "list",
        "extend",
        "delete",
        "info",
        "health",
        "set-blob-attribute",
        "get-blob-attribute",
        "remove-blob-attribute-fields",
        "remove-blob-attribute",
        "store-quilt",
        "read-quilt",
        "list-patches-in-quilt",
    }
)
"""Commands an agent may answer (``info --offline`` and everything else run in process)."""

AGENT_SWITCH = "WALRUS_AGENT"
"""``off`` in the environment: never use an agent."""

MAX_FRAME = 1 << 31
HEADER = struct.Struct(">cI")
CONNECT_TIMEOUT = 2.0
"""Seconds to reach an agent's socket; a busy agent's answer itself has no deadline here."""


def agent_directory() -> Path:
    """Where agents keep their sockets and logs: ``$XDG_RUNTIME_DIR/walrus-p2p`` if that is set,
    else ``~/.walrus-p2p/agent``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "walrus-p2p"
    return Path(os.path.expanduser("~/.walrus-p2p/agent"))


def agent_name(genesis: str) -> str:
    """An agent's file name stem: a hash of the genesis file's real path."""
    real = os.path.realpath(genesis)
    return "agent-" + hashlib.sha256(real.encode()).hexdigest()[:16]


def socket_path(genesis: str) -> Path:
    return agent_directory() / f"{agent_name(genesis)}.sock"


def code_fingerprint() -> str:
    """The version and the newest modification time of this package's modules: an agent
    started before the code changed does not answer for the new code."""
    from walrus_p2p import __version__

    package = Path(__file__).resolve().parent.parent
    newest = 0
    for path in package.rglob("*.py"):
        with contextlib.suppress(OSError):
            newest = max(newest, path.stat().st_mtime_ns)
    return f"{__version__}:{newest}"


def send_frame(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(HEADER.pack(kind, len(payload)) + payload)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("the agent closed the connection")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, size = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"agent frame of {size} bytes")
    return kind, _read_exactly(sock, size)


def wanted(command: str | None, argv: Sequence[str]) -> bool:
    return (
        command in AGENT_COMMANDS
        and os.environ.get(AGENT_SWITCH, "").strip().lower() not in ("off", "0", "no", "false")
        and "--no-agent" not in argv
        and not (command == "info" and "--offline" in argv)
        # A key or passphrase stays in the user's own process (and a prompt needs its
        # terminal): encrypted stores and reads run in process (docs/encryption.md).
        and "--encrypt" not in argv
        and "--decrypt" not in argv
    )


def run_via_agent(argv: Sequence[str], genesis: str) -> int | None:
    """Have the agent of ``genesis``'s network run ``argv``; its exit code, or None when no
    agent answered for this code (then the caller runs the command itself)."""
    path = socket_path(genesis)
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(path))
        except OSError:
            return None
        sock.settimeout(None)
        request = {
            "argv": list(argv),
            "cwd": os.getcwd(),
            "env": {k: v for k, v in os.environ.items() if k.startswith("WALRUS_")},
            "fingerprint": code_fingerprint(),
        }
        answered = False
        try:
            send_frame(sock, b"r", json.dumps(request).encode())
            while True:
                kind, payload = read_frame(sock)
                if kind == b"o":
                    answered = True
                    sys.stdout.buffer.write(payload)
                    sys.stdout.buffer.flush()
                elif kind == b"e":
                    answered = True
                    sys.stderr.buffer.write(payload)
                    sys.stderr.buffer.flush()
                elif kind == b"x":
                    code: int = json.loads(payload)
                    return code
                else:
                    return None
        except (OSError, ValueError) as error:
            if not answered:
                return None  # the command did not start there: run it here
            print(f"error: the agent stopped while answering ({error})", file=sys.stderr)
            return 1
    finally:
        sock.close()
