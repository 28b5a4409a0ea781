"""A storage peer's data directory: its identity key, its config, and the genesis it points to.

Owner: the files behind ``walrus-peer init`` and the first thing ``walrus-peer run`` reads::

    <data_dir>/            created with mode 0700
      identity.key         the Ed25519 seed (TOML), mode 0600, created atomically, never replaced
      peer.toml            genesis path, listen addresses, capacity, metrics address

The key file is written to a temporary file opened with mode 0600 (``O_EXCL``), fsynced, and then
hard-linked into place, so it is never visible with other permissions, never half-written, and an
existing key is never overwritten: ``force`` rewrites the config but keeps the key. To give a peer
a new identity, delete ``identity.key`` by hand. A key file readable by group or others is refused
when loading (as ssh does).

Every problem with these files is a ``ConfigError`` carrying the path and a one-line message.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from walrus_p2p.core import toml_text
from walrus_p2p.core.committee import Member
from walrus_p2p.core.economy import VoteSettings
from walrus_p2p.core.genesis import Genesis, check_tcp_multiaddr, parse_genesis
from walrus_p2p.core.identity import SEED_LENGTH, Identity
from walrus_p2p.errors import ConfigError
from walrus_p2p.net.inbound import InboundLimits

KEY_FILE_NAME = "identity.key"
CONFIG_FILE_NAME = "peer.toml"
KEY_FILE_VERSION = 1
CONFIG_VERSION = 1
KEY_TYPE = "ed25519"
DEFAULT_CAPACITY_BYTES = 100 * 2**30
DEFAULT_WEIGHT = 1
MAX_WEIGHT = 1 << 32
MAX_KEY_FILE_SIZE = 4096
MAX_CONFIG_FILE_SIZE = 1 << 20
MAX_GENESIS_FILE_SIZE = 16 << 20


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """The contents of ``peer.toml``; ``genesis_path`` is absolute once loaded."""

    genesis_path: Path
    listen_addresses: tuple[str, ...]
    capacity_bytes: int = DEFAULT_CAPACITY_BYTES
    metrics_address: str | None = None
    weight: int = DEFAULT_WEIGHT
    """The weight this peer declares in its candidacy (genesis members keep their genesis
    weight; others are capped, see ``core.epochs.member_weight``; on a network with an economy
    stake decides instead, and the declaration does not count)."""
    candidate: bool = True
    """Announce a candidacy each epoch (a genesis member that stops announcing is dropped)."""
    inbound: InboundLimits = field(default_factory=InboundLimits)
    """The optional ``[inbound]`` table: limits on request streams and bytes from other peers
    (``walrus_p2p.net.inbound``, docs/network.md "Inbound limits")."""
    challenges_enabled: bool = True
    challenge_window_seconds: float | None = None
    """The optional ``[challenges]`` table (docs/challenges.md, "Timing"): ``enabled`` and
    ``window_seconds`` (an explicit window runs rounds whatever the epoch length)."""
    vote: VoteSettings | None = None
    """The optional ``[vote]`` table (docs/economics.md, "Votes"): what this peer votes each
    epoch on a network with an economy; None: it does not vote."""


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init_peer`` did: the identity (new, or the kept one) and the config it wrote."""

    data_dir: Path
    identity: Identity
    config: PeerConfig
    created_identity: bool


@dataclass(frozen=True, slots=True)
class LoadedPeer:
    """Everything ``walrus-peer run`` needs from disk, checked."""

    data_dir: Path
    identity: Identity
    config: PeerConfig
    genesis: Genesis


def key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEY_FILE_NAME


def config_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / CONFIG_FILE_NAME


# --------------------------------------------------------------------------------------------
# init


