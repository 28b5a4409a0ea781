"""The genesis: the file that fixes a network, and the network id that names it (docs/design.md §5).

Owner: parsing, validating and writing genesis TOML (the format is documented in
``bootstrap/README.md``), and the network id. The network id is a blake3 hash, domain separated,
of a canonical CBOR encoding of the *parsed* genesis, so comments, whitespace, key order, number
spelling and member order in the file do not change it, while any change to a value does. Its text
form ``<network>-<16 hex digits>`` goes into every protocol id and gossip topic, so peers of
two networks never mix.

The optional ``[economy]`` table (docs/economics.md, "Genesis") gives the initial balances
(``[[economy.allocation]]``) and the prices in force until the peers' votes set others. A genesis
without it has exactly the network id it had before the economy existed; with it, the table is
part of the hash.

Everything here is pure: :func:`parse_genesis` takes text (the caller reads the file and passes
its path as ``source`` for error messages). Every validation error is a ``ConfigError`` whose
message starts with the TOML field it is about, e.g. ``committee[2].weight: ...``.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import cbor2

from walrus_p2p.core import identity, toml_text
from walrus_p2p.core.committee import MAX_SHARDS, MIN_SHARDS, Committee, Member
from walrus_p2p.errors import ConfigError, WireError
from walrus_p2p.types import Epoch, PeerId

GENESIS_VERSION = 1
NETWORK_ID_DOMAIN = b"walrus-p2p/network-id/v1\x00"
NETWORK_ID_TEXT_HEX_DIGITS = 16

NETWORK_NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
MAX_EPOCH_DURATION_SECONDS = 366 * 24 * 3600
MAX_GENESIS_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_WEIGHT = 2**53
MAX_ADDRESSES_PER_MEMBER = 16
MAX_UINT63 = 2**63 - 1

DEFAULT_EPOCH_DURATION_SECONDS = 24 * 3600
DEFAULT_MAX_BLOB_SIZE = 2**30
DEFAULT_MAX_FRAME_SIZE = 2**24
DEFAULT_MAX_GOSSIP_MESSAGE_SIZE = 2**20
DEFAULT_MAX_EPOCHS_AHEAD = 53
DEFAULT_STORAGE_PRICE = 100_000
"""FROST per MiB of encoded size per epoch, until the votes set a price."""
DEFAULT_WRITE_PRICE = 20_000
"""FROST per MiB of encoded size, once per registration, until the votes set a price."""
DEFAULT_STAKE_PER_WEIGHT = 100 * 10**9
"""FROST of bootstrap stake per unit of a member's base weight (100 WAL): a member's weight on
a network with an economy is ``base · stake_per_weight + its active stake``
(``core.epochs.member_weight``; docs/economics.md, "Shards from stake")."""
MAX_STAKE_PER_WEIGHT = 10**15
"""An upper bound on its own; with the largest genesis weight, ``weight · stake_per_weight``
must stay below 2^63 so that adding any stake fits an unsigned 64-bit field."""
MAX_SUPPLY = 2**63 - 1
"""The total of the allocations: every amount and sum fits an unsigned 64-bit wire field."""
MAX_ALLOCATIONS = 100_000
MIN_FRAME_SIZE = 2**16
MIN_GOSSIP_MESSAGE_SIZE = 2**10


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and time limits every peer enforces (checked before allocating anything).

    ``max_sliver_size`` of ``None`` means "derived": the primary sliver size of a blob of
    ``max_blob_size`` bytes at this n (docs/design.md §3); :class:`Genesis` resolves it.
    """

    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    max_sliver_size: int | None = None
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_gossip_message_size: int = DEFAULT_MAX_GOSSIP_MESSAGE_SIZE
    max_epochs_ahead: int = DEFAULT_MAX_EPOCHS_AHEAD


LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))