def init_peer(
    data_dir: str | os.PathLike[str],
    genesis_path: str | os.PathLike[str],
    listen_addrs: Iterable[str],
    *,
    capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
    metrics_address: str | None = None,
    weight: int = DEFAULT_WEIGHT,
    force: bool = False,
    seed: bytes | None = None,
    check_genesis: bool = True,
) -> InitResult:
    """Create a peer's identity and config in ``data_dir``.

    Refuses (``ConfigError``) if the directory already holds a key or a config, unless ``force``:
    then the config is rewritten and the existing key is kept (it must load, and must match
    ``seed`` if one is given). ``seed`` makes the identity deterministic (devnets, tests); by
    default 32 bytes come from ``secrets``. With ``check_genesis`` the genesis file must exist and
    be valid; the devnet passes False to write the genesis after every peer has a key.
    """
    directory = Path(data_dir)
    config = PeerConfig(
        genesis_path=Path(os.path.abspath(genesis_path)),
        listen_addresses=tuple(listen_addrs),
        capacity_bytes=capacity_bytes,
        metrics_address=metrics_address,
        weight=weight,
    )
    _validate_config(config, where=str(config_path(directory)))
    if check_genesis:
        load_genesis(config.genesis_path)
    if seed is not None and len(seed) != SEED_LENGTH:
        raise ConfigError(f"seed must be {SEED_LENGTH} bytes, got {len(seed)}")

    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(_os_message(error), path=str(directory)) from error
    if not directory.is_dir():
        raise ConfigError("not a directory", path=str(directory))
    existing = [path for path in (key_path(directory), config_path(directory)) if _exists(path)]
    if existing and not force:
        raise ConfigError(
            f"already initialised ({existing[0].name} exists); force rewrites the config "
            "and keeps the key",
            path=str(directory),
        )

    if _exists(key_path(directory)):
        identity = load_identity(directory)
        if seed is not None and identity.seed != seed:
            raise ConfigError(
                "holds a different identity than the seed given; delete it by hand to replace it",
                path=str(key_path(directory)),
            )
        created = False
    else:
        identity = Identity.from_seed(secrets.token_bytes(SEED_LENGTH) if seed is None else seed)
        _write_file(key_path(directory), _key_text(identity), mode=0o600, replace=False)
        created = True
    _write_file(config_path(directory), _config_text(config), mode=0o644, replace=True)
    return InitResult(
        data_dir=directory, identity=identity, config=config, created_identity=created
    )


def ensure_identity(directory: str | os.PathLike[str]) -> tuple[Identity, bool]:
    """Load the identity in ``directory``, creating it (mode 0600, atomically) if absent.

    For light peers (the client's owner key) that have no peer config. Returns (identity,
    created).
    """
    path = Path(directory)
    if _exists(key_path(path)):
        return load_identity(path), False
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(_os_message(error), path=str(path)) from error
    identity = Identity.from_seed(secrets.token_bytes(SEED_LENGTH))
    try:
        _write_file(key_path(path), _key_text(identity), mode=0o600, replace=False)
    except ConfigError:
        # Two processes started at once on a new key directory (a gateway and a CLI command,
        # say): the other one linked its key first. The link is atomic, so that file is whole;
        # both must use the same key, so take it.
        if _exists(key_path(path)):
            return load_identity(path), False
        raise
    return identity, True


def _key_text(identity: Identity) -> bytes:
    text = (
        "# walrus-p2p peer identity: the secret key of this peer. Keep it private, back it up.\n"
        + toml_text.assignment("version", toml_text.integer(KEY_FILE_VERSION))
        + toml_text.assignment("type", toml_text.string(KEY_TYPE))
        + toml_text.assignment("seed", toml_text.string(identity.seed.hex()))
        + toml_text.assignment("peer_id", toml_text.string(identity.peer_id))
        + toml_text.assignment("public_key", toml_text.string(identity.public_key.hex()))
    )
    return text.encode("utf-8")


def _config_text(config: PeerConfig) -> bytes:
    text = (
        "# walrus-p2p storage peer configuration (walrus-peer init wrote it; edit freely)\n"
        + toml_text.assignment("version", toml_text.integer(CONFIG_VERSION))
        + "# a relative path is taken relative to this directory\n"
        + toml_text.assignment("genesis", toml_text.string(str(config.genesis_path)))
        + toml_text.assignment("listen_addresses", toml_text.string_array(config.listen_addresses))
        + toml_text.assignment("capacity_bytes", toml_text.integer(config.capacity_bytes))
        + "# declared in the candidacy; genesis members keep their genesis weight, newcomers are\n"
        + "# capped at the smallest genesis weight (with an economy, stake decides instead)\n"
        + toml_text.assignment("weight", toml_text.integer(config.weight))
        + "# false: do not ask for shards (a genesis member that stops announcing is dropped)\n"
        + toml_text.assignment("candidate", "true" if config.candidate else "false")
    )
    if config.metrics_address is None:
        text += '# metrics_address = "127.0.0.1:9184"\n'
    else:
        text += toml_text.assignment("metrics_address", toml_text.string(config.metrics_address))
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------
# load


def load_peer(data_dir: str | os.PathLike[str]) -> LoadedPeer:
    """The identity, config and genesis of an initialised data directory, all checked."""
    directory = Path(data_dir)
    if not directory.is_dir():
        raise ConfigError("not a peer data directory (run walrus-peer init)", path=str(directory))
    identity = load_identity(directory)
    config = load_config(directory)
    genesis = load_genesis(config.genesis_path)
    return LoadedPeer(data_dir=directory, identity=identity, config=config, genesis=genesis)


def load_identity(data_dir: str | os.PathLike[str]) -> Identity:
    path = key_path(data_dir)
    where = str(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise ConfigError(_os_message(error), path=where) from error
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError("not a regular file", path=where)
    if info.st_mode & 0o077:
        raise ConfigError(
            f"key file is accessible by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run: chmod 600 {path}",
            path=where,
        )
    document = _read_toml(path, MAX_KEY_FILE_SIZE)
    _reject_unknown(document, {"version", "type", "seed", "peer_id", "public_key"}, where)
    if document.get("version") != KEY_FILE_VERSION:
        version = document.get("version")
        raise ConfigError(f"version: unsupported key file version {version!r}", path=where)
    if document.get("type") != KEY_TYPE:
        raise ConfigError(f"type: must be {KEY_TYPE!r}", path=where)
    seed_text = document.get("seed")
    if not isinstance(seed_text, str) or len(seed_text) != 2 * SEED_LENGTH:
        raise ConfigError(f"seed: must be {2 * SEED_LENGTH} hex digits", path=where)
    try:
        seed = bytes.fromhex(seed_text)
    except ValueError:
        raise ConfigError("seed: not hexadecimal", path=where) from None
    identity = Identity.from_seed(seed)
    if document.get("peer_id") != identity.peer_id:
        raise ConfigError("peer_id: does not match the seed (corrupt key file)", path=where)
    if document.get("public_key") != identity.public_key.hex():
        raise ConfigError("public_key: does not match the seed (corrupt key file)", path=where)
    return identity


def load_config(data_dir: str | os.PathLike[str]) -> PeerConfig:
    path = config_path(data_dir)
    where = str(path)
    document = _read_toml(path, MAX_CONFIG_FILE_SIZE)
    allowed = {
        "version",
        "genesis",
        "listen_addresses",
        "capacity_bytes",
        "metrics_address",
        "weight",
        "candidate",
        "inbound",
        "challenges",
        "vote",
    }
    _reject_unknown(document, allowed, where)
    if document.get("version") != CONFIG_VERSION:
        version = document.get("version")
        raise ConfigError(f"version: unsupported config version {version!r}", path=where)
    genesis = document.get("genesis")
    if not isinstance(genesis, str) or not genesis:
        raise ConfigError("genesis: must be the path of the genesis file", path=where)
    listen = document.get("listen_addresses")
    if not isinstance(listen, list) or not all(isinstance(item, str) for item in listen):
        raise ConfigError("listen_addresses: must be an array of multiaddr strings", path=where)
    capacity = document.get("capacity_bytes", DEFAULT_CAPACITY_BYTES)
    metrics = document.get("metrics_address")
    if metrics is not None and not isinstance(metrics, str):
        raise ConfigError("metrics_address: must be a string like 127.0.0.1:9184", path=where)
    candidate = document.get("candidate", True)
    if not isinstance(candidate, bool):
        raise ConfigError("candidate: must be true or false", path=where)
    config = PeerConfig(
        genesis_path=Path(os.path.abspath(Path(data_dir) / genesis)),
        listen_addresses=tuple(listen),
        capacity_bytes=capacity,
        metrics_address=metrics,
        weight=document.get("weight", DEFAULT_WEIGHT),
        candidate=candidate,
        inbound=_inbound_limits(document.get("inbound", {}), where),
        **_challenge_settings(document.get("challenges", {}), where),
        vote=_vote_settings(document.get("vote"), capacity, where),
    )
    _validate_config(config, where=where)
    return config


def load_genesis(path: str | os.PathLike[str]) -> Genesis:
    """Read and validate a genesis file; errors name the file and the field."""
    raw = _read_bytes(Path(path), MAX_GENESIS_FILE_SIZE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path=str(path)) from None
    return parse_genesis(text, source=str(path))


def write_genesis(path: str | os.PathLike[str], text: str, *, force: bool = False) -> Genesis:
    """Validate genesis text, write it atomically (mode 0644); refuse to replace unless forced."""
    genesis = parse_genesis(text, source=str(path))
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(_os_message(error), path=str(target.parent)) from error
    _write_file(target, text.encode("utf-8"), mode=0o644, replace=force)
    return genesis


def genesis_member(data_dir: str | os.PathLike[str], weight: int) -> Member:
    """The committee entry of an initialised peer: its key and its listen addresses.

    For ``genesis create`` and the devnet; the addresses must be dialable (no 0.0.0.0, no port 0),
    which genesis validation checks.
    """
    identity = load_identity(data_dir)
    config = load_config(data_dir)
    return Member.from_public_key(identity.public_key.raw, weight, config.listen_addresses)


# --------------------------------------------------------------------------------------------
# helpers


def _validate_config(config: PeerConfig, *, where: str) -> None:
    if not config.listen_addresses:
        raise ConfigError("listen_addresses: must list at least one multiaddr", path=where)
    try:
        for index, address in enumerate(config.listen_addresses):
            check_tcp_multiaddr(address, where=f"listen_addresses[{index}]", listen=True)
    except ConfigError as error:
        raise ConfigError(error.message, path=where) from error
    capacity = config.capacity_bytes
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ConfigError("capacity_bytes: must be a non-negative integer", path=where)
    weight = config.weight
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise ConfigError(f"weight: must be an integer from 1 to {MAX_WEIGHT}", path=where)
    if config.metrics_address is not None:
        _check_metrics_address(config.metrics_address, where)


def _check_metrics_address(address: str, where: str) -> None:
    host, separator, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    problem = not separator or not port.isdigit() or not 1 <= int(port) <= 65535
    if not problem and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            problem = True
    if problem:
        raise ConfigError(
            f"metrics_address: must be host:port with an IP address or localhost, got {address!r}",
            path=where,
        )


def _inbound_limits(table: object, where: str) -> InboundLimits:
    """The ``[inbound]`` table: any of InboundLimits' fields, each a positive integer."""
    if not isinstance(table, dict):
        raise ConfigError("inbound: must be a table like [inbound] max_streams = 512", path=where)
    names = {item.name for item in fields(InboundLimits)}
    for key in table:
        if key not in names:
            raise ConfigError(f"inbound.{key}: unknown field", path=where)
    try:
        return InboundLimits(**table)
    except ConfigError as error:
        raise ConfigError(f"inbound: {error}", path=where) from error


def _challenge_settings(table: object, where: str) -> dict[str, Any]:
    """The ``[challenges]`` table: ``enabled`` (true/false), ``window_seconds`` (> 0)."""
    if not isinstance(table, dict):
        raise ConfigError(
            "challenges: must be a table like [challenges] enabled = true", path=where
        )
    for key in table:
        if key not in ("enabled", "window_seconds"):
            raise ConfigError(f"challenges.{key}: unknown field", path=where)
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("challenges.enabled: must be true or false", path=where)
    window = table.get("window_seconds")
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window <= 3600
    ):
        raise ConfigError(
            "challenges.window_seconds: must be a number of seconds in (0, 3600]", path=where
        )
    return {
        "challenges_enabled": enabled,
        "challenge_window_seconds": None if window is None else float(window),
    }