def max_primary_sliver_size(n_shards: int, blob_size: int) -> int:
    """Bytes in a primary sliver (the larger kind) of a blob of ``blob_size`` bytes
    (docs/design.md §3)."""
    f = (n_shards - 1) // 3
    primary_symbols, secondary_symbols = n_shards - 2 * f, n_shards - f
    symbol_size = max(1, -(-blob_size // (primary_symbols * secondary_symbols)))
    symbol_size += symbol_size % 2
    return secondary_symbols * symbol_size


@dataclass(frozen=True, slots=True)
class Allocation:
    """An initial balance: ``amount`` FROST for the account with this Ed25519 public key."""

    account: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class EconomyGenesis:
    """The economy's start: initial balances (sorted by account) and the initial prices."""

    allocations: tuple[Allocation, ...] = ()
    storage_price: int = DEFAULT_STORAGE_PRICE
    write_price: int = DEFAULT_WRITE_PRICE
    stake_per_weight: int = DEFAULT_STAKE_PER_WEIGHT

    @property
    def total_supply(self) -> int:
        return sum(item.amount for item in self.allocations)


NO_ECONOMY = EconomyGenesis()
"""What a genesis without an ``[economy]`` table means: no balances, the default prices."""


@dataclass(frozen=True, slots=True)
class Genesis:
    """A parsed, validated genesis. Members are sorted by peer id; limits are resolved.

    ``network_id`` (32 bytes) and ``committee`` (epoch 0, its shard map by D'Hondt) are derived
    on construction. Constructing one validates it; errors name the TOML field.
    """

    network: str
    n_shards: int
    epoch_duration_seconds: int
    genesis_time: int
    members: tuple[Member, ...]
    limits: Limits = Limits()
    max_shards_per_peer: int | None = None
    bootstrap: tuple[str, ...] = ()
    version: int = GENESIS_VERSION
    economy: EconomyGenesis | None = None
    network_id: bytes = field(init=False, repr=False)
    committee: Committee = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate(self)
        members = tuple(sorted(self.members, key=lambda member: member.peer_id))
        limits = self.limits
        if limits.max_sliver_size is None:
            limits = dataclasses.replace(
                limits, max_sliver_size=max_primary_sliver_size(self.n_shards, limits.max_blob_size)
            )
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
        if self.economy is not None:
            allocations = tuple(sorted(self.economy.allocations, key=lambda item: item.account))
            economy = dataclasses.replace(self.economy, allocations=allocations)
            object.__setattr__(self, "economy", economy)
        try:
            committee = Committee.create(
                Epoch(0), members, self.n_shards, max_shards_per_peer=self.max_shards_per_peer
            )
        except ConfigError as error:
            raise ConfigError(f"committee: {error.message}") from error
        object.__setattr__(self, "committee", committee)
        object.__setattr__(self, "network_id", _network_id(self))

    @property
    def economy_or_default(self) -> EconomyGenesis:
        """The ``[economy]`` table, or :data:`NO_ECONOMY` when the file has none."""
        return NO_ECONOMY if self.economy is None else self.economy

    @property
    def total_supply(self) -> int:
        """The sum of the initial balances: every later state holds exactly this much."""
        return self.economy_or_default.total_supply

    @property
    def network_id_text(self) -> str:
        """``<network>-<first 16 hex digits of the network id>``: for protocol ids and topics."""
        return f"{self.network}-{self.network_id[: NETWORK_ID_TEXT_HEX_DIGITS // 2].hex()}"

    def epoch_start(self, epoch: int) -> int:
        """The scheduled start (unix seconds) of an epoch: genesis time + epoch x duration."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        return self.genesis_time + epoch * self.epoch_duration_seconds

    def scheduled_epoch(self, unix_seconds: int) -> Epoch:
        """The epoch the schedule places at a time (0 before genesis)."""
        if unix_seconds <= self.genesis_time:
            return Epoch(0)
        return Epoch((unix_seconds - self.genesis_time) // self.epoch_duration_seconds)


# --------------------------------------------------------------------------------------------
# Validation (one path: the constructor)


def _validate(genesis: Genesis) -> None:
    if genesis.version != GENESIS_VERSION:
        raise ConfigError(f"version: unsupported genesis version {genesis.version!r}")
    if not NETWORK_NAME_PATTERN.match(genesis.network):
        raise ConfigError(
            "network: must be 1..32 characters of a-z, 0-9 and '-', "
            f"not starting or ending with '-', got {genesis.network!r}"
        )
    _check_range("n_shards", genesis.n_shards, MIN_SHARDS, MAX_SHARDS)
    _check_range(
        "epoch_duration_seconds", genesis.epoch_duration_seconds, 1, MAX_EPOCH_DURATION_SECONDS
    )
    _check_range("genesis_time", genesis.genesis_time, 0, MAX_GENESIS_TIME)
    if genesis.max_shards_per_peer is not None:
        _check_range("max_shards_per_peer", genesis.max_shards_per_peer, 1, genesis.n_shards)
    _validate_limits(genesis.limits, genesis.n_shards)
    if not genesis.members:
        raise ConfigError("committee: must list at least one member")
    seen: set[PeerId] = set()
    for index, member in enumerate(genesis.members):
        where = f"committee[{index}]"
        if member.peer_id in seen:
            raise ConfigError(f"{where}.peer_id: {member.peer_id} is listed twice")
        seen.add(member.peer_id)
        _check_range(f"{where}.weight", member.weight, 1, MAX_WEIGHT)
        if not 1 <= len(member.addresses) <= MAX_ADDRESSES_PER_MEMBER:
            raise ConfigError(
                f"{where}.addresses: must list 1..{MAX_ADDRESSES_PER_MEMBER} multiaddrs"
            )
        for position, address in enumerate(member.addresses):
            peer_in_address = check_tcp_multiaddr(address, where=f"{where}.addresses[{position}]")
            if peer_in_address is not None and peer_in_address != member.peer_id:
                raise ConfigError(
                    f"{where}.addresses[{position}]: /p2p/ names another peer than {member.peer_id}"
                )
    for position, address in enumerate(genesis.bootstrap):
        if check_tcp_multiaddr(address, where=f"bootstrap[{position}]") is None:
            raise ConfigError(f"bootstrap[{position}]: must end with /p2p/<peer id>")
    if genesis.economy is not None:
        _validate_economy(genesis.economy)
        heaviest = max(member.weight for member in genesis.members)
        if heaviest * genesis.economy.stake_per_weight + MAX_SUPPLY > 2**64 - 1:
            raise ConfigError(
                "economy.stake_per_weight: times the largest weight it must stay below 2^63 "
                "(a member's weight is weight · stake_per_weight + stake, a 64-bit field)"
            )


def _validate_economy(economy: EconomyGenesis) -> None:
    _check_range("economy.storage_price", economy.storage_price, 0, MAX_UINT63)
    _check_range("economy.write_price", economy.write_price, 0, MAX_UINT63)
    _check_range("economy.stake_per_weight", economy.stake_per_weight, 1, MAX_STAKE_PER_WEIGHT)
    if len(economy.allocations) > MAX_ALLOCATIONS:
        raise ConfigError(f"economy.allocation: at most {MAX_ALLOCATIONS} entries")
    seen: set[bytes] = set()
    for index, item in enumerate(economy.allocations):
        where = f"economy.allocation[{index}]"
        if not isinstance(item.account, bytes) or len(item.account) != identity.PUBLIC_KEY_LENGTH:
            raise ConfigError(f"{where}.account: must be a 32-byte public key")
        if item.account in seen:
            raise ConfigError(f"{where}.account: {item.account.hex()} is listed twice")
        seen.add(item.account)
        _check_range(f"{where}.amount", item.amount, 1, MAX_SUPPLY)
    if economy.total_supply > MAX_SUPPLY:
        raise ConfigError(f"economy.allocation: the total exceeds {MAX_SUPPLY}")


def _validate_limits(limits: Limits, n_shards: int) -> None:
    _check_range("limits.max_blob_size", limits.max_blob_size, 1, MAX_UINT63)
    needed = max_primary_sliver_size(n_shards, limits.max_blob_size)
    if limits.max_sliver_size is not None:
        _check_range("limits.max_sliver_size", limits.max_sliver_size, 1, MAX_UINT63)
        if limits.max_sliver_size < needed:
            raise ConfigError(
                f"limits.max_sliver_size: {limits.max_sliver_size} is below {needed}, the primary "
                f"sliver size of a blob of max_blob_size bytes at n_shards = {n_shards}"
            )
    _check_range("limits.max_frame_size", limits.max_frame_size, MIN_FRAME_SIZE, MAX_UINT63)
    _check_range(
        "limits.max_gossip_message_size",
        limits.max_gossip_message_size,
        MIN_GOSSIP_MESSAGE_SIZE,
        MAX_UINT63,
    )
    _check_range("limits.max_epochs_ahead", limits.max_epochs_ahead, 1, 1_000_000)


def _check_range(where: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where}: must be in {low}..{high}, got {value}")


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def check_tcp_multiaddr(
    address: str, *, where: str = "address", listen: bool = False
) -> PeerId | None:
    """Check a TCP multiaddr as this network uses them; return the peer id of a ``/p2p/`` suffix.

    Accepted: ``/ip4/<a>/tcp/<port>``, ``/ip6/<a>/tcp/<port>``,
    ``/dns|dns4|dns6/<name>/tcp/<port>``, each optionally followed by ``/p2p/<Ed25519 peer id>``
    (the only transport and key type the network runs, docs/design.md §7). An address others dial
    (``listen`` false) must not be unspecified (0.0.0.0, ::) nor have port 0; a listen address
    may. ``ConfigError`` naming ``where`` otherwise.
    """
    if not isinstance(address, str):
        raise ConfigError(f"{where}: must be a string, got {address!r}")
    parts = address.split("/")
    if len(parts) not in (5, 7) or parts[0] != "":
        raise ConfigError(f"{where}: not a /<ip4|ip6|dns>/<host>/tcp/<port>[/p2p/<id>] multiaddr")
    _, protocol, host, transport, port_text, *rest = parts
    try:
        if protocol in ("ip4", "ip6"):
            ip = ipaddress.IPv4Address(host) if protocol == "ip4" else ipaddress.IPv6Address(host)
            if ip.is_unspecified and not listen:
                raise ConfigError(f"{where}: {host} is not an address others can dial")
        elif protocol in ("dns", "dns4", "dns6"):
            if not _HOSTNAME.match(host):
                raise ValueError(host)
        else:
            raise ConfigError(f"{where}: unsupported protocol /{protocol} in {address!r}")
    except ValueError:
        raise ConfigError(f"{where}: bad /{protocol} host {host!r}") from None
    if transport != "tcp":
        raise ConfigError(f"{where}: transport must be /tcp, got /{transport}")
    if not port_text.isdigit() or port_text != str(int(port_text)):
        raise ConfigError(f"{where}: bad tcp port {port_text!r}")
    if not (0 if listen else 1) <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: tcp port {port_text} out of range")
    if not rest:
        return None
    if rest[0] != "p2p":
        raise ConfigError(f"{where}: expected /p2p/<peer id> after the port, got /{rest[0]}")
    try:
        identity.public_key_from_peer_id(rest[1])
    except WireError:
        raise ConfigError(f"{where}: /p2p/ is not an Ed25519 peer id: {rest[1]!r}") from None
    return PeerId(rest[1])


# --------------------------------------------------------------------------------------------
# Network id


def canonical_encoding(genesis: Genesis) -> bytes:
    """Canonical CBOR of every field of the genesis (members sorted; limits resolved)."""
    limits = genesis.limits
    document = [
        "walrus-p2p-genesis",
        genesis.version,
        genesis.network,
        genesis.n_shards,
        genesis.epoch_duration_seconds,
        genesis.genesis_time,
        genesis.max_shards_per_peer,
        [getattr(limits, name) for name in LIMIT_FIELDS],
        [
            [member.peer_id, member.public_key, member.weight, list(member.addresses)]
            for member in genesis.members
        ],
        list(genesis.bootstrap),
    ]
    if genesis.economy is not None:  # absent: the encoding (and network id) of before
        economy = genesis.economy
        table: list[object] = [
            "economy",
            economy.storage_price,
            economy.write_price,
            [[item.account, item.amount] for item in economy.allocations],
        ]
        if economy.stake_per_weight != DEFAULT_STAKE_PER_WEIGHT:
            # Only when set: a genesis of before keeps its network id.
            table.append(["stake_per_weight", economy.stake_per_weight])
        document.append(table)
    encoded: bytes = cbor2.dumps(document, canonical=True)
    return encoded


def _network_id(genesis: Genesis) -> bytes:
    return blake3.blake3(NETWORK_ID_DOMAIN + canonical_encoding(genesis)).digest()


# --------------------------------------------------------------------------------------------
# TOML in


_TOP_LEVEL_KEYS = frozenset(
    {
        "version",
        "network",
        "n_shards",
        "epoch_duration_seconds",
        "genesis_time",
        "max_shards_per_peer",
        "limits",
        "committee",
        "bootstrap",
        "economy",
    }
)
_ECONOMY_KEYS = frozenset({"storage_price", "write_price", "stake_per_weight", "allocation"})
_ALLOCATION_KEYS = frozenset({"account", "amount"})
_MEMBER_KEYS = frozenset({"peer_id", "public_key", "weight", "addresses"})


def parse_genesis(text: str, *, source: str | None = None) -> Genesis:
    """Parse and validate genesis TOML; ``source`` (the file's path) prefixes error messages."""
    try:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"not valid TOML: {error}") from error
        return _genesis_from_document(document)
    except ConfigError as error:
        if source is None or error.path is not None:
            raise
        raise ConfigError(error.message, path=source) from error


def _genesis_from_document(document: Mapping[str, Any]) -> Genesis:
    _reject_unknown(document, _TOP_LEVEL_KEYS, "")
    for key in ("version", "network", "n_shards", "epoch_duration_seconds", "genesis_time"):
        if key not in document:
            raise ConfigError(f"{key}: missing")
    limits_table = document.get("limits", {})
    if not isinstance(limits_table, dict):
        raise ConfigError("limits: must be a table")
    _reject_unknown(limits_table, frozenset(LIMIT_FIELDS), "limits.")
    for key, value in limits_table.items():
        _require_int(f"limits.{key}", value)
    committee = document.get("committee")
    if not isinstance(committee, list) or not committee:
        raise ConfigError("committee: must be a non-empty array of tables ([[committee]])")
    members = tuple(_member_from_table(index, table) for index, table in enumerate(committee))
    max_shards_per_peer = document.get("max_shards_per_peer")
    if max_shards_per_peer is not None:
        _require_int("max_shards_per_peer", max_shards_per_peer)
    return Genesis(
        version=_require_int("version", document["version"]),
        network=_require_str("network", document["network"]),
        n_shards=_require_int("n_shards", document["n_shards"]),
        epoch_duration_seconds=_require_int(
            "epoch_duration_seconds", document["epoch_duration_seconds"]
        ),
        genesis_time=_unix_seconds("genesis_time", document["genesis_time"]),
        members=members,
        limits=Limits(**limits_table),
        max_shards_per_peer=max_shards_per_peer,
        bootstrap=_require_str_list("bootstrap", document.get("bootstrap", [])),
        economy=_economy_from_table(document["economy"]) if "economy" in document else None,
    )


def _economy_from_table(table: object) -> EconomyGenesis:
    if not isinstance(table, dict):
        raise ConfigError("economy: must be a table")
    _reject_unknown(table, _ECONOMY_KEYS, "economy.")
    entries = table.get("allocation", [])
    if not isinstance(entries, list):
        raise ConfigError("economy.allocation: must be an array of tables ([[economy.allocation]])")
    allocations = []
    for index, entry in enumerate(entries):
        where = f"economy.allocation[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        _reject_unknown(entry, _ALLOCATION_KEYS, f"{where}.")
        for key in sorted(_ALLOCATION_KEYS):
            if key not in entry:
                raise ConfigError(f"{where}.{key}: missing")
        account = parse_public_key(
            _require_str(f"{where}.account", entry["account"]), where=f"{where}.account"
        )
        allocations.append(Allocation(account, _require_int(f"{where}.amount", entry["amount"])))
    return EconomyGenesis(
        allocations=tuple(allocations),
        storage_price=_require_int(
            "economy.storage_price", table.get("storage_price", DEFAULT_STORAGE_PRICE)
        ),
        write_price=_require_int(
            "economy.write_price", table.get("write_price", DEFAULT_WRITE_PRICE)
        ),
        stake_per_weight=_require_int(
            "economy.stake_per_weight", table.get("stake_per_weight", DEFAULT_STAKE_PER_WEIGHT)
        ),
    )


def _member_from_table(index: int, table: object) -> Member:
    where = f"committee[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    _reject_unknown(table, _MEMBER_KEYS, f"{where}.")
    for key in sorted(_MEMBER_KEYS):
        if key not in table:
            raise ConfigError(f"{where}.{key}: missing")
    peer_id = _require_str(f"{where}.peer_id", table["peer_id"])
    public_key = parse_public_key(
        _require_str(f"{where}.public_key", table["public_key"]), where=f"{where}.public_key"
    )
    if identity.peer_id_from_public_key(public_key) != peer_id:
        raise ConfigError(
            f"{where}.peer_id: {peer_id} is not the peer id of its public key "
            f"({identity.peer_id_from_public_key(public_key)})"
        )
    weight = _require_int(f"{where}.weight", table["weight"])
    _check_range(f"{where}.weight", weight, 1, MAX_WEIGHT)
    return Member(
        peer_id=PeerId(peer_id),
        public_key=public_key,
        weight=weight,
        addresses=_require_str_list(f"{where}.addresses", table["addresses"]),
    )


def parse_public_key(text: str, *, where: str = "public_key") -> bytes:
    """A 32-byte Ed25519 public key from 64 hex digits."""
    if len(text) != 2 * identity.PUBLIC_KEY_LENGTH:
        raise ConfigError(f"{where}: must be {2 * identity.PUBLIC_KEY_LENGTH} hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{where}: not hexadecimal") from None


def _reject_unknown(table: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    # Unknown keys are errors: they would be ignored yet not hashed into the network id.
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown field")


def _require_int(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer, got {type(value).__name__}")
    return value


def _require_str(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string, got {type(value).__name__}")
    return value


def _require_str_list(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be an array of strings")
    return tuple(_require_str(f"{where}[{index}]", item) for index, item in enumerate(value))


def _unix_seconds(where: str, value: object) -> int:
    if not isinstance(value, datetime.datetime) or value.tzinfo is None:
        raise ConfigError(f"{where}: must be a TOML offset datetime, e.g. 2026-01-01T00:00:00Z")
    if value.microsecond:
        raise ConfigError(f"{where}: must be whole seconds")
    return int(value.timestamp())


# --------------------------------------------------------------------------------------------
# TOML out


def genesis_to_toml(genesis: Genesis) -> str:
    """The genesis as TOML text; :func:`parse_genesis` of it gives an equal genesis."""
    lines = [
        "# walrus-p2p genesis: fixes the network. Its canonical hash is the network id:\n",
        f"# {genesis.network_id_text} ({genesis.network_id.hex()})\n",
        "# Any change to a value makes a different network. Format: bootstrap/README.md\n",
        toml_text.assignment("version", toml_text.integer(genesis.version)),
        toml_text.assignment("network", toml_text.string(genesis.network)),
        toml_text.assignment("n_shards", toml_text.integer(genesis.n_shards)),
        toml_text.assignment(
            "epoch_duration_seconds", toml_text.integer(genesis.epoch_duration_seconds)
        ),
        toml_text.assignment("genesis_time", toml_text.utc_datetime(genesis.genesis_time)),
    ]
    if genesis.max_shards_per_peer is not None:
        lines.append(
            toml_text.assignment(
                "max_shards_per_peer", toml_text.integer(genesis.max_shards_per_peer)
            )
        )
    if genesis.bootstrap:
        lines.append(toml_text.assignment("bootstrap", toml_text.string_array(genesis.bootstrap)))
    lines.append("\n[limits]\n")
    for name in LIMIT_FIELDS:
        value = getattr(genesis.limits, name)
        lines.append(toml_text.assignment(name, toml_text.integer(value)))
    for member in genesis.members:
        shards = genesis.committee.shards_of(member.peer_id)
        lines += [
            f"\n[[committee]]  # {len(shards)} shards\n",
            toml_text.assignment("peer_id", toml_text.string(member.peer_id)),
            toml_text.assignment("public_key", toml_text.string(member.public_key.hex())),
            toml_text.assignment("weight", toml_text.integer(member.weight)),
            toml_text.assignment("addresses", toml_text.string_array(member.addresses)),
        ]
    if genesis.economy is not None:
        economy = genesis.economy
        lines += [
            f"\n[economy]  # total supply {economy.total_supply} FROST\n",
            toml_text.assignment("storage_price", toml_text.integer(economy.storage_price)),
            toml_text.assignment("write_price", toml_text.integer(economy.write_price)),
        ]
        if economy.stake_per_weight != DEFAULT_STAKE_PER_WEIGHT:
            lines.append(
                toml_text.assignment(
                    "stake_per_weight", toml_text.integer(economy.stake_per_weight)
                )
            )
        for item in economy.allocations:
            lines += [
                "\n[[economy.allocation]]\n",
                toml_text.assignment("account", toml_text.string(item.account.hex())),
                toml_text.assignment("amount", toml_text.integer(item.amount)),
            ]
    return "".join(lines)


def create_genesis_toml(
    *,
    network: str,
    n_shards: int,
    members: Sequence[Member],
    genesis_time: int,
    epoch_duration_seconds: int = DEFAULT_EPOCH_DURATION_SECONDS,
    limits: Limits | None = None,
    max_shards_per_peer: int | None = None,
    bootstrap: Iterable[str] = (),
    economy: EconomyGenesis | None = None,
) -> str:
    """Validated genesis TOML for these members (``genesis create``, the devnet).

    Build members with ``Member.from_public_key(public_key, weight, addresses)``. The current time
    is the caller's to pass (core has no clock).
    """
    genesis = Genesis(
        network=network,
        n_shards=n_shards,
        epoch_duration_seconds=epoch_duration_seconds,
        genesis_time=genesis_time,
        members=tuple(members),
        limits=Limits() if limits is None else limits,
        max_shards_per_peer=max_shards_per_peer,
        bootstrap=tuple(bootstrap),
        economy=economy,
    )
    return genesis_to_toml(genesis)