VOTE_KEYS = ("storage_price", "write_price", "capacity", "commission_bps")


def _vote_settings(table: object, capacity: object, where: str) -> VoteSettings | None:
    """The ``[vote]`` table: ``storage_price`` and ``write_price`` (required), ``capacity``
    (default: ``capacity_bytes``), ``commission_bps`` (default 0)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("vote: must be a table like [vote] storage_price = 100000", path=where)
    for key in table:
        if key not in VOTE_KEYS:
            raise ConfigError(f"vote.{key}: unknown field", path=where)
    for key in ("storage_price", "write_price"):
        if key not in table:
            raise ConfigError(f"vote.{key}: missing", path=where)
    try:
        return VoteSettings(
            storage_price=table["storage_price"],
            write_price=table["write_price"],
            capacity=table.get("capacity", capacity),
            commission_bps=table.get("commission_bps", 0),
        )
    except ValueError as error:
        raise ConfigError(f"vote: {error}", path=where) from error


def vote_table_text(vote: VoteSettings) -> str:
    """The ``[vote]`` table as ``walrus-peer vote`` writes it into ``peer.toml``."""
    return (
        '\n[vote]  # this peer\'s votes (docs/economics.md, "Votes"): from the next epoch on\n'
        + toml_text.assignment("storage_price", toml_text.integer(vote.storage_price))
        + toml_text.assignment("write_price", toml_text.integer(vote.write_price))
        + toml_text.assignment("capacity", toml_text.integer(vote.capacity))
        + toml_text.assignment("commission_bps", toml_text.integer(vote.commission_bps))
    )


def write_vote(data_dir: str | os.PathLike[str], vote: VoteSettings) -> Path:
    """Replace the ``[vote]`` table of the peer's ``peer.toml`` (the rest stays as written),
    checking that the result loads before it replaces the file. A running peer reads it again
    at each epoch change."""
    path = config_path(data_dir)
    text = _read_bytes(path, MAX_CONFIG_FILE_SIZE).decode("utf-8")
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        header = line.strip()
        if header.startswith("["):
            inside = header.split("]", 1)[0].strip("[ ") == "vote"
        if not inside:
            kept.append(line)
    updated = "".join(kept).rstrip("\n") + "\n" + vote_table_text(vote)
    try:
        document = tomllib.loads(updated)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"cannot update the vote: {error}", path=str(path)) from error
    if _vote_settings(document.get("vote"), vote.capacity, str(path)) != vote:
        raise ConfigError("the [vote] table did not come out as written", path=str(path))
    _write_file(path, updated.encode("utf-8"), mode=0o644, replace=True)
    return path


def load_vote(data_dir: str | os.PathLike[str]) -> VoteSettings | None:
    """The ``[vote]`` table of the peer's ``peer.toml`` as it is now."""
    return load_config(data_dir).vote


def _reject_unknown(document: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in document:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown field", path=where)


def _read_bytes(path: Path, max_size: int) -> bytes:
    try:
        with open(path, "rb") as file:
            raw = file.read(max_size + 1)
    except OSError as error:
        raise ConfigError(_os_message(error), path=str(path)) from error
    if len(raw) > max_size:
        raise ConfigError(f"larger than {max_size} bytes", path=str(path))
    return raw


def _read_toml(path: Path, max_size: int) -> dict[str, Any]:
    raw = _read_bytes(path, max_size)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path=str(path)) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}", path=str(path)) from None


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _os_message(error: OSError) -> str:
    return error.strerror or str(error)


def _write_file(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` from the first byte on.

    A temporary file in the same directory is created with ``O_EXCL`` and ``mode`` (then fchmod,
    so the umask cannot loosen or tighten it), written, fsynced, and moved into place: with
    ``os.replace`` when replacing, else with ``os.link``, which fails if the target exists (no
    check-then-write race). The directory is fsynced afterwards.
    """
    directory = path.parent
    temporary = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(temporary, flags, mode)
    except OSError as error:
        raise ConfigError(_os_message(error), path=str(temporary)) from error
    try:
        try:
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if replace:
            os.replace(temporary, path)
        else:
            _link_no_replace(temporary, path)
        _fsync_directory(directory)
    except FileExistsError:
        raise ConfigError("already exists; refusing to overwrite it", path=str(path)) from None
    except OSError as error:
        raise ConfigError(_os_message(error), path=str(path)) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _link_no_replace(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A file system without hard links: check, then rename (a small race, still never
        # a partly written or loosely permitted file).
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from error
        os.rename(source, target)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
